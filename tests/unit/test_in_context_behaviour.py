"""The model really learns in context: on the toy task only the support says which ellipse to segment.

Each toy image holds a bright and a dark ellipse. A model that ignored its support could at best
segment one fixed class (Dice ~0.5 on average over the two classes); here a tiny model trained for
a few hundred episodes must segment *whichever* class the support shows, on unseen images.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from iris_engine.config import ModelConfig, TrainConfig
from iris_engine.data.toy import TOY_CLASSES, ToyEpisodes, toy_image
from iris_engine.memory_bank import MemoryBank
from iris_engine.strategies import memory_retrieval, one_shot

TINY = ModelConfig(
    encoder_channels=(8, 16, 32), image_size=32, decoder_channels=8, num_heads=2,
    task_encoder_layers=1, decoder_layers=1,
)
NUM_IMAGES = 20


def dice(prediction: torch.Tensor, target: torch.Tensor) -> float:
    prediction, target = prediction.bool(), target.bool()
    total = prediction.sum() + target.sum()
    return 1.0 if total == 0 else float(2 * (prediction & target).sum() / total)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from iris_engine.training.trainer import Trainer

    torch.set_num_threads(1)
    config = TrainConfig(
        iterations=300, batch_size=8, lr=3e-3, warmup_iterations=20, checkpoint_every=10_000, log_every=50,
        num_threads=1, seed=0, model=TINY,
    )
    trainer = Trainer(config, ToyEpisodes(size=32, seed=0), tmp_path_factory.mktemp("toy"), show_progress=False)
    trainer.fit()
    return trainer.model.eval(), trainer.memory_bank


@pytest.fixture(scope="module")
def test_set():
    rng = np.random.default_rng(2024)  # images never seen in training
    pairs = [toy_image(32, rng) for _ in range(NUM_IMAGES)]
    images = torch.from_numpy(np.stack([p[0][None] for p in pairs]))  # (20, 1, 32, 32)
    masks = torch.from_numpy(np.stack([p[1] for p in pairs]))  # (20, 2, 32, 32)
    return images, masks


def test_one_shot_dice_on_new_images_from_a_different_support(trained, test_set):
    model, _ = trained
    images, masks = test_set
    scores = {name: [] for name in TOY_CLASSES}
    for i in range(NUM_IMAGES):
        s = (i + 1) % NUM_IMAGES  # support is always a different image than the query
        for label, name in enumerate(TOY_CLASSES):
            result = one_shot(model, images[s : s + 1], masks[s : s + 1, label : label + 1], images[i : i + 1])
            scores[name].append(dice(result.masks[0, 0], masks[i, label]))
    means = {name: float(np.mean(v)) for name, v in scores.items()}
    assert means["bright"] > 0.8, means
    assert means["dark"] > 0.8, means


def test_same_query_different_support_gives_different_class(trained, test_set):
    model, _ = trained
    images, masks = test_set
    own, other, disagreement = [], [], []
    for i in range(NUM_IMAGES):
        s = (i + 7) % NUM_IMAGES
        query = images[i : i + 1]
        predicted = []
        for label in range(2):
            result = one_shot(model, images[s : s + 1], masks[s : s + 1, label : label + 1], query)
            predicted.append(result.masks[0, 0])
            own.append(dice(result.masks[0, 0], masks[i, label]))
            other.append(dice(result.masks[0, 0], masks[i, 1 - label]))
        disagreement.append(1.0 - dice(predicted[0], predicted[1]))
    assert np.mean(own) > 0.8, np.mean(own)
    assert np.mean(other) < 0.3, np.mean(other)
    assert np.mean(disagreement) > 0.8  # the masks differ, the support decided the class
    assert min(disagreement) > 0.5


def test_both_classes_in_one_call_from_one_support(trained, test_set):
    model, _ = trained
    images, masks = test_set
    result = one_shot(model, images[:1], masks[:1], images[1:], ["bright", "dark"])
    for label in range(2):
        scores = [dice(result.masks[j, label], masks[j + 1, label]) for j in range(NUM_IMAGES - 1)]
        assert np.mean(scores) > 0.8


def test_memory_bank_from_training_segments_without_support(trained, test_set):
    model, bank = trained
    images, masks = test_set
    assert isinstance(bank, MemoryBank)
    assert bank.class_names == ["toy/bright", "toy/dark"]
    result = memory_retrieval(model, bank, ["toy/bright", "toy/dark"], images)
    for label in range(2):
        scores = [dice(result.masks[j, label], masks[j, label]) for j in range(NUM_IMAGES)]
        assert np.mean(scores) > 0.7, (label, np.mean(scores))
