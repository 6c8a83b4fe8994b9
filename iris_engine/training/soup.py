"""`iris average-weights`: a uniform weight average ("model soup", Wortsman et al. 2022) of IRIS checkpoints
fine-tuned from the same weights, with the memory bank rebuilt from the averaged model as `iris train` does;
with `--click-refiners`, the same average of click refiners fine-tuned for one IRIS model."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TypeVar

import torch

from iris_engine.checkpoint import load_checkpoint, load_click_refiner, save_checkpoint, save_click_refiner
from iris_engine.config import TrainConfig
from iris_engine.data.slices import build_slice_bank
from iris_engine.data.splits import Split
from iris_engine.errors import IrisInputError
from iris_engine.model.click_refiner import ClickRefiner
from iris_engine.model.iris import IrisModel
from iris_engine.training.bank_refresh import refresh_memory_bank

Module = TypeVar("Module", IrisModel, ClickRefiner)


def average_models(models: list[Module]) -> Module:
    """The first model with every floating-point weight replaced by the mean over all models (same config)."""
    if len(models) < 2:
        raise IrisInputError("give at least two checkpoints to average")
    first = models[0]
    states = [m.state_dict() for m in models]
    if any(m.config != first.config or s.keys() != states[0].keys() for m, s in zip(models, states, strict=True)):
        raise IrisInputError("the checkpoints have different model configurations; only fine-tunes of the same "
                             "weights can be averaged")
    averaged = {k: torch.stack([s[k].float() for s in states]).mean(0).to(v.dtype) if v.is_floating_point() else v
                for k, v in states[0].items()}
    first.load_state_dict(averaged)
    return first


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iris average-weights", description=__doc__.split("\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path, help="two or more fine-tunes of the same weights")
    parser.add_argument("--out", type=Path, required=True, help="the averaged checkpoint")
    parser.add_argument("--click-refiners", action="store_true",
                        help="the files are click refiners trained for one IRIS model (no split, version or bank)")
    parser.add_argument("--split", type=Path, help="split whose training patients fill the bank (IRIS checkpoints)")
    parser.add_argument("--version", help="model version stamped on the result (IRIS checkpoints)")
    parser.add_argument("--data-root", type=Path, default=None, help="MSD-style datasets root (default ../shared/data)")
    parser.add_argument("--datasets", nargs="*", default=None, help="dataset folder names (default: all known)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="draws the memory bank's supports")
    return parser


def _average_click_refiners(paths: list[Path], out: Path) -> Path:
    """Average click refiner files that read the same IRIS model's features."""
    loaded = [load_click_refiner(path) for path in paths]
    versions = {item.iris_model_version for item in loaded}
    if len(versions) > 1:
        raise IrisInputError(f"the click refiners were trained for different IRIS models: {sorted(versions)}")
    refiner = average_models([item.refiner for item in loaded]).eval()
    metadata = {**loaded[0].metadata,
                "averaged_from": [f"{p} ({item.metadata.get('iterations', '?')} iterations, seed "
                                  f"{item.metadata.get('recipe', {}).get('seed', '?')})"
                                  for p, item in zip(paths, loaded, strict=True)]}
    path = save_click_refiner(out, refiner, loaded[0].iris_model_version, metadata)
    print(f"the mean of {len(loaded)} click refiners for {loaded[0].iris_model_version} -> {path}", flush=True)
    return path


def main(argv: list[str] | None = None) -> Path:
    parser = build_parser()
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.click_refiners:
        return _average_click_refiners(args.checkpoints, args.out)
    if args.split is None or args.version is None:
        parser.error("averaging IRIS checkpoints needs --split and --version")
    loaded = [load_checkpoint(path) for path in args.checkpoints]
    model = average_models([item.model for item in loaded]).eval()
    model.version = args.version
    split = Split.load(args.split)
    datasets = tuple(args.datasets) if args.datasets else None
    bank = build_slice_bank(datasets, root=args.data_root, size=model.config.image_size, verbose=True)
    memory = refresh_memory_bank(model, bank, split, TrainConfig().memory_momentum, seed=args.seed)
    metadata = {**loaded[0].metadata, "model_version": args.version, "split": args.split.name,
                "split_fingerprint": split.fingerprint(),
                "averaged_from": [f"{p} ({item.metadata.get('model_version', '?')}, "
                                  f"{item.metadata.get('iterations', '?')} iterations)"
                                  for p, item in zip(args.checkpoints, loaded, strict=True)]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(args.out, model, memory, None, metadata)
    print(f"{args.version}: the mean of {len(loaded)} checkpoints -> {args.out}", flush=True)
    return args.out
