"""Inference latency and peak memory of IRIS (eager vs torch.compile vs ONNX Runtime), one fresh process each.

Usage: python benchmarks/benchmark_inference.py [--slices 128] [--repeats 3] [--cases ...] [--backends ...]
Prints a table and writes benchmarks/results.md. Peak memory is the growth of the process's ru_maxrss
(CPU) or torch.cuda.max_memory_allocated (GPU) during the measured calls, in a fresh subprocess per row.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from iris_engine import strategies
from iris_engine.checkpoint import load_checkpoint
from iris_engine.config import InferenceConfig, ModelConfig
from iris_engine.correspondence import CorrespondenceConfig
from iris_engine.inference import IrisSegmenter, Support
from iris_engine.io.volume import Volume
from iris_engine.model.iris import IrisModel

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "assets" / "weights" / "iris2d.pt"
CASES = ("encode_task", "encode_task_thin", "encode_task_thin_uncalibrated", "slice256", "slice256_thin",
         "slice256_thin_novote", "volume128", "volume128_thin", "volume128_thin_novote", "volume128_thin_every_slice",
         "volume128_3d", "context_ensemble", "tuning20")
# side by side: _novote = the support-correspondence vote of thin structures off (`CorrespondenceConfig(weight=0)`),
# _uncalibrated = the support calibration of thin structures off (`calibration=None`), _every_slice = a thin
# structure's volume segmented on every slice (`fine_volume_stride=1`)
SIDE_BY_SIDE = {"_novote": "the vote", "_uncalibrated": "the support calibration", "_every_slice": "the slice stride"}
BACKENDS = ("eager", "auto", "compiled", "onnx", "bf16")  # auto: the engine's default (bf16 on a CPU with native
# bfloat16, else ONNX Runtime for CPU volumes); eager: PyTorch float32
BATCHED = ("volume128", "volume128_thin", "volume128_thin_novote", "volume128_thin_every_slice",
           "volume128_3d")  # more than one query slice
SEGMENT_CASES = ("slice256", "slice256_thin", "slice256_thin_novote", "volume128", "volume128_thin",
                 "volume128_thin_novote", "volume128_thin_every_slice")  # what the exported query path serves
CLASS = ["organ"]


def _disk_volume(shape: tuple[int, ...], seed: int) -> tuple[Volume, np.ndarray]:
    """A noisy bright ellipse (2D) or ellipsoid (3D) and its mask."""
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    mask = (sum(g**2 for g in grids) < 0.3).astype(np.uint8)
    image = 100.0 * mask + np.random.default_rng(seed).normal(0, 20, shape)
    return Volume(image.astype(np.float32), modality="MR"), mask


def _thin(mask: np.ndarray) -> np.ndarray:
    """The outer 2-pixel band of a mask: a structure thin enough to run at twice the input size."""
    return (mask > 0) & ~ndimage.binary_erosion(mask > 0, iterations=2)


def _model(weights: Path, spatial_dims: int) -> IrisModel:
    if spatial_dims == 2 and weights.is_file():
        return load_checkpoint(weights).model
    torch.manual_seed(0)
    return IrisModel(ModelConfig(spatial_dims=3, image_size=64) if spatial_dims == 3 else ModelConfig()).eval()


def _workload(case: str, backend: str, batch: int, device: str, weights: Path, slices: int) -> Callable[[], object]:
    """The call to time (after its set-up: model, inputs, cached embedding where the case says so)."""
    model = _model(weights, 3 if case == "volume128_3d" else 2)
    engine_backend = backend if backend in ("auto", "onnx", "bf16") else "eager"
    vote = CorrespondenceConfig(weight=0.0) if case.endswith("_novote") else CorrespondenceConfig()
    stride = 1 if case.endswith("_every_slice") else InferenceConfig.fine_volume_stride
    config = InferenceConfig(device=device, batch_size=batch, fine_batch_size=batch, backend=engine_backend,
                             correspondence=vote, fine_volume_stride=stride)
    if backend == "compiled":
        model.encoder = torch.compile(model.encoder)
        model.decoder = torch.compile(model.decoder)
    support_volume, support_mask = _disk_volume((256, 256), 0)
    support = Support(support_volume, _thin(support_mask) if "_thin" in case else support_mask)
    query, _ = _disk_volume((256, 256), 1)
    if case.startswith("encode_task"):  # _thin: read at twice the input size, with the vote's sampling
        segmenter = IrisSegmenter(model, config=config)
        images, masks = segmenter.support_batch([support], CLASS, 2 if "_thin" in case else 1)
        images, masks = images.to(device), masks.to(device)
        calibration = None if case.endswith("_uncalibrated") else config.calibration
        return lambda: strategies.encode_supports(model, images, masks, CLASS, calibration=calibration)
    if case in ("context_ensemble", "tuning20"):  # uncached: a fresh segmenter (empty cache) per call
        supports = [support] + [Support(*_disk_volume((256, 256), s)) for s in (2, 3)]
        if case == "context_ensemble":
            return lambda: IrisSegmenter(model, config=config).segment(query, "context_ensemble", supports, CLASS)
        return lambda: IrisSegmenter(model, config=config).segment(query, "in_context_tuning", [support], CLASS,
                                                                   tuning_steps=20)
    segmenter = IrisSegmenter(model, config=config)
    if case in BATCHED:
        query, _ = _disk_volume((128, 128, slices), 1)
        if case == "volume128_3d":
            support_volume, support_mask = _disk_volume((128, 128, slices), 0)
            support = Support(support_volume, support_mask)
    return lambda: segmenter.segment(query, "one_shot", [support], CLASS)


def worker(case: str, backend: str, batch: int, device: str, weights: Path, slices: int, repeats: int) -> dict:
    """Time one row in this (fresh) process: first call (includes compilation), then the median of `repeats`."""
    call = _workload(case, backend, batch, device, weights, slices)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    call()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    return {"first_s": first, "median_s": statistics.median(times) if times else first, "peak_mb": peak}


def profile(weights: Path, batch: int = 8) -> str:
    """Where a cached one-shot forward pass spends its time: encoder vs decoder, then the top operators."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    model = _model(weights, 2)
    images = torch.randn(batch, 1, model.config.image_size, model.config.image_size)
    tokens = torch.randn(1, model.config.num_task_tokens, model.config.embed_dim)
    lines = []
    with torch.no_grad():
        model.segment(images, tokens)
        start = time.perf_counter()
        features = model.encode_query(images)
        encoder = time.perf_counter() - start
        start = time.perf_counter()
        model.decode(features, tokens)
        decoder = time.perf_counter() - start
        start = time.perf_counter()
        model.decoder.pixel_features(features)
        shared = time.perf_counter() - start
        lines.append(f"batch {batch} x {tuple(images.shape[2:])}: encoder {encoder:.3f} s, decoder {decoder:.3f} s "
                     f"(of which the class-agnostic upsampling path {shared:.3f} s)")
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            model.segment(images, tokens)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10, max_name_column_width=40)
    return "\n".join(lines) + "\n" + table


