"""Seconds per training step on the CPU, float32 against bfloat16 autocast (`TrainConfig.cpu_bf16`), side by side.

Usage: python benchmarks/benchmark_training.py [--weights assets/weights/iris2d.pt] [--batch-size 8] [--steps 4]
       [--threads 1] [--sizes 128 256] [--no-refiner]
Each step is what `iris train` does per iteration (`trainer.embeddings_and_loss`): the shipped model's forward
pass on a batch of one-support episodes (toy images and masks at each size; the model is fully convolutional and
attends over its own grid), the Dice + BCE loss, backward, gradient clipping and an AdamW step. Both precisions
run the same batches, alternating, after one warm-up step each; the table gives the median seconds per step and
the ratio float32 / bfloat16. bfloat16 autocast is only fast on a CPU that computes it natively (AVX512-BF16 or
AMX): elsewhere `iris train` keeps float32 and this benchmark says so.
A last row times a step of `iris train-refiner` (`ClickTrainer.step`: the frozen model's one-shot starts, the
simulated clicks and the shipped click refiner's update) in both precisions on the same toy batches.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from iris_engine.checkpoint import load_checkpoint, load_click_refiner
from iris_engine.data.toy import ToyEpisodes
from iris_engine.model.iris import IrisModel
from iris_engine.precision import native_bf16
from iris_engine.training.click_training import ClickTrainConfig, ClickTrainer
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


def refiner_step_seconds(model: IrisModel, refiner_path: Path, batch_size: int, steps: int) -> tuple[float, float]:
    """Median seconds of a click-refiner training step in float32 and in bfloat16, alternating on equal batches."""
    weights = load_click_refiner(refiner_path).refiner.state_dict()
    trainers = {}
    for bf16 in (False, True):
        config = ClickTrainConfig(batch_size=batch_size, lr=1e-6, warmup_iterations=1, cpu_bf16=bf16)
        episodes = ToyEpisodes(size=model.config.image_size, seed=7)
        trainer = ClickTrainer(model, episodes, config, Path(tempfile.gettempdir()))
        trainer.refiner.load_state_dict(weights)
        trainers[bf16] = trainer
    times: dict[bool, list[float]] = {False: [], True: []}
    for index in range(steps + 1):
        for bf16, trainer in trainers.items():
            start = time.perf_counter()
            trainer.step()
            if index:
                times[bf16].append(time.perf_counter() - start)
    return statistics.median(times[False]), statistics.median(times[True])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=ROOT / "assets" / "weights" / "iris2d.pt")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--refiner", type=Path, default=ROOT / "assets" / "weights" / "click_refiner.pt")
    parser.add_argument("--no-refiner", dest="time_refiner", action="store_false",
                        help="skip the click-refiner training step")
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
    if args.time_refiner:
        fp32, bf16 = refiner_step_seconds(model.eval(), args.refiner, args.batch_size, args.steps)
        size = model.config.image_size
        print(f"| click refiner, {size} | {fp32:.2f} | {bf16:.2f} | {fp32 / bf16:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
