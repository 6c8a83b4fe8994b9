"""Segmentation metrics on binary masks: overlap (Dice, IoU, precision, recall) and spacing-aware surface metrics.

Edge-case conventions (pred P, ground truth G):
- P and G both empty: dice = iou = precision = recall = surface_dice = 1, hd95 = 0 (a perfect "nothing").
- exactly one empty: dice = iou = surface_dice = 0, hd95 = inf (no surface to measure against; JSON
  reports write it as null, see `json_safe`).
- precision = TP / |P| and recall = TP / |G|; 0/0 is 1 when both masks are empty and 0 otherwise
  (empty prediction of a present structure: precision 0; prediction of an absent structure: recall 0).
Surfaces are the mask voxels with a background face-neighbour (voxels on the array border count as surface);
distances are Euclidean in mm using `spacing`. HD95 is the larger of the two directed 95th percentiles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from iris_engine.errors import IrisInputError


def _pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate two masks of the same shape and return them as bool."""
    p, g = np.asarray(pred).astype(bool, copy=False), np.asarray(gt).astype(bool, copy=False)
    if p.shape != g.shape:
        raise IrisInputError(f"prediction shape {p.shape} does not match ground truth shape {g.shape}")
    return p, g


def _ratio(num: int, den: int, both_empty: bool) -> float:
    """num/den with the module's 0/0 convention."""
    if den == 0:
        return 1.0 if both_empty else 0.0
    return num / den


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice coefficient 2|P&G| / (|P|+|G|); 1 when both are empty."""
    p, g = _pair(pred, gt)
    total = int(p.sum()) + int(g.sum())
    return 1.0 if total == 0 else 2.0 * int((p & g).sum()) / total


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Intersection over union; 1 when both are empty."""
    p, g = _pair(pred, gt)
    union = int((p | g).sum())
    return 1.0 if union == 0 else int((p & g).sum()) / union


def precision(pred: np.ndarray, gt: np.ndarray) -> float:
    """TP / |P|; 1 if both empty, 0 if only the prediction is empty."""
    p, g = _pair(pred, gt)
    return _ratio(int((p & g).sum()), int(p.sum()), not g.any())


def recall(pred: np.ndarray, gt: np.ndarray) -> float:
    """TP / |G|; 1 if both empty, 0 if only the ground truth is empty."""
    p, g = _pair(pred, gt)
    return _ratio(int((p & g).sum()), int(g.sum()), not p.any())


def _spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    """Validate spacing (defaults to 1 mm per axis)."""
    if spacing is None:
        return (1.0,) * ndim
    values = tuple(float(s) for s in spacing)
    if len(values) != ndim or any(not s > 0 or not math.isfinite(s) for s in values):
        raise IrisInputError(f"spacing {spacing} must give {ndim} positive finite values")
    return values


def _surface(mask: np.ndarray) -> np.ndarray:
    """Mask voxels with at least one background face-neighbour (or on the array border)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def _surface_distances(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each predicted surface voxel to the GT surface, and vice versa."""
    sp, sg = _surface(pred), _surface(gt)
    to_gt = ndimage.distance_transform_edt(~sg, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~sp, sampling=spacing)
    return to_gt[sp], to_pred[sg]


def hd95(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """95th-percentile symmetric Hausdorff distance in mm; 0 if both empty, inf if exactly one is empty."""
    p, g = _pair(pred, gt)
    if not p.any() and not g.any():
        return 0.0
    if not p.any() or not g.any():
        return math.inf
    d_pg, d_gp = _surface_distances(p, g, _spacing(spacing, p.ndim))
    return float(max(np.percentile(d_pg, 95), np.percentile(d_gp, 95)))


def surface_dice(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None = None, tolerance_mm: float = 1.0
) -> float:
    """Fraction of surface voxels (both masks) within `tolerance_mm` of the other surface; 1 if both empty."""
    p, g = _pair(pred, gt)
    if tolerance_mm < 0:
        raise IrisInputError(f"tolerance_mm must be >= 0, got {tolerance_mm}")
    if not p.any() and not g.any():
        return 1.0
    if not p.any() or not g.any():
        return 0.0
    d_pg, d_gp = _surface_distances(p, g, _spacing(spacing, p.ndim))
    within = int((d_pg <= tolerance_mm).sum()) + int((d_gp <= tolerance_mm).sum())
    return within / (d_pg.size + d_gp.size)


def compute_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float] | None,
    class_names: Sequence[str],
    tolerance_mm: float = 1.0,
) -> dict[str, dict[str, float]]:
    """All metrics for each class of (K, *S) boolean prediction and ground truth stacks."""
    p, g = _pair(pred, gt)
    if p.ndim < 3 or len(class_names) != p.shape[0]:
        raise IrisInputError(f"expected (K, *S) masks with K = {len(class_names)} classes, got shape {p.shape}")
    if len(set(class_names)) != len(class_names):
        raise IrisInputError(f"class names must be unique, got {list(class_names)}")
    sp = _spacing(spacing, p.ndim - 1)
    return {
        name: {
            "dice": dice(pk, gk),
            "iou": iou(pk, gk),
            "precision": precision(pk, gk),
            "recall": recall(pk, gk),
            "hd95": hd95(pk, gk, sp),
            "surface_dice": surface_dice(pk, gk, sp, tolerance_mm),
            "pred_voxels": float(pk.sum()),
            "gt_voxels": float(gk.sum()),
        }
        for name, pk, gk in zip(class_names, p, g, strict=True)
    }


def summarize_case(per_class: dict[str, dict[str, float]]) -> dict[str, float]:
    """Means over classes; mean hd95 uses finite values only and `hd95_infinite` counts the others."""
    if not per_class:
        raise IrisInputError("no classes to summarise")
    rows = list(per_class.values())
    summary = {
        f"mean_{key}": float(np.mean([r[key] for r in rows]))
        for key in ("dice", "iou", "precision", "recall", "surface_dice")
    }
    finite = [r["hd95"] for r in rows if math.isfinite(r["hd95"])]
    summary["mean_hd95"] = float(np.mean(finite)) if finite else math.inf
    summary["hd95_infinite"] = float(len(rows) - len(finite))
    summary["num_classes"] = float(len(rows))
    return summary


def json_safe(value: Any) -> Any:
    """Replace inf/NaN floats by None (JSON null), recursing into dicts and lists."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


BOOTSTRAP_RESAMPLES = 2000


def bootstrap_group_means(groups: Sequence[np.ndarray], rng: np.random.Generator,
                          resamples: int = BOOTSTRAP_RESAMPLES) -> np.ndarray:
    """Bootstrap distribution (resamples,) of the mean over groups of each group's mean, every group's values
    resampled with replacement (e.g. paired per-query differences, one group per class or support draw)."""
    return np.mean([g[rng.integers(0, len(g), (resamples, len(g)))].mean(axis=1) for g in groups], axis=0)


def interval(distribution: np.ndarray) -> tuple[float, float]:
    """Central 95 % interval of a bootstrap distribution."""
    low, high = np.percentile(distribution, [2.5, 97.5])
    return float(low), float(high)
