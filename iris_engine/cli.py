"""`iris` command line: batch segmentation of files/folders, evaluation, training and model export."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from iris_engine import onnx_runtime, strategies
from iris_engine.allocator import keep_freed_memory
from iris_engine.config import InferenceConfig
from iris_engine.embedding import TaskEmbedding
from iris_engine.errors import CheckpointError, IrisInputError
from iris_engine.inference import IrisSegmenter, Support
from iris_engine.input_scale import fill_between, take_slices
from iris_engine.inputs import InputItem, discover_inputs
from iris_engine.io.atomic import atomic_write
from iris_engine.io.limits import DEFAULT_LIMITS
from iris_engine.io.readers import read_image, read_mask
from iris_engine.io.volume import Volume
from iris_engine.io.writers import dicom_seg_missing_references, write_dicom_seg, write_mask
from iris_engine.postprocess import PostprocessOptions, apply_postprocessing

DEFAULT_WEIGHTS = Path(__file__).resolve().parents[1] / "assets" / "weights" / "iris2d.pt"
FORMATS = ("auto", "nifti", "png", "dicom-seg")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DELEGATED = {"train": "iris_engine.training.run", "evaluate": "iris_engine.evaluation.harness",
             "evaluate-propagation": "iris_engine.evaluation.propagation", "propagate": "iris_engine.cli_propagate",
             "refine": "iris_engine.cli_refine", "evaluate-refinement": "iris_engine.evaluation.refinement",
             "sanity": "iris_engine.evaluation.sanity", "train-refiner": "iris_engine.training.click_training",
             "bank": "iris_engine.data.bank_export", "average-weights": "iris_engine.training.soup",
             "refresh-bank": "iris_engine.training.bank_refresh"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
STEM_SUFFIXES = (".nii.gz", ".nii", ".dcm", ".dicom", ".npy", ".npz", ".zip", *IMAGE_SUFFIXES)
EXIT_ALL_FAILED = 1
EXIT_USAGE = 2
NAME_MAX_BYTES = 255


@dataclass
class FileResult:
    """One row of the summary table."""

    path: InputItem
    status: str
    detail: str
    shape: tuple[int, ...] = ()
    seconds: float = 0.0


@dataclass
class _Job:
    """A read, preprocessed input waiting for its batch to be segmented."""

    path: InputItem
    volume: Volume
    queries: torch.Tensor  # the slices segmented: every one, or for a thin structure's volume every n-th
    restore: Callable[[torch.Tensor], np.ndarray]
    seconds: float
    kept: list[int]  # which slices of the input `queries` holds (`IrisSegmenter.kept_slices`)
    depth: int


def build_parser() -> argparse.ArgumentParser:
    """The `iris` parser with its subcommands."""
    parser = argparse.ArgumentParser(prog="iris", description="IRIS in-context medical image segmentation.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    seg = commands.add_parser(
        "segment", help="segment files or folders from reference examples or stored classes",
        description="Segment every image/volume in --input (files, folders, DICOM exports) and write one "
        "label map per input (value k = k-th class) with the input's geometry. DICOM is found by content (any file "
        "names, nested folders, zips) and each series is one input. Unreadable inputs are reported and skipped. "
        "Exit code 1 only when every input failed; 2 for bad arguments.",
    )
    seg.add_argument("--support", nargs=2, action="append", default=[], metavar=("IMAGE", "MASK"),
                     help="reference image and its label map (values 1..K; 0/255 masks count as one class); "
                     "repeat for more supports")
    seg.add_argument("--input", action="append", required=True, type=Path, metavar="PATH",
                     help="image, volume, DICOM folder or zip (one input per series), or a folder of them; repeatable")
    seg.add_argument("--output", required=True, type=Path, metavar="DIR", help="folder for the masks")
    seg.add_argument("--max-classes", type=_positive_int, default=DEFAULT_LIMITS.max_classes,
                     help="most classes a support mask may hold (default %(default)s); masks with more distinct "
                     "values are refused before anything is allocated")
    seg.add_argument("--class", dest="classes", action="append", default=[], metavar="NAME",
                     help="class name: mask value k is the k-th --class; memory-bank retrieval looks names up "
                     "(an unambiguous suffix such as 'liver' matches 'Task03_Liver/liver')")
    seg.add_argument("--strategy", choices=strategies.STRATEGIES, default=None,
                     help="default: one_shot with one support, context_ensemble with several, memory_bank without")
    seg.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="model checkpoint (default: %(default)s)")
    seg.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    seg.add_argument("--batch-size", type=_positive_int, default=InferenceConfig.batch_size,
                     help="model slices per forward pass (2D images from several files share a batch)")
    seg.add_argument("--tuning-steps", type=_non_negative_int, default=InferenceConfig.tuning_steps,
                     help="in-context tuning steps (tuned once, reused for every input)")
    seg.add_argument("--threshold", type=float, default=InferenceConfig.threshold)
    seg.add_argument("--format", choices=FORMATS, default="auto",
                     help="auto: DICOM-SEG for DICOM, PNG for PNG/JPEG/TIFF, .npy for NumPy, else NIfTI")
    seg.add_argument("--largest-component", action="store_true", help="keep the largest component per class")
    seg.add_argument("--fill-holes", action="store_true", help="fill enclosed holes per class")
    seg.add_argument("--min-size", type=_non_negative_int, default=0, metavar="VOXELS",
                     help="remove components smaller than this (0: keep all)")
    seg.add_argument("--precision", choices=PRECISIONS, default="auto",
                     help="autocast for the query forward passes; auto: bf16 (else fp16) on CUDA, bf16 on a CPU with "
                          "native bfloat16, else fp32")
    seg.add_argument("--threads", type=_non_negative_int, default=0, help="CPU threads for torch (0: torch default)")
    seg.add_argument("--compile", action="store_true", help="torch.compile the encoder and decoder (slow start)")
    seg.add_argument("--quiet", action="store_true", help="no progress bar")
    seg.set_defaults(handler=run_segment)

    exp = commands.add_parser(
        "export", help="export the query path (encoder + decoder, task tokens as input) to ONNX or TorchScript",
        description="Export forward(query_image (B,1,S,S), task_tokens (K,T,C)) -> logits (B,K,S,S) and check "
        "the exported graph against PyTorch on random inputs.",
    )
    exp.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="model checkpoint (default: %(default)s)")
    exp.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    exp.add_argument("--output", type=Path, default=None, help="default: the weights' name with .onnx or .ts.pt")
    exp.set_defaults(handler=run_export)

    for name, help_text in (("evaluate", "evaluation harness (iris evaluate --help)"),
                            ("evaluate-propagation", "propagation evaluation (iris evaluate-propagation --help)"),
                            ("propagate", "fill a volume from a few painted slices (iris propagate --help)"),
                            ("refine", "correct a mask with clicks from a file (iris refine --help)"),
                            ("evaluate-refinement", "click-protocol evaluation (iris evaluate-refinement --help)"),
                            ("sanity", "support = query check over every structure (iris sanity --help)"),
                            ("train", "episodic training (iris train --help)"),
                            ("train-refiner", "train the click refiner on a frozen model (iris train-refiner --help)"),
                            ("bank", "save the training slice bank, to train elsewhere (iris bank --help)"),
                            ("average-weights", "average fine-tunes of one model (iris average-weights --help)"),
                            ("refresh-bank", "rebuild a checkpoint's memory bank (iris refresh-bank --help)")):
        commands.add_parser(name, help=help_text, add_help=False)
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `iris` and `python -m iris_engine`; returns the exit code."""
    keep_freed_memory()
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] in DELEGATED:
        return _delegate(args_list[0], args_list[1:])
    parser = build_parser()
    args = parser.parse_args(args_list)
    try:
        return args.handler(args)
    except (IrisInputError, CheckpointError) as error:
        print(f"iris {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE


def _delegate(command: str, argv: list[str]) -> int:
    """Run the trainer's or the evaluation harness's own `main(argv)` (imported only when asked for)."""
    import importlib

    module_name = DELEGATED[command]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:
            raise
        print(f"iris {command}: not available in this installation ({module_name} is missing)", file=sys.stderr)
        return EXIT_USAGE
    try:
        result = module.main(argv)
    except (IrisInputError, CheckpointError) as error:
        print(f"iris {command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    return result if isinstance(result, int) else 0


def _check_device(device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        raise IrisInputError("--device cuda was asked for but no CUDA device is available")


def _load_segmenter(weights: Path, device: str, batch_size: int, threshold: float, precision: str = "auto"
                    ) -> IrisSegmenter:
    _check_device(device)
    config = InferenceConfig(device=device, batch_size=batch_size, threshold=threshold,
                             backend="bf16" if device == "cpu" and precision == "bf16" else "auto",
                             cpu_bf16=precision in ("auto", "bf16"))
    return IrisSegmenter.from_checkpoint(weights, config)


def _support_label_map(mask: np.ndarray, max_classes: int = DEFAULT_LIMITS.max_classes) -> np.ndarray:
    """A label map 1..K: a mask with exactly two values is one class (the larger value), whatever the values."""
    values = np.unique(mask)
    if values.size == 2:
        return (mask == values[1]).astype(np.int32)
    if values.size and values.max() > max_classes:
        raise IrisInputError(f"mask labels go up to {int(values.max())}, but a label map holds classes "
                             f"1..{max_classes} (--max-classes)")
    return mask


def read_supports(pairs: Sequence[Sequence[str]], max_classes: int = DEFAULT_LIMITS.max_classes) -> list[Support]:
    """Read --support IMAGE MASK pairs; masks must match their image's shape and hold at most `max_classes`."""
    supports = []
    for image_path, mask_path in pairs:
        volume = read_image(image_path)
        try:
            labels = _support_label_map(read_mask(mask_path, reference=volume, max_classes=max_classes), max_classes)
        except IrisInputError as error:
            raise IrisInputError(f"support mask {mask_path}: {_reason(error, Path(mask_path))}") from error
        if not labels.any():
            raise IrisInputError(f"support mask {mask_path} is empty: it must label the structure to segment")
        supports.append(Support(volume, labels))
    return supports


def resolve_classes(classes: list[str], supports: list[Support], strategy: str, bank_names: list[str]) -> list[str]:
    """Class names: --class as given, else class_1..class_K from the supports' largest label."""
    if strategy == "memory_bank":
        if not classes:
            raise IrisInputError("memory-bank retrieval needs --class NAME (stored: " + ", ".join(bank_names) + ")")
        return classes
    largest = max(int(np.asarray(s.mask).max()) for s in supports)
    if not classes:
        return [f"class_{k + 1}" for k in range(largest)]
    if largest > len(classes):
        raise IrisInputError(f"the support masks have labels up to {largest} but only {len(classes)} --class names")
    return classes


def bank_key(name: str, stored: list[str]) -> str:
    """The memory-bank entry for a class name: exact, else the one entry ending in '/name' (case-insensitive)."""
    if name in stored:
        return name
    matches = [key for key in stored if key.lower().endswith("/" + name.lower())]
    if len(matches) == 1:
        return matches[0]
    hint = f"ambiguous: {', '.join(matches)}" if matches else f"stored: {', '.join(stored) or 'none'}"
    raise IrisInputError(f"no memory-bank entry for '{name}' ({hint})")


def task_embedding(
    segmenter: IrisSegmenter, strategy: str, supports: list[Support], names: list[str], tuning_steps: int
) -> tuple[TaskEmbedding, int]:
    """The task embedding and its input scale (`IrisSegmenter.encode_at_input_scale`), once for the whole batch."""
    if strategy == "memory_bank":
        stored, scale = segmenter.bank_embedding([bank_key(n, segmenter.memory_bank.class_names) for n in names])
        return TaskEmbedding(stored.tokens, names, stored.model_version), scale
    if strategy == "one_shot" and len(supports) != 1:
        raise IrisInputError(f"one-shot takes exactly one --support, got {len(supports)}")
    embedding, scale = segmenter.encode_at_input_scale(supports, names)
    if strategy != "in_context_tuning":
        return embedding, scale
    images, masks = segmenter.support_batch(supports, names, scale)
    tuned = strategies.in_context_tuning(segmenter.model, images, masks, images[:1], names, segmenter.config,
                                         initial=embedding, steps=tuning_steps)
    return tuned.embedding, scale


def output_path(source: Path | InputItem, volume: Volume, fmt: str, out_dir: Path) -> tuple[Path, str]:
    """Where a mask for `source` goes and in which format (auto: DICOM-SEG when the DICOM source can be referenced)."""
    if fmt == "auto":
        name = source.name.lower()
        if volume.metadata.get("dicom_datasets"):
            fmt = "nifti" if dicom_seg_missing_references(volume.metadata["dicom_datasets"]) else "dicom-seg"
        elif name.endswith(IMAGE_SUFFIXES):
            fmt = "png"
        elif name.endswith((".npy", ".npz")):
            fmt = "npy"
        else:
            fmt = "nifti"
    stem = source.name
    for suffix in STEM_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    extension = {"nifti": ".nii.gz", "png": ".png", "npy": ".npy", "dicom-seg": ".dcm"}[fmt]
    return out_dir / f"{_fit_name(stem, f'_seg{extension}')}_seg{extension}", fmt


def _fit_name(stem: str, ending: str) -> str:
    """`stem`, shortened (plus a digest of the whole, to stay unique) so that stem + ending fits a file name."""
    room = NAME_MAX_BYTES - len(ending.encode())
    if len(stem.encode()) <= room:
        return stem
    digest = hashlib.sha256(stem.encode()).hexdigest()[:8]
    head = stem.encode()[: room - len(digest) - 1].decode(errors="ignore")
    return f"{head}-{digest}"


def autocast_context(device: str, precision: str) -> AbstractContextManager[object] | None:
    """Mixed precision the command wraps the query forward passes in: bf16 (else fp16) on CUDA for 'auto', fp16 on
    a CPU when asked; None where the engine's backend decides (`_load_segmenter`: CPU bf16 is its 'bf16' backend,
    chosen by 'auto' on a CPU with native bfloat16) or for fp32."""
    if device == "cuda" and precision == "auto":
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision in ("auto", "fp32") or (device == "cpu" and precision == "bf16"):
        return None
    return torch.autocast(device, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


class BatchSegmenter:
    """Segments many inputs with one task embedding; 2D inputs from several files share forward passes."""

    def __init__(self, segmenter: IrisSegmenter, embedding: TaskEmbedding, args: argparse.Namespace, scale: int = 1):
        self.segmenter = segmenter
        self.embedding = embedding
        self.scale = scale
        self.args = args
        self.postprocess = PostprocessOptions(
            remove_small_objects=args.min_size > 0, min_size=args.min_size,
            fill_holes=args.fill_holes, keep_largest_component=args.largest_component,
        )
        self.autocast = autocast_context(args.device, args.precision)
        self.pending: list[_Job] = []
        self.results: list[FileResult] = []

    def add(self, path: InputItem) -> None:
        """Read and preprocess one input; unreadable inputs are recorded as skipped."""
        start = time.perf_counter()
        try:
            volume = path.read()
            queries, restore, _ = self.segmenter.to_model_space(volume, self.scale)
        except (IrisInputError, OSError, ValueError) as error:
            self._record(FileResult(path, "skipped", _reason(error, path)))
            return
        kept = self.segmenter.kept_slices(volume, len(queries), self.scale)
        self.pending.append(_Job(path, volume, take_slices(queries, kept), restore, time.perf_counter() - start,
                                 kept, len(queries)))
        if sum(job.queries.shape[0] for job in self.pending) >= self.args.batch_size:
            self.flush()

    def flush(self) -> None:
        """Segment the pending inputs together, then write each one's mask."""
        jobs, self.pending = self.pending, []
        if not jobs:
            return
        start = time.perf_counter()
        model = self.segmenter.model
        try:
            queries = torch.cat([job.queries for job in jobs])
            backend = "eager" if self.autocast else onnx_runtime.choose_backend(self.segmenter.config, model, queries)
            with self.autocast or nullcontext():
                probabilities = strategies.predict_probabilities(
                    model, queries, self.embedding,
                    strategies.query_batch_size(model, queries, self.segmenter.config, backend), backend)
        except (IrisInputError, RuntimeError) as error:
            for job in jobs:
                self._record(FileResult(job.path, "failed", _reason(error, job.path), job.volume.shape))
            return
        total = probabilities.shape[0]
        per_slice = (time.perf_counter() - start) / total
        for job, chunk in zip(jobs, probabilities.split([j.queries.shape[0] for j in jobs]), strict=True):
            self._write(job, chunk, job.seconds + per_slice * chunk.shape[0])

    def _write(self, job: _Job, chunk: torch.Tensor, seconds: float) -> None:
        start = time.perf_counter()
        try:
            probabilities = job.restore(fill_between(chunk, job.kept, job.depth))
            masks = probabilities >= self.segmenter.config.threshold
            masks = np.stack([apply_postprocessing(m, self.postprocess) for m in masks])
            target, fmt = output_path(job.path, job.volume, self.args.format, self.args.output)
            if fmt == "dicom-seg":
                write_dicom_seg(masks, job.volume, list(self.embedding.class_names), target)
            else:
                write_mask(_label_map(probabilities, masks), job.volume, target)
        except (IrisInputError, OSError, ValueError, AttributeError, KeyError, TypeError) as error:
            self._record(FileResult(job.path, "failed", _reason(error, job.path), job.volume.shape))
            return
        voxels = ", ".join(f"{name}={int(m.sum())}" for name, m in zip(self.embedding.class_names, masks, strict=True))
        self._record(FileResult(job.path, "ok", f"{target.name} ({voxels})", job.volume.shape,
                                seconds + time.perf_counter() - start))

    def _record(self, result: FileResult) -> None:
        self.results.append(result)
        if result.status != "ok":
            tqdm.write(f"{result.status}: {result.path}: {result.detail}", file=sys.stderr)


def _label_map(probabilities: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """0 = background, k + 1 = class k; the most probable class where masks overlap."""
    labels = np.where(masks, probabilities, -1.0).argmax(axis=0) + 1
    return np.where(masks.any(axis=0), labels, 0).astype(np.uint16)


def _reason(error: Exception, path: Path | InputItem) -> str:
    """The error message without a repeated file path prefix."""
    message = str(error)
    prefix = f"{path}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def format_summary(results: list[FileResult], seconds: float) -> str:
    """Plain-text summary table of a batch run."""
    rows = [("input", "status", "shape", "seconds", "output / reason")]
    for r in results:
        shape = "x".join(map(str, r.shape)) or "-"
        rows.append((r.path.name, r.status, shape, f"{r.seconds:.2f}" if r.status == "ok" else "-", r.detail))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)) + "  " + row[4]
             for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    counts = {status: sum(r.status == status for r in results) for status in ("ok", "skipped", "failed")}
    lines.append(f"{counts['ok']} segmented, {counts['skipped']} skipped, {counts['failed']} failed "
                 f"in {seconds:.1f} s")
    return "\n".join(lines)


def run_segment(args: argparse.Namespace) -> int:
    """`iris segment`."""
    start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    strategy = args.strategy or ("memory_bank" if not args.support else
                                 "one_shot" if len(args.support) == 1 else "context_ensemble")
    if strategy == "memory_bank" and args.support:
        raise IrisInputError("memory-bank retrieval uses stored classes: drop --support or choose another --strategy")
    if strategy != "memory_bank" and not args.support:
        raise IrisInputError(f"{strategy} needs at least one --support IMAGE MASK")
    inputs = discover_inputs(args.input)
    segmenter = _load_segmenter(args.weights, args.device, args.batch_size, args.threshold, args.precision)
    supports = read_supports(args.support, args.max_classes)
    names = resolve_classes(args.classes, supports, strategy, segmenter.memory_bank.class_names)
    embedding, scale = task_embedding(segmenter, strategy, supports, names, args.tuning_steps)
    if args.compile:
        segmenter.model.encoder = torch.compile(segmenter.model.encoder)
        segmenter.model.decoder = torch.compile(segmenter.model.decoder)
    existed = args.output.exists()
    batch = BatchSegmenter(segmenter, embedding, args, scale)
    for path in tqdm(inputs, desc="segmenting", unit="file", disable=args.quiet, file=sys.stderr):
        batch.add(path)
    batch.flush()
    if any(r.status == "ok" for r in batch.results):
        labels = json.dumps({str(k + 1): n for k, n in enumerate(names)}, indent=2)
        atomic_write(args.output / "labels.json", lambda tmp: tmp.write_text(labels))
    elif not existed and args.output.is_dir() and not any(args.output.iterdir()):
        args.output.rmdir()  # nothing succeeded: leave no trace
    size = segmenter.model.config.image_size * scale
    stride = segmenter.config.fine_volume_stride
    every = f"; volumes on one slice in {stride} at most, interpolated between" if stride > 1 and not segmenter.is_3d \
        else ""
    thin = f" (a thin structure: twice the model's input size{every})" if scale > 1 else ""
    print(f"{strategy}, classes {', '.join(names)}, model {segmenter.model_version}, device {args.device}, "
          f"read at {size} px{thin}")
    order = {path: index for index, path in enumerate(inputs)}
    results = sorted(batch.results, key=lambda r: order[r.path])
    print(format_summary(results, time.perf_counter() - start))
    return 0 if any(r.status == "ok" for r in results) else EXIT_ALL_FAILED


def run_export(args: argparse.Namespace) -> int:
    """`iris export`."""
    from iris_engine.checkpoint import load_checkpoint
    from iris_engine.export import export_model, max_abs_difference

    model = load_checkpoint(args.weights).model
    suffix = ".onnx" if args.format == "onnx" else ".ts.pt"
    target = args.output or args.weights.with_name(args.weights.name.removesuffix(".pt") + suffix)
    path = export_model(model, target, args.format)
    difference = max_abs_difference(model, path, args.format)
    print(f"wrote {path} ({args.format}); max |logit difference| vs PyTorch on random inputs: {difference:.2e}")
    return 0
