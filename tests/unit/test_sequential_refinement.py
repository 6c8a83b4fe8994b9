"""Sequential click refinement: each click step refines the previous output (the one-shot start read beside it),
kept per click series so that a click costs one refiner pass; steps, training and the evaluation alike."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from iris_engine.checkpoint import (
    CLICK_REFINER_FILE,
    SEQUENTIAL_CLICK_REFINER_FILE,
    load_click_refiner,
    save_checkpoint,
    save_click_refiner,
)
from iris_engine.config import ModelConfig
from iris_engine.data.splits import make_split
from iris_engine.data.toy import ToyEpisodes
from iris_engine.errors import IrisInputError
from iris_engine.evaluation import refinement as ev
from iris_engine.inference import IrisSegmenter, VolumeSegmentation
from iris_engine.io.volume import Volume
from iris_engine.model.click_refiner import ClickRefiner, ClickRefinerConfig, as_sequential, click_inputs
from iris_engine.model.iris import IrisModel
from iris_engine.preprocess import normalize_intensity
from iris_engine.refinement import (
    Click,
    ClickSeries,
    LearnedClicks,
    QueryFeatures,
    RefineConfig,
    click_map,
    click_steps,
    clicks_from_label_map,
    learned_clicks,
    refine_steps,
    scribble,
)
from iris_engine.training import click_training
from iris_engine.training.click_training import (
    ClickTrainConfig,
    ClickTrainer,
    one_shot_batch,
    simulate_sequential_clicks,
)
from tests.unit.test_data_msd_split_bank import _write_msd

TINY = ModelConfig(encoder_channels=(8, 16, 32), image_size=32, decoder_channels=8, num_heads=2,
                   task_encoder_layers=1, decoder_layers=1)
SMALL = ClickRefinerConfig(channels=(8, 16), feature_channels=8)


def _trained_like(config: ClickRefinerConfig, seed: int) -> ClickRefiner:
    """A refiner whose correction is not zero, as after training."""
    torch.manual_seed(seed)
    refiner = ClickRefiner(config).eval()
    torch.nn.init.normal_(refiner.head.weight, std=0.5)
    return refiner


class PassCounter:
    """Counts a refiner's forward passes."""

    def __init__(self, refiner: ClickRefiner):
        self.count = 0
        refiner.register_forward_hook(lambda *_: setattr(self, "count", self.count + 1))


@pytest.fixture()
def segmenter() -> IrisSegmenter:
    torch.manual_seed(0)
    return IrisSegmenter(IrisModel(TINY).eval(), click_refiner=_trained_like(SMALL, 1),
                         sequential_click_refiner=_trained_like(replace(SMALL, sequential=True), 2))