def _machine() -> str:
    cpu = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {torch.get_num_threads()} torch threads / {len(__import__('os').sched_getaffinity(0))} cores, "
            f"{gpu}, torch {torch.__version__}, Python {platform.python_version()}")


def _row(case: str, backend: str, batch: int | None, device: str, result: dict | str) -> list[str]:
    cells = [case, f"{backend}/{device}", "-" if batch is None else str(batch)]
    if isinstance(result, str):
        return cells + ["-", "-", "-", result]
    return cells + [f"{result['median_s']:.3f}", f"{result['first_s']:.3f}", f"{result['peak_mb']:.0f}", ""]


def _side_by_side_ratios(rows: list[list[str]]) -> list[str]:
    """Median time with a thin-structure path over that without it (`SIDE_BY_SIDE`), per row timed both ways."""
    timed = {(row[0], row[1], row[2]): float(row[3]) for row in rows if row[3] != "-"}
    out = []
    for (case, backend, batch), seconds in timed.items():
        for suffix, path in SIDE_BY_SIDE.items():
            without = timed.get((f"{case}{suffix}", backend, batch))
            if case.endswith("_thin") and without:
                out.append(f"- {case} {backend} batch {batch}: with / without {path} {seconds:.3f} / {without:.3f} s"
                           f" = {seconds / without:.2f}x")
    return out


def _plan(cases: list[str], backends: list[str], devices: list[str]) -> list[tuple[str, str, int | None, str]]:
    plan = []
    for device in devices:
        for case in cases:
            for backend in backends:
                if backend != "eager" and (case not in SEGMENT_CASES or device == "cuda"):
                    continue
                for batch in ((1, 8) if case in BATCHED else (None,)):
                    plan.append((case, backend, batch, device))
    return plan


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--weights", type=Path, default=WEIGHTS, help="2D checkpoint (random weights if missing)")
    parser.add_argument("--slices", type=int, default=128, help="depth of the 128 x 128 x D test volume")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls after the first (1 for volumes)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per row before it is reported")
    parser.add_argument("--profile", action="store_true", help="also profile a cached one-shot forward pass")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results.md"))
    parser.add_argument("--worker", nargs=4, metavar=("CASE", "BACKEND", "BATCH", "DEVICE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        case, backend, batch, device = args.worker
        repeats = 1 if case in BATCHED else args.repeats
        print(json.dumps(worker(case, backend, int(batch), device, args.weights, args.slices, repeats)))
        return
    devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    header = ["case", "backend/device", "batch", "median s", "first call s", "peak MB", "note"]
    rows = []
    print("  ".join(header), flush=True)
    for case, backend, batch, device in _plan(args.cases, args.backends, devices):
        command = [sys.executable, __file__, "--worker", case, backend, str(batch or 8), device,
                   "--weights", str(args.weights), "--slices", str(args.slices), "--repeats", str(args.repeats)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
            result: dict | str = (json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0
                                  else f"failed: {(done.stderr.strip().splitlines() or ['?'])[-1][:100]}")
        except subprocess.TimeoutExpired:
            result = f"timed out after {args.timeout:.0f} s"
        rows.append(_row(case, backend, batch, device, result))
        print("  ".join(rows[-1]), flush=True)
    weights = args.weights if args.weights.is_file() else "random weights, default ModelConfig()"
    lines = [f"# Inference benchmark\n\nMachine: {_machine()}  \nWeights: {weights}; volume 128x128x{args.slices}\n",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    ratios = _side_by_side_ratios(rows)
    if ratios:
        print("\n".join(ratios))
        lines += ["", *ratios]
    if args.profile:
        report = profile(args.weights)
        print(report)
        lines += ["\n## Profile (cached one-shot forward)\n", "```", report, "```"]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
