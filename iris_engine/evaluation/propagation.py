"""`iris evaluate-propagation`: paint k slices of a structure from its ground truth, propagate, score the rest.

On every 3D dataset with held-out (test) patients in the split, for each test volume and each structure in it:
k = 1 paints the middle slice of the structure's axial slice range, k = 3 the slices at 1/6, 1/2 and 5/6 of it.
The other slices of the range are scored with 3D Dice, side by side with two baselines computed here: copying
the nearest painted slice, and signed-distance interpolation between painted slices (Slicer's "fill between
slices"; beyond the outermost painted slice it copies that slice, so at k = 1 both baselines coincide). Voxels
predicted on slices outside the structure's range are reported as false-positive volume. Support and query
are always different slices of the same volume; painted slices are never scored. Training-only sets
(single-subject volumes) have no held-out patients and are not evaluated.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from iris_engine.checkpoint import load_checkpoint
from iris_engine.config import InferenceConfig
from iris_engine.data.catalog import dataset_info
from iris_engine.data.msd import MSDDataset
from iris_engine.data.shared_paths import shared_data_dir
from iris_engine.data.splits import Split, dev_split
from iris_engine.errors import IrisInputError
from iris_engine.inference import IrisSegmenter
from iris_engine.io.atomic import atomic_write
from iris_engine.io.readers import read_image
from iris_engine.io.volume import Volume
from iris_engine.metrics import json_safe
from iris_engine.preprocess import to_canonical

METHODS = ("propagation", "copy_nearest", "interpolation")
AXIS = 2  # canonical axial axis, the engine's default


@dataclass(frozen=True)
class PropagationEvalConfig:
    """Which paintings to score and how many structures at most (a fixed-seed subsample when set)."""

    ks: tuple[int, ...] = (1, 3)
    max_structures: int | None = None
    seed: int = 0
    threshold: float = 0.5
    fine_scale_thickness: float = InferenceConfig.fine_scale_thickness  # 0: every structure at the input size
    dev: bool = False  # TRAINING patients as the volumes (for choosing settings), never for reported numbers


def painted_indices(lo: int, hi: int, k: int) -> list[int]:
    """Slices to paint in the range lo..hi: the middle (k = 1), or 1/6, 1/2, 5/6 (k = 3), else evenly spread."""
    fractions = [0.5] if k == 1 else [1 / 6, 1 / 2, 5 / 6] if k == 3 else list(np.linspace(0, 1, k + 2)[1:-1])
    return sorted({lo + int(round(f * (hi - lo))) for f in fractions})


def _present(truth: np.ndarray, z: int) -> int:
    """The slice nearest z (along axis 2) that shows the structure (the range may have gaps)."""
    shown = np.flatnonzero(truth.reshape(-1, truth.shape[2]).any(0))
    return int(shown[np.argmin(np.abs(shown - z))])


def copy_nearest(truth: np.ndarray, painted: list[int]) -> np.ndarray:
    """Every slice gets the painted mask of the nearest painted slice (the lower one on ties)."""
    out = np.zeros_like(truth, dtype=bool)
    order = np.asarray(painted)
    for z in range(truth.shape[2]):
        out[:, :, z] = truth[:, :, int(order[np.argmin(np.abs(order - z))])]
    return out


def _signed_distance(mask: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
    """Negative inside, positive outside, in mm."""
    inside = ndimage.distance_transform_edt(mask, sampling=spacing)
    outside = ndimage.distance_transform_edt(~mask, sampling=spacing)
    return outside - inside


def interpolate_between(truth: np.ndarray, painted: list[int], spacing: tuple[float, float]) -> np.ndarray:
    """Signed-distance interpolation between consecutive painted slices; copy of the outermost one beyond them."""
    out = copy_nearest(truth, painted)
    for a, b in zip(painted[:-1], painted[1:], strict=True):
        first, second = _signed_distance(truth[:, :, a], spacing), _signed_distance(truth[:, :, b], spacing)
        for z in range(a + 1, b):
            t = (z - a) / (b - a)
            out[:, :, z] = (1 - t) * first + t * second < 0
    return out


def score(prediction: np.ndarray, truth: np.ndarray, lo: int, hi: int, painted: list[int], voxel_ml: float
          ) -> dict[str, float]:
    """3D Dice over the range's unpainted slices, and the volume predicted outside the range."""
    rest = np.zeros(truth.shape[2], dtype=bool)
    rest[lo: hi + 1] = True
    rest[painted] = False
    p, t = prediction[:, :, rest], truth[:, :, rest]
    total = int(p.sum() + t.sum())
    dice = 2.0 * float((p & t).sum()) / total if total else 1.0
    outside = np.ones(truth.shape[2], dtype=bool)
    outside[lo: hi + 1] = False
    fp = int(prediction[:, :, outside].sum())
    return {"dice": dice, "fp_ml": fp * voxel_ml, "fp_fraction": fp / max(1, int(truth.sum()))}


