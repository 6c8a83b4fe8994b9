"""IrisSegmenter: the Volume-level inference path (geometry, orientation, caching, strategies, errors)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from iris_engine.config import ModelConfig
from iris_engine.errors import IrisInputError
from iris_engine.inference import IrisSegmenter, Support, VolumeSegmentation
from iris_engine.io.volume import Volume
from iris_engine.model.iris import IrisModel

TINY = ModelConfig(encoder_channels=(8, 16, 32), image_size=32, decoder_channels=8, num_heads=2,
                   task_encoder_layers=1, decoder_layers=1)


@pytest.fixture()
def segmenter() -> IrisSegmenter:
    torch.manual_seed(0)
    return IrisSegmenter(IrisModel(TINY))


def _volume(shape: tuple[int, ...], affine: np.ndarray | None = None, seed: int = 0) -> Volume:
    rng = np.random.default_rng(seed)
    return Volume(rng.normal(size=shape).astype(np.float32), np.eye(4) if affine is None else affine, "MR")


def _support(shape: tuple[int, int, int] = (40, 36, 10)) -> Support:
    mask = np.zeros(shape, np.uint8)
    mask[10:20, 8:18, 3:7] = 1
    mask[25:32, 20:30, 2:8] = 2
    return Support(_volume(shape, np.diag([0.8, 0.8, 3.0, 1.0]), seed=1), mask)


def test_masks_come_back_on_the_query_grid(segmenter: IrisSegmenter) -> None:
    affine = np.array([[0.0, -0.7, 0.0, 10.0], [0.9, 0.0, 0.0, -5.0], [0.0, 0.0, 2.5, 3.0], [0.0, 0.0, 0.0, 1.0]])
    query = _volume((30, 44, 7), affine, seed=2)
    result = segmenter.segment(query, "one_shot", [_support()], ["a", "b"])
    assert result.probabilities.shape == result.masks.shape == (2, 30, 44, 7)
    assert result.masks.dtype == bool and 0.0 <= result.probabilities.min() <= result.probabilities.max() <= 1.0
    assert np.array_equal(result.masks, result.probabilities >= segmenter.config.threshold)
    assert result.label_map().shape == (30, 44, 7)


def test_orientation_does_not_change_the_answer(segmenter: IrisSegmenter) -> None:
    """The same anatomy stored with flipped voxel order gives the same mask once mapped back."""
    query = _volume((24, 20, 6), np.diag([1.0, 1.0, 2.0, 1.0]), seed=3)
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = 23.0
    flipped = Volume(query.array[::-1].copy(), query.affine @ flip, "MR")
    a = segmenter.segment(query, "one_shot", [_support()], ["a", "b"])
    b = segmenter.segment(flipped, "one_shot", [_support()], ["a", "b"])
    np.testing.assert_allclose(a.probabilities, b.probabilities[:, ::-1], atol=1e-5)


def test_task_embedding_is_cached_by_content(segmenter: IrisSegmenter) -> None:
    support = _support()
    first = segmenter.encode([support], ["a", "b"])
    assert segmenter.encode([support], ["a", "b"]) is first
    moved = support.mask.copy()
    moved[10:12] = 0
    changed = Support(support.volume, moved)
    assert segmenter.encode([changed], ["a", "b"]) is not first


def test_every_strategy_on_a_2d_image(segmenter: IrisSegmenter) -> None:
    image = _volume((50, 60), seed=4)
    mask = np.zeros((50, 60), np.uint8)
    mask[10:30, 15:35] = 1
    supports = [Support(_volume((50, 60), seed=s), mask) for s in (5, 6)]
    results: dict[str, VolumeSegmentation] = {
        "one_shot": segmenter.segment(image, "one_shot", supports[:1], ["lesion"]),
        "context_ensemble": segmenter.segment(image, "context_ensemble", supports, ["lesion"]),
        "in_context_tuning": segmenter.segment(image, "in_context_tuning", supports, ["lesion"], tuning_steps=4,
                                               extra_examples=supports[:1]),
    }
    segmenter.memory_bank.update_from_embedding(results["context_ensemble"].embedding)
    results["memory_bank"] = segmenter.segment(image, "memory_bank", class_names=["lesion"])
    for strategy, result in results.items():
        assert result.strategy == strategy and result.masks.shape == (1, 50, 60)
    assert len(results["in_context_tuning"].loss_curve) == 4
    assert not torch.equal(results["in_context_tuning"].embedding.tokens, results["context_ensemble"].embedding.tokens)
    np.testing.assert_allclose(results["memory_bank"].probabilities, results["context_ensemble"].probabilities,
                               atol=1e-5)


def test_label_map_takes_the_most_probable_overlapping_class() -> None:
    probabilities = np.array([[[0.9, 0.6, 0.1]], [[0.7, 0.8, 0.2]]], dtype=np.float32)
    result = VolumeSegmentation(probabilities, probabilities >= 0.5, ["a", "b"], "one_shot", "v")
    assert result.label_map().tolist() == [[1, 2, 0]]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strategy": "guess"}, "unknown strategy"),
        ({"strategy": "one_shot", "supports": "two"}, "exactly one support"),
        ({"strategy": "context_ensemble", "supports": []}, "needs at least one support"),
        ({"strategy": "memory_bank", "class_names": ["nothing"]}, "no memory-bank entry"),
        ({"strategy": "one_shot", "class_names": []}, "name at least one class"),
        ({"strategy": "one_shot", "supports": "empty"}, "empty"),
        ({"strategy": "one_shot", "supports": "wrong_shape"}, "does not match"),
    ],
)
def test_clear_errors(segmenter: IrisSegmenter, kwargs: dict, message: str) -> None:
    support = _support()
    choices = {
        "two": [support, support],
        "empty": [Support(support.volume, np.zeros_like(support.mask))],
        "wrong_shape": [Support(support.volume, support.mask[:, :, :5])],
    }
    call = {"supports": [support], "class_names": ["a", "b"], **kwargs}
    if isinstance(call["supports"], str):
        call["supports"] = choices[call["supports"]]
    with pytest.raises(IrisInputError, match=message):
        segmenter.segment(_volume((40, 36, 10)), **call)


def test_nan_query_is_refused(segmenter: IrisSegmenter) -> None:
    query = _volume((40, 36, 10))
    query.array[0, 0, 0] = np.nan
    with pytest.raises(IrisInputError, match="NaN"):
        segmenter.segment(query, "one_shot", [_support()], ["a", "b"])
