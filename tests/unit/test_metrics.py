"""Overlap and surface metrics: hand-computed values and edge-case conventions."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from iris_engine.errors import IrisInputError
from iris_engine.metrics import (
    compute_metrics,
    dice,
    hd95,
    iou,
    json_safe,
    precision,
    recall,
    summarize_case,
    surface_dice,
)


def _square(offset: int, shape: tuple[int, int] = (30, 30)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[5:15, 5 + offset : 15 + offset] = True
    return mask


def test_overlap_metrics_by_hand() -> None:
    pred, gt = _square(3), _square(0)  # 10x10 squares overlapping on 10x7
    assert dice(pred, gt) == pytest.approx(2 * 70 / 200)
    assert iou(pred, gt) == pytest.approx(70 / 130)
    assert precision(pred, gt) == pytest.approx(0.7) and recall(pred, gt) == pytest.approx(0.7)
    big = np.zeros((30, 30), bool)
    big[:, :] = True
    assert precision(big, gt) == pytest.approx(100 / 900) and recall(big, gt) == 1.0


def test_hd95_two_squares_shifted_3px_at_2mm() -> None:
    pred, gt = _square(3), _square(0)
    assert hd95(pred, gt, spacing=(2.0, 2.0)) == pytest.approx(6.0)
    assert hd95(pred, gt, spacing=(1.0, 2.0)) == pytest.approx(6.0)  # shift is along axis 1
    assert hd95(pred, gt, spacing=(2.0, 1.0)) == pytest.approx(3.0)
    assert hd95(gt, gt, spacing=(2.0, 2.0)) == 0.0


def test_surface_dice_tolerance() -> None:
    pred, gt = _square(3), _square(0)
    assert surface_dice(pred, gt, (2.0, 2.0), tolerance_mm=6.0) == 1.0
    partial = surface_dice(pred, gt, (2.0, 2.0), tolerance_mm=2.0)
    assert 0.0 < partial < 1.0
    assert surface_dice(gt, gt, (2.0, 2.0), tolerance_mm=0.0) == 1.0


def test_edge_cases_empty_masks() -> None:
    empty, full = np.zeros((6, 6, 4), bool), np.zeros((6, 6, 4), bool)
    full[1:3, 1:3, 1:3] = True
    assert (dice(empty, empty), iou(empty, empty), precision(empty, empty), recall(empty, empty)) == (1, 1, 1, 1)
    assert hd95(empty, empty) == 0.0 and surface_dice(empty, empty) == 1.0
    assert dice(empty, full) == 0.0 and iou(full, empty) == 0.0
    assert math.isinf(hd95(empty, full)) and math.isinf(hd95(full, empty))
    assert surface_dice(full, empty) == 0.0
    assert precision(empty, full) == 0.0 and recall(empty, full) == 0.0  # missed structure
    assert precision(full, empty) == 0.0 and recall(full, empty) == 0.0  # hallucinated structure
    with pytest.raises(IrisInputError):
        dice(empty, np.zeros((6, 6), bool))
    with pytest.raises(IrisInputError):
        hd95(full, full, spacing=(1.0, 1.0))


def test_compute_metrics_summary_and_json() -> None:
    gt = np.stack([_square(0), np.zeros((30, 30), bool)])
    pred = np.stack([_square(3), _square(0)])
    per_class = compute_metrics(pred, gt, (2.0, 2.0), ["organ", "absent"], tolerance_mm=2.0)
    assert per_class["organ"]["hd95"] == pytest.approx(6.0) and per_class["organ"]["gt_voxels"] == 100
    assert per_class["absent"]["dice"] == 0.0 and math.isinf(per_class["absent"]["hd95"])
    summary = summarize_case(per_class)
    assert summary["mean_dice"] == pytest.approx(0.35) and summary["mean_hd95"] == pytest.approx(6.0)
    assert summary["hd95_infinite"] == 1
    report = json.loads(json.dumps(json_safe({"classes": per_class, "summary": summary}), allow_nan=False))
    assert report["classes"]["absent"]["hd95"] is None
    with pytest.raises(IrisInputError):
        compute_metrics(pred, gt, (2.0, 2.0), ["only_one"])