@dataclass(frozen=True)
class Structure:
    """One structure in one held-out volume."""

    dataset: str
    case_id: str
    class_name: str
    value: int


def evaluation_structures(root: Path, split: Split, datasets: list[str] | None) -> list[Structure]:
    """Every (test volume, structure) of the 3D datasets with held-out patients."""
    out = []
    for name in sorted(split.test_cases):
        info = dataset_info(name)
        if info.dims == 2 or not split.test_cases[name] or (datasets and name not in datasets):
            continue
        if not (root / name).is_dir():
            continue
        dataset = MSDDataset(root / name)
        for case_id in split.test_cases[name]:
            if not dataset.case(case_id).is_3d:
                continue
            _, labels, _ = dataset.load_case(case_id)
            for class_name, value in dataset.foreground_labels.items():
                if class_name not in info.ignore_labels and (labels == value).any():
                    out.append(Structure(name, case_id, class_name, value))
    return out


def load_structure(root: Path, structure: Structure) -> tuple[Volume, np.ndarray]:
    """The canonical volume (modality as the training slices were normalised) and its canonical label map."""
    dataset = MSDDataset(root / structure.dataset)
    case = dataset.case(structure.case_id)
    volume = read_image(case.image, modality="CT" if dataset_info(structure.dataset).hounsfield else "MR")
    _, labels, _ = dataset.load_case(structure.case_id)
    canonical, transform = to_canonical(volume)
    return canonical, transform.apply(labels)


