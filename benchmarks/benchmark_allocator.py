"""Seconds and page faults per call with glibc's default allocator against `keep_freed_memory`, side by side.

Usage: python benchmarks/benchmark_allocator.py [--rounds 3] [--cases train_step256 volume128 slice256]
       [--repeats 3] [--threads 1] [--out benchmarks/allocator.md]
The allocator is set once per process, so every measurement is a fresh process; within each round the two settings
run the same work one after the other. Work: a training step as `iris train` takes it (`step_seconds` of
benchmark_training.py: the shipped model on a batch of 8 toy one-support episodes at 256 px, bfloat16 autocast where
the CPU computes it natively, loss, backward, AdamW), a one-shot 128 x 128 x 128 volume and a one-shot 256 x 256
slice (benchmark_inference.py's workloads, eager float32). After one warm-up call, `--repeats` timed calls; the
table gives the median over rounds of each process's median seconds per call, its minor page faults per call and
its peak resident memory, then the ratio default / kept.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from benchmark_inference import WEIGHTS, _workload
from benchmark_training import step_seconds

from iris_engine.allocator import keep_freed_memory
from iris_engine.checkpoint import load_checkpoint
from iris_engine.data.toy import ToyEpisodes
from iris_engine.precision import native_bf16

CASES = ("train_step256", "volume128", "slice256")
SETTINGS = ("default", "kept")


def _training_step(weights: Path, batch_size: int = 8) -> Callable[[], object]:
    model = load_checkpoint(weights).model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    episodes = ToyEpisodes(size=256, seed=256)
    batch = episodes.sample_batch(batch_size)
    bf16 = native_bf16()
    return lambda: step_seconds(model, batch, optimizer, bf16)


def worker(case: str, setting: str, repeats: int, threads: int) -> dict[str, float]:
    """One process's measurement: the allocator set (or not) before any tensor exists."""
    if setting == "kept" and not keep_freed_memory():
        raise SystemExit("keep_freed_memory() changed nothing here (no glibc, or IRIS_MALLOC_DEFAULTS is set)")
    torch.set_num_threads(threads)
    call = _training_step(WEIGHTS) if case == "train_step256" else _workload(case, "eager", 8, "cpu", WEIGHTS, 128)
    call()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"seconds": statistics.median(times), "faults": (usage.ru_minflt - faults) / repeats,
            "peak_mb": usage.ru_maxrss / 1024}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("allocator.md"))
    parser.add_argument("--worker", nargs=2, metavar=("CASE", "SETTING"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(*args.worker, args.repeats, args.threads)))
        return
    lines = [f"# glibc allocator: default against `keep_freed_memory` ({args.rounds} rounds, {args.repeats} timed "
             f"calls each, {args.threads} thread(s), torch {torch.__version__})", "",
             "| case | default s | kept s | default / kept | default faults per call | kept faults per call "
             "| default peak MB | kept peak MB |", "|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for case in args.cases:
        results: dict[str, list[dict[str, float]]] = {setting: [] for setting in SETTINGS}
        for _ in range(args.rounds):
            for setting in SETTINGS:
                command = [sys.executable, __file__, "--worker", case, setting, "--repeats", str(args.repeats),
                           "--threads", str(args.threads)]
                done = subprocess.run(command, capture_output=True, text=True, check=True)
                results[setting].append(json.loads(done.stdout.strip().splitlines()[-1]))
        medians = {setting: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
                   for setting, runs in results.items()}
        default, kept = medians["default"], medians["kept"]
        lines.append(f"| {case} | {default['seconds']:.3f} | {kept['seconds']:.3f} | "
                     f"{default['seconds'] / kept['seconds']:.2f}x | {default['faults']:.0f} | {kept['faults']:.0f} | "
                     f"{default['peak_mb']:.0f} | {kept['peak_mb']:.0f} |")
        print(lines[-1], flush=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
