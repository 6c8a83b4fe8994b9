"""Support = query sanity check: asked to segment its own support image, a model that reads its context
returns the support's mask. Never an accuracy figure; the cheapest proof that the model follows the support.

For every labelled structure of every dataset, a few slices showing it (seeded draws) are used as support AND
query at their original resolution: the image is normalised and resized to the model's input as at inference,
the probabilities are resized back, and Dice is taken against the original mask. Thin structures run at twice
the model's input size, as at inference (`iris_engine.input_scale`). The ceiling beside it is the Dice of the
mask itself resized to the input size used and back (what no model at that input size can beat).

The headline Dice is taken without the engine's support calibration (`iris_engine.calibration`): here the
support is the query, so a threshold fitted on the support would be fitted on the answer. The calibrated Dice is
reported beside it.
"""

from __future__ import annotations

import argparse
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from iris_engine import strategies
from iris_engine.calibration import CalibrationConfig, apply_offsets, support_offsets
from iris_engine.checkpoint import load_checkpoint
from iris_engine.config import InferenceConfig
from iris_engine.data.catalog import dataset_info, default_datasets
from iris_engine.data.msd import MSDDataset
from iris_engine.data.shared_paths import shared_data_dir
from iris_engine.data.slices import normalise_intensities, resize_images, resize_labels
from iris_engine.errors import IrisInputError
from iris_engine.input_scale import choose_input_scale
from iris_engine.model.iris import IrisModel


@dataclass(frozen=True)
class SanityConfig:
    """How many slices per structure and how small a structure may be."""

    draws: int = 3
    min_area: int = 16
    threshold: float = 0.5
    fine_scale_thickness: float = InferenceConfig.fine_scale_thickness
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)


@dataclass
class SliceSample:
    """One 2D slice at original resolution: normalised image and label map."""

    image: np.ndarray
    labels: np.ndarray


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = float(a.sum() + b.sum())
    return 2.0 * float((a & b).sum()) / total if total else 1.0


def _back_to_original(x: torch.Tensor, shape: tuple[int, int]) -> np.ndarray:
    """(S, S) model-grid values -> bilinear resize to the original slice shape."""
    return F.interpolate(x[None, None].float(), size=shape, mode="bilinear", align_corners=False)[0, 0].numpy()


def resize_ceiling(truth: np.ndarray, size: int) -> float:
    """Dice of a mask with itself resized to size x size (as the model input) and back."""
    small = torch.from_numpy(resize_labels(truth[None].astype(np.uint8), size) > 0)
    return _dice(_back_to_original(small[0], truth.shape) >= 0.5, truth)


def support_equals_query(model: IrisModel, sample: SliceSample, value: int, config: SanityConfig
                         ) -> tuple[float, float, float, int]:
    """(one-shot Dice without and with the support calibration, resize ceiling, input scale) of one structure of
    one slice used as its own support."""
    size = model.config.image_size
    truth = sample.labels == value
    mask_small = torch.from_numpy(resize_labels(truth[None].astype(np.uint8), size) > 0)
    if not mask_small.any() or mask_small.all():
        return float("nan"), float("nan"), resize_ceiling(truth, size), 1
    scale = choose_input_scale(mask_small[:, None].float(), config.fine_scale_thickness)
    size *= scale
    image = torch.from_numpy(resize_images(sample.image[None], size))[:, None]
    mask = torch.from_numpy(resize_labels(truth[None].astype(np.uint8), size) > 0)
    embedding = strategies.encode_supports(model, image, mask[:, None].float(), calibration=None)
    probabilities = strategies.predict_probabilities(model, image, embedding)
    calibrated = probabilities
    if scale > 1:  # the engine calibrates 2x reads on the support's own segmentation: here this very one
        calibrated = apply_offsets(probabilities, support_offsets(probabilities, mask[:, None], config.calibration))
    plain, fitted = (_dice(_back_to_original(p[0, 0], truth.shape) >= config.threshold, truth)
                     for p in (probabilities, calibrated))
    return plain, fitted, resize_ceiling(truth, size), scale


def _dataset_slices(ds: MSDDataset, value: int, min_area: int, draws: int, seed: int) -> list[SliceSample]:
    """Up to `draws` slices of distinct cases (or of one volume) where label `value` covers >= min_area pixels."""
    info = dataset_info(ds.name)
    rng = np.random.default_rng([seed, zlib.crc32(f"{ds.name}/{value}".encode())])
    samples: list[SliceSample] = []
    for case_id in [ds.case_ids[i] for i in rng.permutation(len(ds.case_ids))]:
        image, label, _ = ds.load_case(case_id)
        image = normalise_intensities(image, hounsfield=info.hounsfield)
        if image.ndim == 2:
            candidates = [(image, label)] if (label == value).sum() >= min_area else []
        else:
            areas = (label == value).sum(axis=(0, 1))
            rows = np.flatnonzero(areas >= min_area)
            picked = rng.choice(rows, min(len(rows), draws - len(samples)), replace=False) if len(rows) else []
            candidates = [(image[:, :, z], label[:, :, z]) for z in picked]
        samples += [SliceSample(np.asarray(i, np.float32), np.asarray(lab)) for i, lab in candidates]
        if len(samples) >= draws:
            break
    return samples[:draws]


