"""Click-protocol evaluation: click placement, simulation, clicks to target, a whole run on tiny MSD folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from iris_engine import strategies
from iris_engine.checkpoint import (
    CLICK_REFINER_FILE,
    FINE_CLICK_REFINER_FILE,
    load_checkpoint,
    load_click_refiner,
    save_checkpoint,
    save_click_refiner,
)
from iris_engine.config import ModelConfig
from iris_engine.data.episodes import EvalPair, iter_eval_pairs
from iris_engine.data.slices import SliceBank, build_slice_bank
from iris_engine.data.splits import Split, make_split
from iris_engine.errors import IrisInputError
from iris_engine.evaluation import refinement as ev
from iris_engine.evaluation.harness import evaluation_tasks
from iris_engine.input_scale import to_model_grid, to_score_grid
from iris_engine.model.click_refiner import ClickRefiner, ClickRefinerConfig
from iris_engine.model.iris import IrisModel
from iris_engine.refinement import RefineConfig
from tests.unit.test_data_msd_split_bank import _write_msd

TINY = ModelConfig(encoder_channels=(8, 16, 32), image_size=32, decoder_channels=8, num_heads=2,
                   task_encoder_layers=1, decoder_layers=1)


def test_next_click_goes_to_the_centre_of_the_largest_error_region() -> None:
    truth = np.zeros((40, 40), bool)
    truth[5:25, 5:25] = True
    prediction = truth.copy()
    prediction[5:17, 13:25] = False  # missed: 12 x 12
    prediction[30:36, 30:36] = True  # false positive: 6 x 6
    (r, c), positive = ev.next_click(prediction, truth)
    assert positive and 10 <= r <= 11 and 18 <= c <= 19
    prediction = truth.copy()
    prediction[28:40, 28:40] = True  # false positive 12 x 12 touching the border
    (r, c), positive = ev.next_click(prediction, truth)
    assert not positive and (r, c) == (33, 33)
    assert ev.next_click(truth, truth) is None


def test_in_a_volume_the_next_click_goes_to_the_centre_of_the_largest_3d_error() -> None:
    truth = np.zeros((30, 30, 9), bool)
    truth[5:25, 5:25, :] = True
    prediction = truth.copy()
    prediction[8:20, 8:20, 0:7] = False  # missed: 12 x 12 on slices 0-6, open towards the stack's start
    prediction[2:4, 26:29, 8] = True  # small false positive
    (r, c, z), positive = ev.next_click(prediction, truth)
    assert positive and 13 <= r <= 14 and 13 <= c <= 14 and z == 0  # the stack's end is not outside the region


def test_simulation_reaches_the_target_and_counts_clicks() -> None:
    image = np.zeros((48, 48), np.float32)
    image[10:30, 12:36] = 2.0
    truth = image > 1
    start = np.zeros((48, 48), np.float32)
    organ_reach = RefineConfig(method="local", empty_reach=0.2)  # the block fills half the side
    image, truth, start = image[..., None], truth[..., None], start[..., None]
    scores, seconds = ev.simulate(image, truth, start, organ_reach, None, 10, 0.85)
    disc, _ = ev.simulate(image, truth, start, RefineConfig(method="disc"), None, 10, 0.85)
    assert scores[0] == 0.0 and max(scores) >= 0.85 and seconds >= 0.0
    assert ev.clicks_to_target(scores, 0.85, 10) < ev.clicks_to_target(disc, 0.85, 10)
    assert ev.clicks_to_target([0.1, 0.2], 0.85, 10) == 10 and ev.clicks_to_target([0.9], 0.85, 10) == 0


def _tiny_folders(tmp_path: Path) -> tuple[Split, SliceBank, Path]:
    """A 2D and a 3D toy set, their split and bank, a tiny model and a click refiner beside it."""
    _write_msd(tmp_path, "toy2d", 6, False, {"disc": 1}, seed=1)
    _write_msd(tmp_path, "toy3d", 6, True, {"organ": 1}, seed=2)
    datasets = ("toy2d", "toy3d")
    split = make_split(0, held_out_fraction=0.5, held_out_datasets=(), held_out_classes=(), datasets=datasets,
                       root=tmp_path)
    bank = build_slice_bank(datasets=datasets, root=tmp_path, size=32, cache_dir=None)
    checkpoint = save_checkpoint(tmp_path / "model.pt", IrisModel(TINY), metadata={"model_version": "tiny"})
    save_click_refiner(tmp_path / CLICK_REFINER_FILE, ClickRefiner(ClickRefinerConfig((8, 16), 8)), "tiny")
    return split, bank, checkpoint


def test_a_run_on_tiny_folders_keeps_patients_apart_and_writes_the_report(tmp_path: Path) -> None:
    datasets = ("toy2d", "toy3d")
    split, bank, checkpoint = _tiny_folders(tmp_path)
    config = ev.RefineEvalConfig(methods=("disc", "local", "learned", "combined"), max_queries=2, max_clicks=6)
    payload = ev.run(checkpoint, split, config, RefineConfig(tuning_steps=1), bank=bank, log=False)
    assert {t["dataset"] for t in payload["tasks"]} == set(datasets)
    for task in payload["tasks"]:
        assert task["queries"] <= 2 and not set(task["query_patients"]) & set(task["support_patients"])
        for method in config.methods:
            curve = task["dice_curve"][method]
            assert len(curve) == 6 and curve[0] == task["dice_curve"]["disc"][0]
            assert 0 <= task["clicks_to_target"][method] <= 6
        for method in config.methods:
            per_query = np.asarray(task["query_curves"][method])
            assert per_query.shape == (task["queries"], 6)
            assert np.allclose(per_query.mean(axis=0), task["dice_curve"][method], atol=1e-3)
    table = ev.summary(payload)
    assert set(table) == {*datasets, "mean over datasets"} and set(table["toy2d"]) == set(config.methods)
    ev.write(payload, tmp_path / "out")
    report = (tmp_path / "out" / "refinement.md").read_text()
    assert "| toy3d |" in report and "disc" in report
    assert "## Against `disc`" in report and "| learned − disc | local − disc | combined − disc |" not in report
    assert "| dataset | local − disc | learned − disc | combined − disc |" in report
    assert json.loads((tmp_path / "out" / "refinement.json").read_text())["protocol"]["max_clicks"] == 6


def test_the_volume_protocol_scores_each_held_out_volume_of_the_3d_sets(tmp_path: Path) -> None:
    split, bank, checkpoint = _tiny_folders(tmp_path)
    config = ev.RefineEvalConfig(methods=("disc", "local", "learned"), max_clicks=6, volumes=True)
    payload = ev.run(checkpoint, split, config, RefineConfig(tuning_steps=1), bank=bank, log=False)
    (task,) = payload["tasks"]
    supports = set(task["support_patients"])
    test_volumes = [c for c in split.test_cases["toy3d"] if split.patient_of("toy3d", c) not in supports]
    assert task["dataset"] == "toy3d" and task["queries"] == len(test_volumes) > 0
    assert task["slices"] > task["queries"] and not set(task["query_patients"]) & set(task["support_patients"])
    assert all(len(curve) == 6 for curve in task["dice_curve"].values())
    ev.write(payload, tmp_path / "out")
    report = (tmp_path / "out" / "refinement_volumes.md").read_text()
    assert "3D sets as volumes" in report and "| toy3d / organ | 3D |" in report
    assert f"as few as {task['queries']}) the bootstrap understates the uncertainty" in report
    assert not (tmp_path / "out" / "refinement.md").exists()


def _payload(gaps: dict[str, list[np.ndarray]], seed: int = 0) -> dict:
    """A protocol payload whose `learned` curves are the `disc` ones plus the given per-query gaps (one array of
    shape (queries, 6) per class of each dataset)."""
    rng = np.random.default_rng(seed)
    tasks = []
    for dataset, per_class in gaps.items():
        for k, gap in enumerate(per_class):
            disc = rng.uniform(0.2, 0.7, gap.shape)
            tasks.append({"dataset": dataset, "class_name": f"c{k}",
                          "query_curves": {"disc": disc.tolist(), "learned": (disc + gap).tolist()}})
    return {"protocol": {"methods": ["disc", "learned"], "seed": 0, "bootstrap_resamples": 500}, "tasks": tasks}


def test_paired_differences_to_the_disc_carry_an_interval_that_says_when_a_gap_is_real() -> None:
    rng = np.random.default_rng(1)
    constant = ev.paired_differences(_payload({"a": [np.full((6, 6), 0.1)], "b": [np.full((4, 6), -0.02)] * 2}))
    for n in ev.REPORT_AT:
        assert np.allclose(constant["a"]["learned"][n], 0.1) and np.allclose(constant["b"]["learned"][n], -0.02)
        assert np.allclose(constant["mean over datasets"]["learned"][n], 0.04)
    real = ev.paired_differences(_payload({"a": [0.1 + rng.normal(0, 0.02, (12, 6))]}))["a"]["learned"]
    spread = np.tile([[0.05], [-0.05]], (3, 6)) - 0.002  # mean -0.002, scattered by +-0.05 per slice
    noise = ev.paired_differences(_payload({"a": [spread]}))["a"]["learned"]
    for n in ev.REPORT_AT:
        mean, low, high = real[n]
        assert 0.0 < low <= mean <= high
        mean, low, high = noise[n]
        assert low < 0.0 < high and low <= mean <= high
    assert ev.paired_differences({"protocol": {"methods": ["learned"], "seed": 0}, "tasks": []}) == {}


def _pair(image: torch.Tensor, mask: torch.Tensor) -> EvalPair:
    return EvalPair(image, mask[None, None].float(), image[0], mask[None].float(), ["s"], ["p1"], "q", "p2", 0)


def test_the_start_reads_a_thin_support_at_twice_the_input_size_as_the_engine_does() -> None:
    model = IrisModel(TINY).eval()
    image = torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    line = torch.zeros(64, 64)
    line[10:54, 30:32] = 1  # one pixel thick on the 32 px model grid
    block = torch.zeros(64, 64)
    block[10:40, 12:44] = 1
    config = ev.RefineEvalConfig()
    thin, fine = ev.one_shot_embedding(model, _pair(image, line), config)
    assert fine and torch.allclose(thin.tokens, strategies.encode_supports(model, image, line[None, None]).tokens)
    thick, fine = ev.one_shot_embedding(model, _pair(image, block), config)
    small, small_mask = to_model_grid(image, 32), to_model_grid(block[None, None], 32, masks=True)
    assert not fine and torch.allclose(thick.tokens, strategies.encode_supports(model, small, small_mask).tokens)
    assert not ev.one_shot_embedding(model, _pair(image, line), ev.RefineEvalConfig(fine_scale_thickness=0))[1]
    model_grid_line = to_model_grid(line[None, None], 32, masks=True)[0, 0]
    assert not ev.one_shot_embedding(model, _pair(small, model_grid_line), config)[1]  # bank at the model's size


def test_on_a_finer_bank_the_clicks_start_from_the_engine_one_shot_and_score_on_that_grid(tmp_path: Path) -> None:
    split, _, checkpoint = _tiny_folders(tmp_path)
    bank = build_slice_bank(datasets=("toy2d",), root=tmp_path, size=64, cache_dir=None)
    config = ev.RefineEvalConfig(methods=("disc", "learned"), max_queries=2, max_clicks=4)
    model = load_checkpoint(checkpoint).model.eval()
    refiner = load_click_refiner(checkpoint.with_name(CLICK_REFINER_FILE)).refiner
    (spec,) = [s for s in evaluation_tasks(bank, split) if s.dataset == "toy2d"]
    row = ev.evaluate_task(model, bank, split, spec, config, RefineConfig(tuning_steps=1), refiner)
    pairs = list(iter_eval_pairs(bank, split, "toy2d", spec.class_name, 1, 0, support_from=spec.support_from))
    embedding, fine = ev.one_shot_embedding(model, pairs[0], config)
    starts = []
    for stack, truth, _ in ev._queries(pairs, spec, config):
        assert truth.shape == (64, 64, 1)
        inputs = stack if fine else to_model_grid(stack, 32)
        probability = to_score_grid(strategies.predict_probabilities(model, inputs, embedding)[:, 0], (64, 64))
        starts.append(ev.dice(np.moveaxis(probability.numpy(), 0, -1) >= 0.5, truth))
    assert row["input_scale"] == (2 if fine else 1)
    assert row["dice_curve"]["disc"][0] == row["dice_curve"]["learned"][0] == round(float(np.mean(starts)), 4)
    payload = ev.run(checkpoint, split, config, RefineConfig(tuning_steps=1), bank=bank, log=False)
    ev.write(payload, tmp_path / "out")
    assert "a grid 2 x the model's input" in (tmp_path / "out" / "refinement.md").read_text()


def test_the_fine_refiner_beside_the_checkpoint_reaches_every_task_and_the_report(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    split, _, checkpoint = _tiny_folders(tmp_path)
    bank = build_slice_bank(datasets=("toy2d",), root=tmp_path, size=64, cache_dir=None)
    config = ev.RefineEvalConfig(methods=("disc", "learned"), max_queries=1, max_clicks=2)
    calls: list[tuple[ClickRefiner | None, int]] = []
    choose = ev.learned_clicks
    monkeypatch.setattr(ev, "learned_clicks", lambda refiner, fine, *rest: calls.append((fine, rest[2]))
                        or choose(refiner, fine, *rest))
    plain = ev.run(checkpoint, split, config, RefineConfig(tuning_steps=1), bank=bank, log=False)
    assert plain["fine_click_refiner"] is None and calls and all(fine is None for fine, _ in calls)
    save_click_refiner(checkpoint.with_name(FINE_CLICK_REFINER_FILE), ClickRefiner(ClickRefinerConfig((8, 16), 8)),
                       "tiny")
    calls.clear()
    payload = ev.run(checkpoint, split, config, RefineConfig(tuning_steps=1), bank=bank, log=False)
    assert payload["fine_click_refiner"] == str(checkpoint.with_name(FINE_CLICK_REFINER_FILE))
    assert calls and all(isinstance(fine, ClickRefiner) for fine, _ in calls)
    assert {scale for _, scale in calls} == {t["input_scale"] for t in payload["tasks"]}
    ev.write(payload, tmp_path / "out")
    assert "the fine refiner `" in (tmp_path / "out" / "refinement.md").read_text()
    calls.clear()
    off = ev.run(checkpoint, split, config, RefineConfig(tuning_steps=1), bank=bank, log=False, use_fine_refiner=False)
    assert off["fine_click_refiner"] is None and all(fine is None for fine, _ in calls)


def test_support_draws_refine_every_query_from_each_supports_start(tmp_path: Path) -> None:
    split, bank, checkpoint = _tiny_folders(tmp_path)
    one = ev.RefineEvalConfig(methods=("disc", "learned"), max_queries=2, max_clicks=3)
    three = ev.RefineEvalConfig(methods=("disc", "learned"), max_queries=2, max_clicks=3, support_draws=3)
    single = {t["dataset"]: t for t in ev.run(checkpoint, split, one, RefineConfig(), bank=bank, log=False)["tasks"]}
    payload = ev.run(checkpoint, split, three, RefineConfig(), bank=bank, log=False)
    for task in payload["tasks"]:
        draws = task["draws"]
        assert 2 <= len(draws) <= 3 and task["queries"] == sum(d["queries"] for d in draws)
        assert len({tuple(d["support_patients"]) for d in draws}) == len(draws)  # each draw another support
        for draw in draws:
            assert not set(draw["support_patients"]) & set(draw["query_patients"])
        first = single[task["dataset"]]
        assert first["draws"][0] == draws[0]  # the first draw is the single-draw run
        assert np.allclose(np.asarray(task["query_curves"]["disc"])[: first["queries"]],
                           first["query_curves"]["disc"])
    ev.write(payload, tmp_path / "out")
    report = (tmp_path / "out" / "refinement.md").read_text()
    assert "each of 3 other patients drawn with seeds 0-2" in report and "counts once per draw" in report
    with pytest.raises(IrisInputError, match="support draws"):
        ev.RefineEvalConfig(support_draws=0)


def test_support_draws_that_repeat_a_support_are_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    split, bank, checkpoint = _tiny_folders(tmp_path)
    pairs = ev.iter_eval_pairs
    monkeypatch.setattr(ev, "iter_eval_pairs", lambda *args, **kwargs: pairs(*args[:5], 0, **kwargs))  # one support
    three = ev.RefineEvalConfig(methods=("disc",), max_queries=2, max_clicks=2, support_draws=3)
    for task in ev.run(checkpoint, split, three, RefineConfig(), bank=bank, log=False)["tasks"]:
        assert len(task["draws"]) == 1 and task["queries"] == task["draws"][0]["queries"]
