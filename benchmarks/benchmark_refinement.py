"""Latency of one refinement click on a 256 x 256 slice, per method (goal: under 1 s on the 2 CPU cores).

Usage: python benchmarks/benchmark_refinement.py [--weights assets/weights/iris2d.pt] [--repeats 5] [--threads 2]
Prints a table of wall and CPU seconds per call (median over repeats, after one warm-up call) and the ratio to
the 1 s goal. Each call is what the app does on a click: refine the one-shot result with all clicks so far
(here the first click; `--clicks N` times the N-th click of a series).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from iris_engine.inference import IrisSegmenter, Support
from iris_engine.io.volume import Volume
from iris_engine.refinement import METHODS, Click, RefineConfig

ROOT = Path(__file__).resolve().parents[1]
GOAL_SECONDS = 1.0


def phantom(size: int = 256, seed: int = 0) -> tuple[Volume, np.ndarray]:
    """A textured slice with an elliptic organ and its mask."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size] / size
    organ = ((rows - 0.5) / 0.25) ** 2 + ((cols - 0.45) / 0.18) ** 2 < 1
    image = 80 + 60 * organ + 10 * np.sin(12 * rows) + rng.normal(0, 8, (size, size))
    return Volume(image.astype(np.float32), np.eye(4), "MR"), organ.astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", type=Path, default=ROOT / "assets" / "weights" / "iris2d.pt")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clicks", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    segmenter = IrisSegmenter.from_checkpoint(args.weights)
    support, support_mask = phantom(seed=1)
    query, _ = phantom(seed=2)
    result = segmenter.segment(query, "one_shot", [Support(support, support_mask)], ["organ"])
    rng = np.random.default_rng(0)
    clicks = [Click((int(r), int(c)), bool(i % 2 == 0)) for i, (r, c) in
              enumerate(rng.integers(20, 236, size=(args.clicks, 2)))]
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads; "
          f"weights {args.weights.name} ({segmenter.model_version}); {args.clicks} click(s) on a 256 x 256 slice")
    print("| method | median wall s | median CPU s | wall / 1 s goal |\n|---|---|---|---|")
    for method in METHODS:
        config = RefineConfig(method=method)
        segmenter.refine(query, result, clicks, config)
        walls, cpus = [], []
        for _ in range(args.repeats):
            wall, cpu = time.perf_counter(), time.process_time()
            segmenter.refine(query, result, clicks, config)
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
        wall = statistics.median(walls)
        print(f"| {method} | {wall:.3f} | {statistics.median(cpus):.3f} | {wall / GOAL_SECONDS:.2f} |")


if __name__ == "__main__":
    main()
