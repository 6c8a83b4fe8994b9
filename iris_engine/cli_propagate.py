"""`iris propagate`: fill a volume's unpainted slices from a partial label map painted on a few of its slices."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from iris_engine.config import InferenceConfig
from iris_engine.errors import IrisInputError
from iris_engine.inference import IrisSegmenter
from iris_engine.io.atomic import atomic_write
from iris_engine.io.readers import read_image, read_mask
from iris_engine.io.writers import write_dicom_seg, write_mask
from iris_engine.propagation import VIEW_AXES

DEFAULT_WEIGHTS = Path(__file__).resolve().parents[1] / "assets" / "weights" / "iris2d.pt"
MASK_SUFFIXES = (".nii.gz", ".nii", ".npy", ".dcm")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="iris propagate",
        description="Segment every slice of VOLUME from the slices painted in PARTIAL_LABELS (a label map of the "
        "volume's shape, value k = k-th --class, 0 elsewhere). Each painted slice counts as complete: what is "
        "painted on it comes back unchanged and a class not painted on it is absent there. The output is a label "
        "map with the input's geometry (NIfTI/.npy by suffix; .dcm writes DICOM-SEG for a DICOM input), plus "
        "OUT's name with .labels.json naming the values.",
    )
    parser.add_argument("--input", required=True, type=Path, metavar="VOLUME", help="NIfTI, NumPy or DICOM volume")
    parser.add_argument("--painted", required=True, type=Path, metavar="PARTIAL_LABELS",
                        help="label map painted on a few slices (same shape as VOLUME)")
    parser.add_argument("--output", required=True, type=Path, metavar="OUT",
                        help=f"output file ({', '.join(MASK_SUFFIXES)})")
    parser.add_argument("--class", dest="classes", action="append", default=[], metavar="NAME",
                        help="class name of label value k (the k-th --class); default class_1..class_K")
    parser.add_argument("--axis", choices=tuple(VIEW_AXES), default="axial",
                        help="the view the slices were painted in (default: %(default)s)")
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="model checkpoint (default: %(default)s)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threshold", type=float, default=InferenceConfig.threshold)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch default)")
    return parser


def _output_kind(path: Path) -> str:
    name = path.name.lower()
    for suffix in MASK_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise IrisInputError(f"--output {path}: use one of {', '.join(MASK_SUFFIXES)}")


def main(argv: list[str] | None = None) -> int:
    """Read, validate, propagate, write; bad input raises IrisInputError before anything is written."""
    args = build_parser().parse_args(argv)
    kind = _output_kind(args.output)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise IrisInputError("--device cuda was asked for but no CUDA device is available")
    volume = read_image(args.input)
    painted = read_mask(args.painted, reference=volume)
    if kind == ".dcm" and not volume.metadata.get("dicom_datasets"):
        raise IrisInputError("DICOM-SEG output needs a DICOM input; write .nii.gz instead")
    top = int(painted.max())
    names = args.classes or [f"class_{k + 1}" for k in range(top)]
    start = time.perf_counter()
    segmenter = IrisSegmenter.from_checkpoint(args.weights, InferenceConfig(device=args.device,
                                                                             threshold=args.threshold))
    result = segmenter.propagate(volume, painted, names, axis=args.axis)
    if kind == ".dcm":
        write_dicom_seg(result.masks, volume, names, args.output)
    else:
        write_mask(result.label_map(), volume, args.output)
    labels = json.dumps({str(k + 1): n for k, n in enumerate(names)}, indent=2)
    atomic_write(args.output.with_name(args.output.name + ".labels.json"), lambda tmp: tmp.write_text(labels))
    voxels = ", ".join(f"{n}={int(m.sum())}" for n, m in zip(names, result.masks, strict=True))
    print(f"propagated {len(names)} class(es) from painted {result.axis} slices {result.painted_slices} in "
          f"{time.perf_counter() - start:.1f} s ({result.recomputed_slices} slices segmented at "
          f"{result.input_scale}x the model's input size; model {result.model_version}): {voxels} voxels; "
          f"wrote {args.output}")
    return 0
