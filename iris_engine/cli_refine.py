"""`iris refine`: correct a segmentation with clicks or scribbles read from a file (scripted refinement)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from iris_engine.cli import read_supports, resolve_classes
from iris_engine.config import InferenceConfig
from iris_engine.errors import IrisInputError
from iris_engine.inference import IrisSegmenter, Support, VolumeSegmentation
from iris_engine.io.readers import read_image, read_mask
from iris_engine.io.volume import Volume
from iris_engine.io.writers import write_mask
from iris_engine.refinement import METHODS, Click, RefineConfig, clicks_from_label_map, scribble

DEFAULT_WEIGHTS = Path(__file__).resolve().parents[1] / "assets" / "weights" / "iris2d.pt"
CLICK_FILE_HELP = (
    'JSON {"clicks": [{"position": [row, col] or [i, j, k], "positive": true, "class": "liver"}], '
    '"scribbles": [{"points": [[...], [...]], "positive": false, "class": "liver"}]} with voxel indices of '
    "INPUT's array, or a label map of INPUT's shape (NIfTI, PNG, .npy): 1 = positive, 2 = negative"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="iris refine",
        description="Segment INPUT (from --support pairs) or take an existing mask (--mask), correct it with the "
        "clicks and scribbles of --clicks, and write the refined label map with INPUT's geometry.",
    )
    parser.add_argument("--input", required=True, type=Path, metavar="IMAGE", help="image or volume to refine")
    parser.add_argument("--clicks", required=True, type=Path, metavar="FILE", help=CLICK_FILE_HELP)
    parser.add_argument("--output", required=True, type=Path, metavar="MASK", help="refined label map (.nii.gz, "
                        ".nii, .png, .npy)")
    start = parser.add_mutually_exclusive_group(required=True)
    start.add_argument("--support", nargs=2, action="append", metavar=("IMAGE", "MASK"),
                       help="reference image and its label map: the prediction to refine is segmented first")
    start.add_argument("--mask", type=Path, metavar="LABELS", help="an existing label map of INPUT to refine")
    parser.add_argument("--class", dest="classes", action="append", default=[], metavar="NAME",
                        help="class name of label value k (the k-th --class); default class_1..class_K")
    parser.add_argument("--click-class", default=None, metavar="NAME",
                        help="class of the clicks in a label-map click file (needed with several classes)")
    parser.add_argument("--method", choices=METHODS, default=None,
                        help=f"default: {RefineConfig.method} (tuning and combined need --support: a --mask has no "
                        "task embedding)")
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="model checkpoint (default: %(default)s)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threshold", type=float, default=InferenceConfig.threshold)
    return parser


def _int_list(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, int) and not isinstance(v, bool)
                                                          for v in value):
        raise IrisInputError(f"{what} must be a list of integer voxel indices, got {value!r}")
    return tuple(value)


def clicks_from_json(data: Any) -> list[Click]:
    """Clicks and scribbles of a click file's JSON object."""
    if not isinstance(data, dict) or not set(data) <= {"clicks", "scribbles"}:
        raise IrisInputError('a click file holds an object with "clicks" and/or "scribbles" lists')
    clicks: list[Click] = []
    for item in data.get("clicks", []):
        if not isinstance(item, dict) or "position" not in item:
            raise IrisInputError(f'each click needs a "position", got {item!r}')
        clicks.append(Click(_int_list(item["position"], "a click position"), bool(item.get("positive", True)),
                            item.get("class")))
    for item in data.get("scribbles", []):
        if not isinstance(item, dict) or not isinstance(item.get("points"), list):
            raise IrisInputError(f'each scribble needs "points", got {item!r}')
        points = [_int_list(p, "a scribble point") for p in item["points"]]
        clicks += scribble(points, bool(item.get("positive", True)), item.get("class"))
    return clicks


def read_clicks(path: Path, volume: Volume, click_class: str | None) -> list[Click]:
    """Clicks from a JSON click file or a sparse click label map of the input's shape."""
    if not path.is_file():
        raise IrisInputError(f"click file {path} does not exist")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise IrisInputError(f"{path}: not valid JSON ({error})") from error
        clicks = clicks_from_json(data)
    else:
        clicks = clicks_from_label_map(read_mask(path, reference=volume), click_class)
    if click_class is not None:
        clicks = [c if c.class_name else Click(c.position, c.positive, click_class) for c in clicks]
    return clicks


def _mask_result(path: Path, volume: Volume, classes: list[str], segmenter: IrisSegmenter) -> VolumeSegmentation:
    """An existing label map as a result to refine (probabilities 0/1, no task embedding), at the input scale the
    engine would read its structures at (twice the input size where every class is thin)."""
    labels = read_mask(path, reference=volume)
    count = max(int(labels.max()), len(classes), 1)
    names = classes or [f"class_{k + 1}" for k in range(count)]
    if len(names) < count:
        raise IrisInputError(f"{path} has labels up to {count} but only {len(names)} --class names")
    masks = np.stack([labels == k + 1 for k in range(len(names))])
    scale = segmenter.input_scale_of([Support(volume, labels)], names) if all(m.any() for m in masks) else 1
    return VolumeSegmentation(masks.astype(np.float32), masks, names, "mask", "", input_scale=scale)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise IrisInputError("--device cuda was asked for but no CUDA device is available")
    begin = time.perf_counter()
    segmenter = IrisSegmenter.from_checkpoint(args.weights, InferenceConfig(device=args.device,
                                                                             threshold=args.threshold))
    volume = read_image(args.input)
    if args.mask is not None:
        result = _mask_result(args.mask, volume, args.classes, segmenter)
    else:
        supports = read_supports(args.support)
        strategy = "one_shot" if len(supports) == 1 else "context_ensemble"
        names = resolve_classes(args.classes, supports, strategy, [])
        result = segmenter.segment(volume, strategy, supports, names)
    clicks = read_clicks(args.clicks, volume, args.click_class)
    method = args.method or RefineConfig.method
    refined = segmenter.refine(volume, result, clicks, RefineConfig(method=method))
    path = write_mask(refined.label_map(), volume, args.output)
    changed = int((refined.masks != result.masks).sum())
    print(f"refined with {len(clicks)} clicked voxels ({method}): {changed} voxels changed; classes "
          f"{', '.join(f'{n}={int(m.sum())}' for n, m in zip(refined.class_names, refined.masks, strict=True))}; "
          f"wrote {path} in {time.perf_counter() - begin:.1f} s")
    return 0
