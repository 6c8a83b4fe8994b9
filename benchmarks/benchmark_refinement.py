"""Latency of one refinement click on a 256 x 256 slice, per method (goal: under 1 s on the 2 CPU cores).

Usage: python benchmarks/benchmark_refinement.py [--weights assets/weights/iris2d.pt] [--repeats 5] [--threads 2]
       [--size 256]
Prints a table of wall and CPU seconds per call (median over repeats, after one warm-up call) and the ratio to
the 1 s goal. Each call is what the app does on a click: refine the one-shot result with all clicks so far
(here the first click; `--clicks N` times the N-th click of a series). Measured side by side: a cold call, which
encodes the query's slices afresh, and a warm one, as the app makes them, where the segmenter kept the query's
model features from the previous click on the same image (`refinement.FeatureCache`) and, for a sequential
refiner (`click_refiner_sequential.pt`, single slices), the steps of the clicks before (`refinement.ClickSeries`),
so the call refines the newest click only (timed side by side with the restarting refiner where a sequential one
ships); the default `learned` is also
timed with the tuning blend it had before (`learned_tuning`) and on the slice's own grid instead of the
model's view of it (`model_grid` off), side by side; `--size` sets the slice's side. `--volume` times the same on a
192 x 192 x 64 volume instead (no goal there; the clicks follow the simulated user of the evaluation, each at the
centre of the largest 3D error region of the previous result). `--thin` times a slice of thin dark curves
(vessel-like: the one-shot runs at twice the input size, and negative clicks take the thin-mask halo step); there
`learned` runs the fine refiner on the 256 px features where one ships, timed side by side with the model-grid
refiner on the 128 px ones.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch

from iris_engine.inference import IrisSegmenter, Support, VolumeSegmentation
from iris_engine.io.volume import Volume
from iris_engine.refinement import (
    METHODS,
    Click,
    ClickSeries,
    FeatureCache,
    RefineConfig,
    next_click,
    refine_segmentation,
)

ROOT = Path(__file__).resolve().parents[1]
GOAL_SECONDS = 1.0
TUNING_BLEND = "learned + tuning blend (`learned_tuning`)"
OWN_GRID = "learned on the slice's own grid (`model_grid` off)"
GRID_REFINER = "learned with the model-grid refiner only (no fine refiner)"
RESTARTING = "learned restarting from the result with all clicks (`sequential` off)"


def phantom(size: int = 256, seed: int = 0) -> tuple[Volume, np.ndarray]:
    """A textured slice with an elliptic organ and its mask."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size] / size
    organ = ((rows - 0.5) / 0.25) ** 2 + ((cols - 0.45) / 0.18) ** 2 < 1
    image = 80 + 60 * organ + 10 * np.sin(12 * rows) + rng.normal(0, 8, (size, size))
    return Volume(image.astype(np.float32), np.eye(4), "MR"), organ.astype(np.uint8)


def phantom_vessels(size: int = 256, seed: int = 0) -> tuple[Volume, np.ndarray]:
    """A textured slice with five dark curves about 3 pixels wide (vessel-like) and their mask."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size] / size
    curves = np.zeros((size, size), bool)
    for k in range(5):
        centre = 0.15 + 0.17 * k + 0.04 * np.sin(2 * np.pi * (cols + rng.random()) * (1 + k % 3))
        curves |= np.abs(rows - centre) < 1.5 / size
    image = 120 - 50 * curves + 10 * np.sin(12 * rows) + rng.normal(0, 6, (size, size))
    return Volume(image.astype(np.float32), np.eye(4), "MR"), curves.astype(np.uint8)


def phantom_volume(size: int = 192, depth: int = 64, seed: int = 0) -> tuple[Volume, np.ndarray]:
    """A textured volume with an ellipsoid organ whose axes change with the seed, and its mask."""
    rng = np.random.default_rng(seed)
    rows, cols, slices = np.mgrid[:size, :size, :depth] / np.array([size, size, depth])[:, None, None, None]
    a, b, c = 0.22 + 0.04 * rng.random(3)
    organ = ((rows - 0.5) / a) ** 2 + ((cols - 0.45) / b) ** 2 + ((slices - 0.5) / (1.6 * c)) ** 2 < 1
    image = 80 + 60 * organ + 10 * np.sin(12 * rows) + rng.normal(0, 8, organ.shape)
    affine = np.diag([1.0, 1.0, 2.5, 1.0])
    return Volume(image.astype(np.float32), affine, "MR"), organ.astype(np.uint8)


def simulated_clicks(segmenter: IrisSegmenter, query: Volume, result: VolumeSegmentation, truth: np.ndarray,
                     count: int, config: RefineConfig) -> list[Click]:
    """`count` clicks of the evaluation's simulated user, each on the error of the result refined so far."""
    clicks: list[Click] = []
    current = result
    for _ in range(count):
        placed = next_click(current.masks[0], truth.astype(bool))
        if placed is None:
            break
        clicks.append(Click(placed[0], placed[1]))
        current = segmenter.refine(query, result, clicks, config)
    return clicks


