"""Propagation latency on a 128-slice volume: first propagation, re-propagation after a fixed slice, no change.

Usage: python benchmarks/benchmark_propagation.py [--slices 128] [--size 256] [--threads 2] [--repeats 3]
Prints a table (median wall and CPU seconds, slices sent to the model) and writes
benchmarks/propagation_results.md. The goal is an interactive re-propagation (< 5 s on 2 CPU cores). On a
shared machine wall times are upper bounds; CPU seconds / threads estimates the wall time on idle cores.
A thin tube (read at twice the model's input size, `iris_engine.input_scale`) is timed side by side with the
same tube forced to the input size, and their CPU ratio printed.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from iris_engine.config import InferenceConfig
from iris_engine.evaluation.propagation import painted_indices
from iris_engine.inference import IrisSegmenter
from iris_engine.io.volume import Volume

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "assets" / "weights" / "iris2d.pt"


def ellipsoid(size: int, slices: int, seed: int = 0) -> tuple[Volume, np.ndarray]:
    """A bright ellipsoid over the middle 70 % of the slices, in noise."""
    grids = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), np.linspace(-1, 1, slices),
                        indexing="ij")
    truth = grids[0] ** 2 / 0.35 + grids[1] ** 2 / 0.25 + grids[2] ** 2 / 0.5 < 1
    image = 100.0 * truth + np.random.default_rng(seed).normal(0, 20, truth.shape)
    return Volume(image.astype(np.float32), np.diag([1.0, 1.0, 2.0, 1.0]), "MR"), truth


def tube(size: int, slices: int, seed: int = 0) -> tuple[Volume, np.ndarray]:
    """A bright tube about 1.5 % of the side across (2 pixels on the 128 px grid) through every slice, in noise."""
    grids = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), np.linspace(-1, 1, slices),
                        indexing="ij")
    truth = (grids[0] - 0.2 * grids[2]) ** 2 + grids[1] ** 2 < 0.015**2
    image = 100.0 * truth + np.random.default_rng(seed).normal(0, 20, truth.shape)
    return Volume(image.astype(np.float32), np.diag([1.0, 1.0, 2.0, 1.0]), "CT"), truth


def paint(truth: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """The truth on 3 slices at 1/6, 1/2 and 5/6 of its range, and those slices."""
    shown = np.flatnonzero(truth.any(axis=(0, 1)))
    painted_at = painted_indices(int(shown[0]), int(shown[-1]), 3)
    painted = np.zeros(truth.shape, dtype=np.uint8)
    painted[:, :, painted_at] = truth[:, :, painted_at]
    return painted, painted_at


def run(segmenter: IrisSegmenter, volume: Volume, painted: np.ndarray) -> tuple[float, float, int, int]:
    """Wall seconds, process CPU seconds, slices sent to the model and input scale of one propagation."""
    start, cpu = time.perf_counter(), time.process_time()
    result = segmenter.propagate(volume, painted, ["organ"])
    return time.perf_counter() - start, time.process_time() - cpu, result.recomputed_slices, result.input_scale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=128)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--weights", type=Path, default=WEIGHTS)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "propagation_results.md")
    args = parser.parse_args()
    if args.size < 128:
        parser.error("--size must be at least 128 (the thin tube is 1.5 % of the side across)")
    torch.set_num_threads(args.threads)
    volume, truth = ellipsoid(args.size, args.slices)
    painted, painted_at = paint(truth)
    fixed = (painted_at[0] + painted_at[1]) // 2
    corrected = painted.copy()
    corrected[:, :, fixed] = truth[:, :, fixed]
    thin_volume, thin_truth = tube(args.size, args.slices)
    thin_painted, _ = paint(thin_truth)
    thin, forced = "thin tube, first propagation (read at 2x)", "same tube forced to the input size"
    rows: dict[str, list[tuple[float, float, int, int]]] = {"first propagation (3 painted slices)": [],
                                                           f"re-propagation after fixing slice {fixed}": [],
                                                           "re-propagation, nothing changed": [],
                                                           thin: [], forced: []}
    for _ in range(args.repeats):
        segmenter = IrisSegmenter.from_checkpoint(args.weights)
        names = list(rows)
        rows[names[0]].append(run(segmenter, volume, painted))
        rows[names[1]].append(run(segmenter, volume, corrected))
        rows[names[2]].append(run(segmenter, volume, corrected))
        rows[thin].append(run(IrisSegmenter.from_checkpoint(args.weights), thin_volume, thin_painted))
        rows[forced].append(run(IrisSegmenter.from_checkpoint(args.weights, InferenceConfig(fine_scale_thickness=0)),
                                thin_volume, thin_painted))
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    lines = [
        "# Propagation latency",
        "",
        f"{args.size} x {args.size} x {args.slices} synthetic volume, weights `{args.weights.name}`, "
        f"{args.threads} torch threads, {platform.processor() or platform.machine()}, median of {args.repeats}; "
        f"load average at the end {load} (wall times on a shared machine are upper bounds).",
        "",
        "| step | median wall s | median CPU s | CPU s / threads | slices sent to the model | input scale |",
        "|---|---|---|---|---|---|",
    ]
    for name, values in rows.items():
        cpu = statistics.median(v[1] for v in values)
        lines.append(f"| {name} | {statistics.median(v[0] for v in values):.2f} | {cpu:.2f} | "
                     f"{cpu / args.threads:.2f} | {values[-1][2]} | {values[-1][3]} |")
    ratio = statistics.median(v[1] for v in rows[thin]) / statistics.median(v[1] for v in rows[forced])
    per_slice = statistics.median(v[1] / max(1, v[2]) for v in rows[thin]) \
        / statistics.median(v[1] / max(1, v[2]) for v in rows[forced])
    lines += ["", f"Thin tube at 2x / forced to the input size, median CPU seconds: {ratio:.2f}x in all, "
              f"{per_slice:.2f}x per slice sent to the model (at the input size the walk loses the tube sooner)"]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
