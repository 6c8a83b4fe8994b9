"""`iris bank`: save the slice bank of the shared data, e.g. to train on a machine without it (`iris train --bank`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from iris_engine.data.episodes import training_rows
from iris_engine.data.slices import build_slice_bank
from iris_engine.data.splits import Split

DEFAULT_SPLIT = Path(__file__).resolve().parents[2] / "assets" / "weights" / "split.json"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iris bank", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the .npz to write")
    parser.add_argument("--size", type=int, default=128, help="slice side in pixels")
    parser.add_argument("--data-root", type=Path, default=None, help="MSD-style datasets root (default ../shared/data)")
    parser.add_argument("--datasets", nargs="*", default=None, help="dataset folder names (default: all known)")
    parser.add_argument("--train-only", action="store_true",
                        help="keep only the training slices of --split (test patients never leave the data folder)")
    parser.add_argument("--split", type=Path, default=DEFAULT_SPLIT, help="the split for --train-only")
    parser.add_argument("--compact", action="store_true",
                        help="each image as 8 bits between its minimum and maximum in a JPEG (about 12 x smaller)")
    return parser


def main(argv: list[str] | None = None) -> Path:
    args = build_parser().parse_args(argv)
    datasets = tuple(args.datasets) if args.datasets else None
    bank = build_slice_bank(datasets, root=args.data_root, size=args.size, verbose=True)
    if args.train_only:
        bank = bank.subset(training_rows(bank, Split.load(args.split)))
    bank.save(args.out, compact=args.compact)
    print(f"{len(bank)} slices at {bank.size} px -> {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)", flush=True)
    return args.out