def evaluate_structure(segmenter: IrisSegmenter, volume: Volume, labels: np.ndarray, structure: Structure,
                       ks: tuple[int, ...]) -> list[dict[str, Any]]:
    """Rows (one per k) with every method's Dice and false-positive volume."""
    truth = labels == structure.value
    shown = np.flatnonzero(truth.reshape(-1, truth.shape[2]).any(0))
    lo, hi = int(shown[0]), int(shown[-1])
    spacing = volume.spacing
    voxel_ml = float(np.prod(spacing)) / 1000.0
    rows = []
    for k in ks:
        painted = sorted({_present(truth, z) for z in painted_indices(lo, hi, k)})
        row: dict[str, Any] = {**asdict(structure), "k": k, "painted": painted, "range": [lo, hi],
                               "scored_slices": hi - lo + 1 - len(painted)}
        if row["scored_slices"] <= 0:
            row["note"] = "no unpainted slice in the structure's range"
            rows.append(row)
            continue
        paint = np.zeros(truth.shape, dtype=np.uint8)
        paint[:, :, painted] = truth[:, :, painted]
        start = time.perf_counter()
        result = segmenter.propagate(volume, paint, [structure.class_name])
        row["seconds"] = time.perf_counter() - start
        row["input_scale"] = result.input_scale
        predictions = {
            "propagation": result.masks[0],
            "copy_nearest": copy_nearest(truth, painted),
            "interpolation": interpolate_between(truth, painted, (spacing[0], spacing[1])),
        }
        for method, prediction in predictions.items():
            row[method] = score(prediction, truth, lo, hi, painted, voxel_ml)
        rows.append(row)
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per dataset and k: mean Dice and false-positive volume of each method over its structures."""
    per: dict[str, dict[str, Any]] = {}
    for row in rows:
        if "note" in row:
            continue
        entry = per.setdefault(f"{row['dataset']}|{row['k']}", {"dataset": row["dataset"], "k": row["k"], "n": 0,
                                                              **{m: {"dice": [], "fp_ml": []} for m in METHODS}})
        entry["n"] += 1
        for method in METHODS:
            entry[method]["dice"].append(row[method]["dice"])
            entry[method]["fp_ml"].append(row[method]["fp_ml"])
    table = []
    for entry in per.values():
        table.append({"dataset": entry["dataset"], "k": entry["k"], "n": entry["n"],
                      **{m: {"dice": float(np.mean(entry[m]["dice"])), "fp_ml": float(np.mean(entry[m]["fp_ml"]))}
                         for m in METHODS}})
    table.sort(key=lambda e: (e["k"], e["dataset"]))
    overall = {}
    for k in sorted({e["k"] for e in table}):
        rows_k = [e for e in table if e["k"] == k]
        means = {m: float(np.mean([e[m]["dice"] for e in rows_k])) for m in METHODS}
        best = max(means["copy_nearest"], means["interpolation"])
        overall[str(k)] = {**means, "margin_over_best_baseline": means["propagation"] - best,
                           "beats_copy_on_every_dataset": all(e["propagation"]["dice"] > e["copy_nearest"]["dice"]
                                                               for e in rows_k)}
    return {"per_dataset": table, "overall": overall}


def render_markdown(payload: dict[str, Any]) -> str:
    """The report: summary per dataset and k, the mean over datasets, then every structure."""
    summary = payload["summary"]
    lines = [
        "# Within-volume propagation: paint k slices, propagate, score the rest",
        "",
        f"- checkpoint: `{payload['checkpoint']}` (model version `{payload['model_version']}`); split seed "
        f"{payload['split_seed']} (fingerprint `{payload['split_fingerprint']}`), "
        + ("TRAINING patients (`--dev`: for choosing settings, not a result)" if payload["config"].get("dev")
           else "held-out (test) patients only"),
        f"- structures whose painted slices are all thinner than {payload['config'].get('fine_scale_thickness', 0)} "
        "model-grid pixels are read at twice the model's input size (`iris_engine.input_scale`; 0 = never): "
        f"{sum(r.get('input_scale', 1) > 1 for r in payload['rows'])} of {len(payload['rows'])} propagations",
        "- k = 1 paints the middle slice of each structure's axial range, k = 3 the slices at 1/6, 1/2, 5/6 (the "
        "nearest slice showing the structure where the range has gaps); 3D Dice over the range's other slices",
        "- baselines: copy of the nearest painted slice; signed-distance interpolation between painted slices "
        "(copy of the outermost painted slice beyond them: at k = 1 it equals the copy)",
        "- FP mL: volume predicted on slices outside the structure's range (the copy baselines fill every slice)",
        f"- structures: {payload['structures']} (volume, structure) pairs"
        + (f", a fixed-seed subsample (seed {payload['config']['seed']})" if payload["subsampled"] else ", all")
        + "; training-only single-subject sets have no held-out patients and are not evaluated",
        f"- evaluation time: {payload['seconds']} s",
        "",
        "| dataset | k | structures | propagation Dice | copy nearest | interpolation | propagation − best baseline "
        "| FP mL propagation | FP mL copy | FP mL interpolation |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in summary["per_dataset"]:
        best = max(e["copy_nearest"]["dice"], e["interpolation"]["dice"])
        lines.append(
            f"| {e['dataset']} | {e['k']} | {e['n']} | {e['propagation']['dice']:.3f} | "
            f"{e['copy_nearest']['dice']:.3f} | {e['interpolation']['dice']:.3f} | "
            f"{e['propagation']['dice'] - best:+.3f} | {e['propagation']['fp_ml']:.1f} | "
            f"{e['copy_nearest']['fp_ml']:.1f} | {e['interpolation']['fp_ml']:.1f} |")
    lines += ["", "Mean over datasets (each dataset weighted equally):", "",
              "| k | propagation | copy nearest | interpolation | propagation − best baseline "
              "| beats copy on every dataset |", "|---|---|---|---|---|---|"]
    for k, o in summary["overall"].items():
        lines.append(f"| {k} | {o['propagation']:.3f} | {o['copy_nearest']:.3f} | {o['interpolation']:.3f} | "
                     f"{o['margin_over_best_baseline']:+.3f} | {'yes' if o['beats_copy_on_every_dataset'] else 'no'} |")
    lines += ["", "## Per structure type (mean over the test volumes that show it)", "",
              "| dataset | structure | class used in training | k | volumes | propagation | copy | interpolation |",
              "|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for row in payload["rows"]:
        if "note" not in row:
            groups.setdefault((row["dataset"], row["class_name"], row["k"]), []).append(row)
    for (dataset, class_name, k), members in sorted(groups.items(), key=lambda item: (item[0][2], item[0][:2])):
        means = [float(np.mean([m[method]["dice"] for m in members])) for method in METHODS]
        trained = "yes" if members[0].get("class_in_training", True) else "no (held-out class)"
        lines.append(f"| {dataset} | {class_name} | {trained} | {k} | {len(members)} | "
                     + " | ".join(f"{v:.3f}" for v in means) + " |")
    lines += ["", "## Per structure", "", "| dataset | case | structure | k | painted | range | propagation "
              "| copy | interpolation | FP mL propagation | seconds | input scale |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in payload["rows"]:
        if "note" in row:
            lines.append(f"| {row['dataset']} | {row['case_id']} | {row['class_name']} | {row['k']} | "
                         f"{row['painted']} | {row['range']} | {row['note']} | | | | | |")
            continue
        lines.append(f"| {row['dataset']} | {row['case_id']} | {row['class_name']} | {row['k']} | {row['painted']} "
                     f"| {row['range']} | {row['propagation']['dice']:.3f} | {row['copy_nearest']['dice']:.3f} | "
                     f"{row['interpolation']['dice']:.3f} | {row['propagation']['fp_ml']:.1f} | "
                     f"{row['seconds']:.1f} | {row.get('input_scale', 1)}x |")
    return "\n".join(lines) + "\n"


def run_propagation_evaluation(checkpoint: Path, split: Split, out: Path, config: PropagationEvalConfig,
                               data_root: Path | None = None, datasets: list[str] | None = None) -> dict[str, Any]:
    """Evaluate one checkpoint; writes propagation.md and propagation.json into `out`."""
    root = data_root or shared_data_dir()
    if root is None:
        raise IrisInputError("shared data not found: set IRIS_SHARED_DATA or pass --data-root")
    loaded = load_checkpoint(checkpoint)
    segmenter = IrisSegmenter(loaded.model, loaded.memory_bank, InferenceConfig(
        threshold=config.threshold, fine_scale_thickness=config.fine_scale_thickness))
    structures = evaluation_structures(Path(root), dev_split(split) if config.dev else split, datasets)
    if not structures:
        raise IrisInputError("no 3D dataset with held-out patients found")
    subsampled = config.max_structures is not None and len(structures) > config.max_structures
    if subsampled:
        pick = np.random.default_rng(config.seed).choice(len(structures), config.max_structures, replace=False)
        structures = [structures[i] for i in sorted(pick)]
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    cache: tuple[tuple[str, str], tuple[Volume, np.ndarray]] | None = None
    for index, structure in enumerate(structures):
        key = (structure.dataset, structure.case_id)
        if cache is None or cache[0] != key:
            cache = (key, load_structure(Path(root), structure))
        volume, labels = cache[1]
        for row in evaluate_structure(segmenter, volume, labels, structure, config.ks):
            rows.append({**row, "class_in_training": split.is_train_class(structure.dataset, structure.class_name)})
        done = [r for r in rows[-len(config.ks):] if "note" not in r]
        print(f"[{index + 1}/{len(structures)}] {structure.dataset}/{structure.case_id}/{structure.class_name}: "
              + ", ".join(f"k={r['k']} {r['propagation']['dice']:.3f} (copy {r['copy_nearest']['dice']:.3f}, "
                          f"interp {r['interpolation']['dice']:.3f})" for r in done), flush=True)
    payload = {
        "checkpoint": str(checkpoint), "model_version": loaded.model.version, "split_seed": split.seed,
        "split_fingerprint": split.fingerprint(), "config": asdict(config), "structures": len(structures),
        "subsampled": subsampled, "seconds": round(time.perf_counter() - start, 1), "rows": rows,
        "summary": summarise(rows),
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "propagation.md", lambda tmp: tmp.write_text(render_markdown(payload), encoding="utf-8"))
    atomic_write(out / "propagation.json",
                 lambda tmp: tmp.write_text(json.dumps(json_safe(payload), indent=2), encoding="utf-8"))
    return payload


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iris evaluate-propagation", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("assets/weights/iris2d.pt"))
    parser.add_argument("--split", type=Path, default=None, help="split JSON (default: split.json beside the weights)")
    parser.add_argument("--data-root", type=Path, default=None, help="default: $IRIS_SHARED_DATA or ../shared/data")
    parser.add_argument("--datasets", nargs="*", default=None, help="default: every 3D dataset with test patients")
    parser.add_argument("--out", type=Path, default=Path("runs/propagation"))
    parser.add_argument("--ks", type=int, nargs="+", default=list(PropagationEvalConfig.ks))
    parser.add_argument("--max-structures", type=int, default=None,
                        help="evaluate a fixed-seed random subset of the (volume, structure) pairs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    parser.add_argument("--fine-scale-thickness", type=float, default=PropagationEvalConfig.fine_scale_thickness,
                        help="structures thinner than this (model-grid px) in their painted slices are read at 2x; "
                             "0 = never")
    parser.add_argument("--dev", action="store_true",
                        help="run on TRAINING patients (for choosing settings), never for reported numbers")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if any(k < 1 for k in args.ks):
        raise IrisInputError(f"--ks must be positive, got {args.ks}")
    split_path = args.split or args.checkpoint.parent / "split.json"
    if not split_path.is_file():
        raise IrisInputError(f"split file {split_path} not found (give --split)")
    config = PropagationEvalConfig(ks=tuple(args.ks), max_structures=args.max_structures, seed=args.seed,
                                   fine_scale_thickness=args.fine_scale_thickness, dev=args.dev)
    payload = run_propagation_evaluation(args.checkpoint, Split.load(split_path), args.out, config, args.data_root,
                                         args.datasets)
    overall = payload["summary"]["overall"]
    print(json.dumps({"report": str(args.out / "propagation.md"), "seconds": payload["seconds"],
                      "overall": {k: {m: round(v, 3) for m, v in o.items() if isinstance(v, float)}
                                  for k, o in overall.items()}}))
    return 0 if all(not math.isnan(o["propagation"]) for o in overall.values()) else 1