def _case(shape: tuple[int, ...]) -> tuple[Volume, VolumeSegmentation]:
    rng = np.random.default_rng(1)
    volume = Volume(rng.normal(size=shape).astype(np.float32), np.eye(4), "MR")
    probability = np.full((1, *shape), 0.2, np.float32)
    probability[(0, *(slice(s // 4, s // 2) for s in shape))] = 0.8
    return volume, VolumeSegmentation(probability, probability >= 0.5, ["organ"], "one_shot", "tiny")


def test_a_restarting_refiner_made_sequential_computes_the_same_and_the_start_is_required() -> None:
    restart = _trained_like(SMALL, 3)
    sequential = as_sequential(restart).eval()
    assert sequential.config.sequential and as_sequential(sequential) is sequential
    image, current, start = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    features = torch.randn(2, 8, 32, 32)
    clicks = np.zeros((2, 32, 32), np.uint8)
    clicks[0, 4, 4], clicks[1, 20, 9] = 1, 2
    with torch.no_grad():
        expected = restart(click_inputs(image, current, features, clicks, restart.config))
        got = sequential(click_inputs(image, current, features, clicks, sequential.config, start))
    assert torch.allclose(expected, got, atol=1e-6) and not torch.allclose(expected, current, atol=1e-3)
    with pytest.raises(ValueError, match="needs the one-shot start"):
        click_inputs(image, current, features, clicks, sequential.config)


def test_clicks_group_into_steps_a_click_a_scribble_or_given_sizes() -> None:
    strokes = scribble([(5, 5), (5, 9)], False)
    clicks = [Click((1, 1)), Click((20, 20)), *strokes, Click((5, 10), True)]
    steps = click_steps(clicks)
    assert [len(s) for s in steps] == [1, 1, len(strokes), 1]  # touching but of the other sign: its own step
    assert [len(s) for s in click_steps(clicks, [2, len(strokes) + 1])] == [2, len(strokes) + 1]
    with pytest.raises(IrisInputError, match="do not add up"):
        click_steps(clicks, [1, 1])
    with pytest.raises(IrisInputError, match="one class only"):
        click_steps([Click((1, 1), True, "a"), Click((1, 2), True, "b")], [2])
    label_map = np.zeros((12, 12), np.uint8)
    label_map[2:8, 2] = label_map[2:8, 6] = label_map[7, 2:7] = 1  # a U-shaped stroke: rows 2-6 hold both arms
    label_map[9, 9] = 2  # a negative click
    label_map[0, 11] = 1  # a positive click
    assert [len(s) for s in click_steps(clicks_from_label_map(label_map))] == [1, 15, 1]  # in raster order


def test_each_click_step_refines_the_previous_output_and_costs_one_refiner_pass(segmenter: IrisSegmenter) -> None:
    volume, result = _case((40, 36))
    first, second = Click((30, 30), True), Click((12, 12), False)
    passes = PassCounter(segmenter.sequential_click_refiner)
    grid_passes = PassCounter(segmenter.click_refiner)
    one = segmenter.refine(volume, result, [first])
    two = segmenter.refine(volume, result, [first, second])
    assert passes.count == 2 and grid_passes.count == 0  # the second call refined only the newest step
    assert one.masks[0][first.position] and two.masks[0][first.position] and not two.masks[0][second.position]
    undone = segmenter.refine(volume, result, [first])
    assert passes.count == 2 and np.array_equal(undone.probabilities, one.probabilities)  # undo: nothing to run
    fresh = IrisSegmenter(segmenter.model, click_refiner=segmenter.click_refiner,
                          sequential_click_refiner=segmenter.sequential_click_refiner)
    assert np.allclose(fresh.refine(volume, result, [first, second]).probabilities, two.probabilities, atol=1e-6)
    restarted = segmenter.refine(volume, result, [first, second], RefineConfig(sequential=False))
    assert grid_passes.count == 1 and not np.allclose(restarted.probabilities, two.probabilities, atol=1e-3)


def test_kept_steps_stay_within_their_memory_budget_and_the_newest_is_always_kept() -> None:
    series = ClickSeries(max_bytes=3 * 4000)
    keys = ClickSeries.keys("series", [[Click((i, i))] for i in range(5)])
    for key in keys:
        series.keep(key, np.zeros(1000, np.float32))  # 4000 bytes each
    assert series.latest(keys)[0] == 5 and series.latest(keys[:2]) == (0, None)  # the two oldest dropped
    assert series.latest(keys[:3])[0] == 3
    series.keep("huge", np.zeros(10_000, np.float32))
    assert series.latest(["huge"])[0] == 1 and series.latest(keys)[0] == 0


def test_the_engine_output_is_the_refiner_run_step_by_step_on_its_own_output(segmenter: IrisSegmenter) -> None:
    volume, result = _case((32, 32))  # the model's own grid: no resizing between the steps
    clicks = [Click((28, 28), True), *scribble([(10, 10), (10, 14)], False)]
    engine = segmenter.refine(volume, result, clicks).probabilities[0]
    learned = LearnedClicks(segmenter.sequential_click_refiner,
                            QueryFeatures(segmenter.model, segmenter.to_model_space(volume)[0]))
    start = result.probabilities[0][..., None]
    steps = [click_map(step, (32, 32))[..., None] for step in click_steps(clicks)]
    config = replace(RefineConfig(), threshold=segmenter.config.threshold,
                     learned_weight=RefineConfig().sequential_learned_weight)
    image = normalize_intensity(volume.array, volume.modality, segmenter.preprocess)[..., None]
    outputs = refine_steps(image, start, steps, config, 32, learned)
    assert len(outputs) == 2 and np.allclose(outputs[-1][..., 0], engine, atol=1e-4)
    again = refine_steps(image, start, steps, config, 32, learned, done=1, previous=outputs[0])
    assert np.allclose(again[-1], outputs[-1], atol=1e-6)


def test_the_sequential_refiner_runs_with_its_own_weight_against_the_local_edit(segmenter: IrisSegmenter) -> None:
    features = QueryFeatures(segmenter.model, torch.zeros(1, 1, 32, 32))
    config = RefineConfig(learned_weight=0.5, sequential_learned_weight=0.8)
    chosen, used = learned_clicks(segmenter.click_refiner, None, features, lambda: features, 1, config,
                                  segmenter.sequential_click_refiner)
    assert chosen.sequential and used.learned_weight == 0.8
    chosen, used = learned_clicks(segmenter.click_refiner, None, features, lambda: features, 1, config,
                                  segmenter.sequential_click_refiner, depth=4)
    assert not chosen.sequential and used.learned_weight == 0.5
    with pytest.raises(IrisInputError, match="sequential_learned_weight"):
        RefineConfig(sequential_learned_weight=1.5)


def test_volumes_keep_the_restarting_refiner(segmenter: IrisSegmenter) -> None:
    volume, result = _case((24, 24, 6))
    passes, grid_passes = PassCounter(segmenter.sequential_click_refiner), PassCounter(segmenter.click_refiner)
    segmenter.refine(volume, result, [Click((20, 20, 3), True)])
    assert passes.count == 0 and grid_passes.count >= 1


def test_the_segmenter_takes_a_sequential_refiner_beside_its_weights(tmp_path: Path) -> None:
    checkpoint = save_checkpoint(tmp_path / "iris.pt", IrisModel(TINY), metadata={"model_version": "tiny-1"})
    save_click_refiner(tmp_path / CLICK_REFINER_FILE, ClickRefiner(SMALL), "tiny-1")
    assert IrisSegmenter.from_checkpoint(checkpoint).sequential_click_refiner is None
    save_click_refiner(tmp_path / SEQUENTIAL_CLICK_REFINER_FILE, as_sequential(ClickRefiner(SMALL)), "tiny-1")
    assert IrisSegmenter.from_checkpoint(checkpoint).sequential_click_refiner.config.sequential


def test_sequential_training_reads_each_click_on_the_previous_output(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = IrisModel(TINY).eval()
    refiner = as_sequential(_trained_like(SMALL, 4))
    batch = one_shot_batch(model, ToyEpisodes(size=32, seed=5), 3)
    clicks, before_last = simulate_sequential_clicks(refiner, batch, np.array([1, 2, 3]), 0.5)
    assert all(0 < (clicks[i] > 0).sum() <= i + 1 for i in range(3))
    assert torch.equal(before_last[0], batch.start[0])  # one click: read on the start itself
    with torch.no_grad():
        first = torch.sigmoid(refiner(click_inputs(batch.image[1:2], batch.start[1:2], batch.features[1:2],
                                                   clicks[1:2] * 0 + _first_click(batch, 1), refiner.config,
                                                   batch.start[1:2])))
    assert not torch.equal(before_last[1], batch.start[1])
    unclicked = torch.from_numpy(clicks[1] == 0)
    assert torch.allclose(before_last[1, 0][unclicked], first[0, 0][unclicked], atol=1e-5)
    config = ClickTrainConfig(iterations=2, batch_size=2, warmup_iterations=1, max_clicks=3, sequential=True)
    trainer = ClickTrainer(model, ToyEpisodes(size=32, seed=3), config, tmp_path / "seq",
                           replace(SMALL, sequential=True))
    before = [p.clone() for p in trainer.refiner.parameters()]
    trainer.fit()
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.refiner.parameters(), strict=True))


def _first_click(batch: click_training.ClickBatch, index: int) -> np.ndarray:
    """The click map of the simulated user's first click on slice `index` of the batch's start."""
    marks = np.zeros(batch.start.shape[-2:], np.uint8)
    (r, c), positive = ev.next_click(batch.start[index, 0].numpy() >= 0.5, batch.truth[index, 0].numpy() >= 0.5)
    marks[r, c] = 1 if positive else 2
    return marks


def test_train_refiner_sequential_starts_from_a_restarting_refiner_and_saves_the_sequential_file(
        tmp_path: Path) -> None:
    _write_msd(tmp_path, "toy2d", 6, False, {"disc": 1}, seed=1)
    split = make_split(0, held_out_fraction=0.5, held_out_datasets=(), held_out_classes=(), datasets=("toy2d",),
                       root=tmp_path)
    split.save(tmp_path / "split.json")
    checkpoint = save_checkpoint(tmp_path / "iris.pt", IrisModel(TINY), metadata={"model_version": "tiny-2"})
    restart = save_click_refiner(tmp_path / CLICK_REFINER_FILE, _trained_like(SMALL, 5), "tiny-2")
    common = ["--checkpoint", str(checkpoint), "--data-root", str(tmp_path), "--datasets", "toy2d", "--iterations",
              "1", "--batch-size", "2", "--sequential"]
    path = click_training.main([*common, "--init", str(restart), "--out", str(tmp_path / "seq")])
    loaded = load_click_refiner(path)
    assert path.name == SEQUENTIAL_CLICK_REFINER_FILE and loaded.refiner.config.sequential
    assert load_click_refiner(click_training.main([*common, "--init", str(path), "--out", str(tmp_path / "more")]))
    with pytest.raises(IrisInputError, match="not with --fine-thin-only"):
        click_training.main([*common, "--fine-thin-only", "--out", str(tmp_path / "bad")])


def test_the_protocol_refines_each_click_on_the_previous_output_with_a_sequential_refiner() -> None:
    torch.manual_seed(0)
    model = IrisModel(TINY).eval()
    image = np.zeros((32, 32, 1), np.float32)
    image[8:24, 6:26] = 2.0
    truth = image > 1
    start = np.full((32, 32, 1), 0.1, np.float32)
    start[8:16, 6:26] = 0.9
    learned = LearnedClicks(as_sequential(_trained_like(SMALL, 6)),
                            QueryFeatures(model, torch.from_numpy(np.moveaxis(image, -1, 0))[:, None]))
    config = RefineConfig(threshold=0.5)
    scores, _ = ev.simulate(image, truth, start, config, None, 3, 0.99, learned, 32)
    steps, previous, expected = [], start, [ev.dice(start >= 0.5, truth)]
    for _ in range(3):
        position, positive = ev.next_click(previous >= 0.5, truth)
        steps.append(np.zeros((32, 32, 1), np.uint8))
        steps[-1][position] = 1 if positive else 2
        previous = refine_steps(image, start, steps, config, 32, learned, done=len(steps) - 1, previous=previous)[-1]
        expected.append(ev.dice(previous >= 0.5, truth))
    assert np.allclose(scores, expected)
    disc = RefineConfig(method="disc", threshold=0.5)
    large = [np.repeat(np.repeat(a, 2, axis=0), 2, axis=1) for a in (image, truth, start)]  # refined on a 32 px view
    assert ev.simulate(*large, disc, None, 5, 0.99, learned, 32)[0] == \
        ev.simulate(*large, disc, None, 5, 0.99, None, 32)[0]  # the baseline restarts whatever refiner is at hand