def run_sanity(
    model: IrisModel, root: Path, datasets: tuple[str, ...], config: SanityConfig, seed: int = 0,
    max_classes: int | None = None,
) -> list[dict[str, Any]]:
    """One row per (dataset, structure): mean one-shot Dice with support = query, and the resize ceiling."""
    model.eval()
    rows = []
    for name in datasets:
        ds = MSDDataset(root / name)
        ignore = set(dataset_info(name).ignore_labels)
        classes = [(c, v) for c, v in sorted(ds.foreground_labels.items(), key=lambda kv: kv[1]) if c not in ignore]
        if max_classes is not None:
            rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
            classes = [classes[i] for i in sorted(rng.permutation(len(classes))[:max_classes])]
        for class_name, value in classes:
            samples = _dataset_slices(ds, value, config.min_area, config.draws, seed)
            scores = [support_equals_query(model, s, value, config) for s in samples]
            scores = [s for s in scores if np.isfinite(s[0])]
            if not scores:
                continue
            rows.append({
                "dataset": name, "class_name": class_name, "slices": len(scores),
                "dice": float(np.mean([s[0] for s in scores])),
                "dice_calibrated": float(np.mean([s[1] for s in scores])),
                "ceiling": float(np.mean([s[2] for s in scores])),
                "fine_scale_slices": sum(s[3] > 1 for s in scores),
                "ceiling_2x": float(np.mean([resize_ceiling(s.labels == value, 2 * model.config.image_size)
                                             for s in samples])),
            })
    return rows


def render_markdown(rows: list[dict[str, Any]], checkpoint: str) -> str:
    """Summary line plus one table row per structure."""
    dice = np.array([r["dice"] for r in rows])
    calibrated = np.array([r["dice_calibrated"] for r in rows])
    ceiling = np.array([r["ceiling"] for r in rows])
    below = [r for r in rows if r["dice"] < min(0.8, r["ceiling"])]
    lines = [
        f"# Support = query sanity check (`{checkpoint}`)",
        "",
        "Each structure's own slice is its support and its query (never an accuracy figure). Dice at the original "
        "resolution; ceiling = the mask resized to the input size used and back (and at twice the model's input "
        "size); slices at 2x = slices of a thin structure segmented at twice the model's input size. Dice is "
        "taken without the support calibration of 2x reads (here it would fit its threshold on the answer); "
        "calibrated = with it, as the engine segments other images.",
        "",
        f"- structures: {len(rows)}; mean Dice {dice.mean():.3f} (calibrated {calibrated.mean():.3f}; mean ceiling "
        f"{ceiling.mean():.3f}); below min(0.80, ceiling): {len(below)}; run at 2x: "
        f"{sum(r['fine_scale_slices'] > 0 for r in rows)}",
        "",
        "| dataset | structure | slices | slices at 2x | Dice | calibrated | ceiling | ceiling at 2x the input size |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['dataset']} | {r['class_name']} | {r['slices']} | {r['fine_scale_slices']} | {r['dice']:.3f} | "
              f"{r['dice_calibrated']:.3f} | {r['ceiling']:.3f} | {r['ceiling_2x']:.3f} |" for r in rows]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iris sanity", description="Support = query check over every structure.")
    parser.add_argument("--checkpoint", type=Path, default=Path("assets/weights/iris2d.pt"))
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--datasets", nargs="*", default=None)
    parser.add_argument("--draws", type=int, default=SanityConfig.draws)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/sanity"))
    parser.add_argument("--threads", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = build_parser().parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    root = args.data_root or shared_data_dir()
    if root is None:
        raise IrisInputError("shared data not found: pass --data-root or set IRIS_SHARED_DATA")
    model = load_checkpoint(args.checkpoint).model
    datasets = tuple(args.datasets) if args.datasets else default_datasets()
    rows = run_sanity(model, Path(root), datasets, SanityConfig(draws=args.draws), seed=args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sanity.json").write_text(json.dumps(rows, indent=2))
    (args.out / "sanity.md").write_text(render_markdown(rows, str(args.checkpoint)))
    print(render_markdown(rows, str(args.checkpoint)).split("\n")[4], flush=True)
    return rows