def timed(call: Callable[[], object], repeats: int, setup: Callable[[], object] = lambda: None
          ) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of `repeats` calls, each after an untimed `setup()`."""
    walls, cpus = [], []
    for _ in range(repeats):
        setup()
        wall, cpu = time.perf_counter(), time.process_time()
        call()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return walls, cpus


def warm_timings(segmenter: IrisSegmenter, query: Volume, result: VolumeSegmentation, clicks: list[Click],
                 config: RefineConfig, repeats: int) -> tuple[list[float], list[float]]:
    """`timed` calls as the app makes them on the last click: the query's features kept from an earlier call, and
    (for a sequential refiner) the steps of the clicks before it, so that the call refines only the newest."""
    features, series = FeatureCache(), [ClickSeries()]
    refine_segmentation(segmenter, query, result, clicks, config, features)

    def earlier_clicks_done() -> None:
        series[0] = ClickSeries()
        if len(clicks) > 1:
            refine_segmentation(segmenter, query, result, clicks[:-1], config, features, series=series[0])

    return timed(lambda: refine_segmentation(segmenter, query, result, clicks, config, features, series=series[0]),
                 repeats, earlier_clicks_done)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", type=Path, default=ROOT / "assets" / "weights" / "iris2d.pt")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clicks", type=int, default=1)
    parser.add_argument("--size", type=int, default=256, help="side of the slice (not with --volume)")
    case = parser.add_mutually_exclusive_group()
    case.add_argument("--volume", action="store_true", help="a 192 x 192 x 64 volume instead of a slice")
    case.add_argument("--thin", action="store_true", help="a 256 x 256 slice of thin, vessel-like curves")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    segmenter = IrisSegmenter.from_checkpoint(args.weights)
    make = phantom_volume if args.volume else phantom_vessels if args.thin else phantom
    size = {} if args.volume else {"size": args.size}
    support, support_mask = make(seed=1, **size)
    query, truth = make(seed=2, **size)
    if args.volume:  # one painted slice of another volume, as a user would give
        middle = support_mask.shape[2] // 2
        painted = np.zeros_like(support_mask)
        painted[:, :, middle] = support_mask[:, :, middle]
        support_mask = painted
    result = segmenter.segment(query, "one_shot", [Support(support, support_mask)], ["organ"])
    rng = np.random.default_rng(0)
    clicks = [Click((int(r), int(c)), bool(i % 2 == 0)) for i, (r, c) in
              enumerate(rng.integers(20, query.shape[0] - 20, size=(args.clicks, 2)))]
    side = f"{args.size} x {args.size}"
    where = "a 192 x 192 x 64 volume" if args.volume else f"a {side} slice of thin curves" if args.thin \
        else f"a {side} slice"
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads; "
          f"weights {args.weights.name} ({segmenter.model_version}); {args.clicks} click(s) on {where}; "
          f"one-shot at {result.input_scale}x the input size")
    print("| method | cold wall s | warm wall s | warm CPU s | cold / warm | warm / 1 s goal |\n"
          "|---|---|---|---|---|---|")
    variants = [(method, RefineConfig(method=method)) for method in METHODS]
    variants.append((TUNING_BLEND, RefineConfig(learned_tuning=True)))
    variants.append((OWN_GRID, RefineConfig(model_grid=False)))
    fine_refiner = segmenter.fine_click_refiner if result.input_scale > 1 else None
    if fine_refiner is not None:
        variants.append((GRID_REFINER, RefineConfig()))
    sequential = segmenter.sequential_click_refiner is not None and not args.volume and result.input_scale == 1
    if sequential:
        variants.append((RESTARTING, RefineConfig(sequential=False)))
    warm: dict[str, float] = {}
    for name, config in variants:
        segmenter.fine_click_refiner = None if name == GRID_REFINER else fine_refiner
        if args.volume:
            clicks = simulated_clicks(segmenter, query, result, truth, args.clicks, config)
        cold = statistics.median(timed(partial(refine_segmentation, segmenter, query, result, clicks, config),
                                       args.repeats)[0])
        walls, cpus = warm_timings(segmenter, query, result, clicks, config, args.repeats)
        wall = warm[name] = statistics.median(walls)
        print(f"| {name} | {cold:.3f} | {wall:.3f} | {statistics.median(cpus):.3f} | {cold / wall:.2f} "
              f"| {wall / GOAL_SECONDS:.2f} |")
    print(f"warm learned with / without the tuning blend: {warm[TUNING_BLEND] / warm['learned']:.2f}x; "
          f"on the slice's own grid / on the model's view: {warm[OWN_GRID] / warm['learned']:.2f}x"
          + (f"; fine / model-grid refiner: {warm['learned'] / warm[GRID_REFINER]:.2f}x" if fine_refiner else "")
          + (f"; sequential / restarting: {warm['learned'] / warm[RESTARTING]:.2f}x" if sequential else ""))


if __name__ == "__main__":
    main()
