"""Evaluation harness: honesty rules (supports and queries from different patients), baselines, report files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from iris_engine.checkpoint import save_checkpoint
from iris_engine.config import ModelConfig
from iris_engine.data.slices import build_slice_bank
from iris_engine.data.splits import make_split
from iris_engine.evaluation.baselines import copy_support_mask, intensity_nearest_neighbour
from iris_engine.evaluation.harness import GROUP_CLASS, GROUP_SEEN, EvalConfig, run_evaluation
from iris_engine.evaluation.report import baseline_margins, render_markdown, write_report
from iris_engine.memory_bank import MemoryBank
from iris_engine.model.iris import IrisModel
from tests.unit.test_data_msd_split_bank import _write_msd

TINY = ModelConfig(encoder_channels=(8, 16, 32), image_size=32, decoder_channels=8, num_heads=2,
                   task_encoder_layers=1, decoder_layers=1)


def test_copy_support_baseline_is_the_support_majority() -> None:
    masks = torch.zeros(3, 1, 8, 8)
    masks[:2, 0, :4] = 1
    masks[2, 0, 4:] = 1
    assert torch.equal(copy_support_mask(masks)[0], masks[0, 0].bool())


def test_intensity_knn_segments_an_easy_bright_square() -> None:
    def image(offset: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = torch.zeros(1, 32, 32)
        mask = torch.zeros(1, 32, 32)
        img[0, offset:offset + 10, offset:offset + 10] = 3.0
        mask[0, offset:offset + 10, offset:offset + 10] = 1
        return img + 0.05 * torch.randn(1, 32, 32, generator=torch.Generator().manual_seed(offset)), mask

    support, support_mask = image(4)
    query, query_mask = image(15)
    pred = intensity_nearest_neighbour(support[None], support_mask[None], query)[0]
    truth = query_mask[0].bool()
    dice = 2 * (pred & truth).sum() / (pred.sum() + truth.sum())
    assert dice > 0.8


def test_harness_keeps_supports_and_queries_apart_and_writes_reports(tmp_path: Path) -> None:
    _write_msd(tmp_path, "toy2d", 8, False, {"disc": 1, "ring": 2}, seed=1)
    _write_msd(tmp_path, "toy3d", 8, True, {"organ_a": 1, "organ_b": 2}, seed=2)
    datasets = ("toy2d", "toy3d")
    split = make_split(0, held_out_fraction=0.5, held_out_datasets=(), held_out_classes=(("toy3d", "organ_b"),),
                       datasets=datasets, root=tmp_path)
    bank = build_slice_bank(datasets=datasets, root=tmp_path, size=32, cache_dir=None)
    memory = MemoryBank()
    memory.update("toy2d/disc", torch.randn(TINY.num_task_tokens, TINY.embed_dim))
    checkpoint = save_checkpoint(tmp_path / "model.pt", IrisModel(TINY), memory)
    config = EvalConfig(seeds=(0, 1), max_queries=4, ensemble_sizes=(2,), tuning_steps=2)

    payload = run_evaluation(checkpoint, tmp_path / "report", split, config, bank)

    tasks = {(t["dataset"], t["class_name"]): t for t in payload["tasks"]}
    assert tasks[("toy3d", "organ_b")]["group"] == GROUP_CLASS
    assert tasks[("toy2d", "disc")]["group"] == GROUP_SEEN
    for task in payload["tasks"]:
        assert task["query_patients"], task
        train_patients = {split.patient_of(task["dataset"], c) for c in split.train_cases[task["dataset"]]}
        assert not set(task["query_patients"]) & train_patients
        for strategy, draws in task["support_patients"].items():
            for supports in draws:
                assert not set(supports) & set(task["query_patients"]), (task["dataset"], strategy)
        for name in ("one_shot", "context_ensemble_k2", "in_context_tuning", "baseline_copy_support",
                     "baseline_intensity_knn"):
            assert len(task["dice"][name]) == 2
            assert all(0.0 <= d <= 1.0 for d in task["dice"][name])
            for mean, per_case in zip(task["dice"][name], task["case_dice"][name], strict=True):
                assert np.isclose(mean, np.mean(list(per_case.values())))
                assert {split.patient_of(task["dataset"], c) for c in per_case} <= set(task["query_patients"])
    assert "memory_bank" in tasks[("toy2d", "disc")]["dice"]
    assert "memory_bank" not in tasks[("toy2d", "ring")]["dice"]
    assert tasks[("toy3d", "organ_a")]["hd95"]
    assert {row["dataset"] for row in payload["context_sensitivity"]} <= set(datasets)

    report = tmp_path / "report"
    loaded = json.loads((report / "report.json").read_text())
    assert loaded["split_fingerprint"] == split.fingerprint()
    assert loaded["support_calibration"]["enabled"]
    markdown = (report / "report.md").read_text()
    assert "baseline_intensity_knn" in markdown and "Context sensitivity" in markdown
    assert "calibrated on the support" in markdown
    assert "## One-shot against the better non-learned baseline" in markdown
    assert (report / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_writes_nan_as_null_and_na(tmp_path: Path) -> None:
    payload = {
        "checkpoint": "x.pt", "model_version": "v", "split_seed": 0, "split_fingerprint": "f",
        "held_out_datasets": [], "held_out_classes": [], "seconds": 1.0,
        "config": {"seeds": [0], "max_queries": 1, "tuning_steps": 1},
        "tasks": [{"group": GROUP_SEEN, "dataset": "d", "class_name": "c", "dice": {"one_shot": [0.5, 0.7]},
                   "hd95": {"one_shot": [float("nan")]}, "query_patients": ["p"], "notes": []}],
        "context_sensitivity": [],
    }
    paths = write_report(payload, tmp_path)
    assert "0.600 ± 0.100" in render_markdown(payload)
    assert json.loads(paths["json"].read_text())["tasks"][0]["hd95"]["one_shot"] == [None]
    assert np.isclose(json.loads(paths["json"].read_text())["summary"][GROUP_SEEN]["one_shot"], 0.6)


def _margin_task(one_shot: list[dict[str, float]], copy: list[dict[str, float]],
                 knn: list[dict[str, float]]) -> dict:
    def mean(draws: list[dict[str, float]]) -> list[float]:
        return [float(np.mean(list(d.values()))) for d in draws]

    return {"group": GROUP_CLASS, "dataset": "d", "class_name": "c",
            "dice": {"one_shot": mean(one_shot), "baseline_copy_support": mean(copy),
                     "baseline_intensity_knn": mean(knn)},
            "case_dice": {"one_shot": one_shot, "baseline_copy_support": copy, "baseline_intensity_knn": knn}}


def test_one_shot_margin_is_paired_against_the_better_baseline_with_a_case_bootstrap_interval() -> None:
    rng = np.random.default_rng(0)
    cases = [f"case{i}" for i in range(8)]
    base = [{c: float(v) for c, v in zip(cases, rng.uniform(0.2, 0.6, 8), strict=True)} for _ in range(3)]
    worse = [{c: v - 0.1 for c, v in draw.items()} for draw in base]
    shifted = [{c: v + 0.2 for c, v in draw.items()} for draw in base]
    (exact,) = baseline_margins({"tasks": [_margin_task(shifted, worse, base)]})
    assert exact["baseline"] == "baseline_intensity_knn" and exact["cases"] == 8
    assert np.allclose([exact["margin"], exact["low"], exact["high"]], 0.2)
    noisy = [{c: v + 0.2 + float(rng.normal(0, 0.1)) for c, v in draw.items()} for draw in base]
    (row,) = baseline_margins({"tasks": [_margin_task(noisy, base, worse)]})
    assert row["baseline"] == "baseline_copy_support" and row["low"] < row["margin"] < row["high"]
    assert row["high"] - row["low"] > 0.02 and 0.1 < row["margin"] < 0.3
    assert baseline_margins({"tasks": [{**_margin_task(noisy, base, worse), "case_dice": {}}]}) == []
