"""Seconds per training step on the CPU, float32 against bfloat16 autocast (`TrainConfig.cpu_bf16`), side by side.

Usage: python benchmarks/benchmark_training.py [--weights assets/weights/iris2d.pt] [--batch-size 8] [--steps 4]
       [--threads 1] [--sizes 128 256]
Each step is what `iris train` does per iteration (`trainer.embeddings_and_loss`): the shipped model's forward
pass on a batch of one-support episodes (toy images and masks at each size; the model is fully convolutional and
attends over its own grid), the Dice + BCE loss, backward, gradient clipping and an AdamW step. Both precisions
run the same batches, alternating, after one warm-up step each; the table gives the median seconds per step and
the ratio float32 / bfloat16. bfloat16 autocast is only fast on a CPU that computes it natively (AVX512-BF16 or
AMX): elsewhere `iris train` keeps float32 and this benchmark says so.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

from iris_engine.checkpoint import load_checkpoint
from iris_engine.data.toy import ToyEpisodes
from iris_engine.model.iris import IrisModel
from iris_engine.precision import native_bf16
from iris_engine.training.trainer import embeddings_and_loss

ROOT = Path(__file__).resolve().parents[1]


def step_seconds(model: IrisModel, batch: object, optimizer: torch.optim.Optimizer, bf16: bool) -> float:
    """Wall seconds of one training step on `batch`."""
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        _, loss = embeddings_and_loss(model, batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=ROOT / "assets" / "weights" / "iris2d.pt")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_checkpoint(args.weights).model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    print(f"# training step, batch {args.batch_size}, {args.threads} thread(s), {platform.processor() or 'cpu'}, "
          f"torch {torch.__version__}, native bfloat16: {native_bf16()}")
    print("| size | float32 s/step | bfloat16 s/step | float32 / bfloat16 |")
    print("|---|---|---|---|")
    for size in args.sizes:
        episodes = ToyEpisodes(size=size, seed=size)
        batches = [episodes.sample_batch(args.batch_size) for _ in range(args.steps + 1)]
        times: dict[bool, list[float]] = {False: [], True: []}
        for index, batch in enumerate(batches):
            for bf16 in (False, True):
                seconds = step_seconds(model, batch, optimizer, bf16)
                if index:
                    times[bf16].append(seconds)
        fp32, bf16 = statistics.median(times[False]), statistics.median(times[True])
        print(f"| {size} | {fp32:.2f} | {bf16:.2f} | {fp32 / bf16:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
