"""The memory bank of a trained model, rebuilt from its final weights; `iris refresh-bank` rebuilds a checkpoint's.

Each train class of the split gets the mean task tokens of up to `supports_per_class` train-patient supports. A
thin class (thinner than `InferenceConfig.fine_scale_thickness` model-grid pixels over those supports, the one-shot
rule of `iris_engine.input_scale`) also gets a fine entry from the same slices read at twice the input size, when
a slice bank of that size is given, unless its other training slices (up to `CHECK_SLICES`) are segmented worse
from the fine entry at twice the size than from the plain one at the input size (a `FineCheck`).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from iris_engine.checkpoint import load_checkpoint, save_checkpoint
from iris_engine.config import InferenceConfig, TrainConfig
from iris_engine.data.episodes import EpisodeConfig, EpisodeSampler
from iris_engine.data.slices import SliceBank, build_slice_bank
from iris_engine.data.splits import Split
from iris_engine.embedding import TaskEmbedding
from iris_engine.errors import IrisInputError
from iris_engine.input_scale import FINE_SCALE, choose_input_scale, covered
from iris_engine.memory_bank import MemoryBank
from iris_engine.metrics import dice
from iris_engine.model.iris import IrisModel
from iris_engine.strategies import segment_with_embedding

CHECK_SLICES = 8


@dataclass(frozen=True)
class FineCheck:
    """Mean Dice (on the fine grid) over a thin class's other training slices from its plain entry at the input
    size and from its fine entry at twice the size; the fine entry is kept unless it scores lower."""

    slices: int
    plain: float
    fine: float

    @property
    def kept(self) -> bool:
        return self.fine >= self.plain


def _class_tensors(bank: SliceBank, rows: np.ndarray, value: int) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.from_numpy(bank.images[rows].astype("float32"))[:, None]
    masks = torch.from_numpy((bank.labels[rows] == value).astype("float32"))[:, None]
    return images, masks


def _slice_index(bank: SliceBank) -> dict[tuple[str, int], int]:
    """Row of each (case, slice) in a bank."""
    return {(c, int(z)): i for i, (c, z) in enumerate(zip(bank.case_ids, bank.slice_index, strict=True))}


def _fine_rows(bank: SliceBank, fine_index: dict[tuple[str, int], int], rows: np.ndarray) -> np.ndarray:
    """Rows of the fine bank (`fine_index`, its `_slice_index`) holding the same (case, slice) as `rows` of `bank`
    (those it has)."""
    found = [fine_index.get((bank.case_ids[r], int(bank.slice_index[r]))) for r in rows]
    return np.asarray([i for i in found if i is not None], dtype=np.int64)


def _fine_tokens(model: IrisModel, images: torch.Tensor, masks: torch.Tensor, thickness: float
                 ) -> torch.Tensor | None:
    """Mean tokens of fine-grid supports if the class is thin on the model grid, else None."""
    size = model.config.image_size
    small = covered(F.interpolate(masks, size=(size, size), mode="area")).float()
    if choose_input_scale(small, thickness) != FINE_SCALE:
        return None
    return model.encode_task(images, masks)[:, 0].mean(0)


def _mean_dice(probabilities: torch.Tensor, truth: np.ndarray) -> float:
    """Mean per-slice Dice of (N, H, W) probabilities at 0.5 against (N, H, W) masks."""
    return float(np.mean([dice(p >= 0.5, t) for p, t in zip(probabilities.numpy(), truth, strict=True)]))


def check_fine_entry(model: IrisModel, plain: torch.Tensor, fine: torch.Tensor, images: torch.Tensor,
                     masks: torch.Tensor) -> FineCheck:
    """Both entries (T, C) of one class on fine-grid slices (N, 1, 2S, 2S) that were not its supports."""
    size = model.config.image_size
    config = InferenceConfig(batch_size=CHECK_SLICES, backend="eager")
    small = F.interpolate(images, size=(size, size), mode="area")
    coarse = segment_with_embedding(model, small, TaskEmbedding(plain[None], ["check"]), config).probabilities
    coarse = F.interpolate(coarse, size=images.shape[-2:], mode="bilinear", align_corners=False)
    detailed = segment_with_embedding(model, images, TaskEmbedding(fine[None], ["check"]), config).probabilities
    truth = masks[:, 0].numpy() >= 0.5
    return FineCheck(len(images), _mean_dice(coarse[:, 0], truth), _mean_dice(detailed[:, 0], truth))


def _check_rows(rows: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """Up to CHECK_SLICES of a class's slices that were not its supports, evenly spaced."""
    others = np.setdiff1d(rows, chosen)
    if others.size <= CHECK_SLICES:
        return others
    return others[np.linspace(0, others.size - 1, CHECK_SLICES).round().astype(int)]


def refresh_memory_bank(
    model: IrisModel, bank: SliceBank, split: Split, momentum: float, supports_per_class: int = 16, seed: int = 0,
    fine_bank: SliceBank | None = None, fine_scale_thickness: float = InferenceConfig.fine_scale_thickness,
    checks: dict[str, FineCheck] | None = None,
) -> MemoryBank:
    """Class embeddings of the FINAL model over train-split supports of every train class (and fine entries of
    the thin ones from `fine_bank`, the same slices at FINE_SCALE x the input size, each kept by its `FineCheck`,
    recorded in `checks` when given; a class with no other slice keeps its fine entry).

    The in-training EMA (momentum 0.999) is dominated by early, untrained embeddings on a short CPU
    recipe, so the shipped bank is rebuilt from the final weights.
    """
    if fine_bank is not None and fine_bank.size != FINE_SCALE * model.config.image_size:
        raise IrisInputError(f"the fine slice bank must be {FINE_SCALE * model.config.image_size} px, "
                             f"got {fine_bank.size}")
    sampler = EpisodeSampler(bank, split, EpisodeConfig(synthetic_fraction=0.0, augment=False, max_classes=1), seed)
    memory = MemoryBank(momentum)
    fine_index = _slice_index(fine_bank) if fine_bank is not None else {}
    model.eval()
    with torch.no_grad():
        for dataset, per_class in sampler.class_slices.items():
            for value, rows in per_class.items():
                class_name = bank.class_names[dataset][value - 1]
                chosen = sampler.rng.choice(rows, min(supports_per_class, len(rows)), replace=False)
                tokens = model.encode_task(*_class_tensors(bank, chosen, value))[:, 0].mean(0)
                key = f"{dataset}/{class_name}"
                fine = None
                if fine_bank is not None and fine_scale_thickness > 0:
                    fine_rows = _fine_rows(bank, fine_index, chosen)
                    if fine_rows.size:
                        fine = _fine_tokens(model, *_class_tensors(fine_bank, fine_rows, value), fine_scale_thickness)
                    check_rows = _fine_rows(bank, fine_index, _check_rows(np.asarray(rows), chosen))
                    if fine is not None and check_rows.size:
                        check = check_fine_entry(model, tokens, fine, *_class_tensors(fine_bank, check_rows, value))
                        if checks is not None:
                            checks[key] = check
                        fine = fine if check.kept else None
                memory.update(key, tokens, momentum=0.0, fine_tokens=fine)
    return memory


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iris refresh-bank", description=(
        "Rebuild a checkpoint's memory bank from its weights and split: every train class, plus fine entries "
        "(twice the input size) for the thin ones. The model and its version are unchanged."))
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--split", type=Path, required=True, help="the split the model was trained on")
    parser.add_argument("--out", type=Path, required=True, help="where to write the checkpoint (may be the input)")
    parser.add_argument("--seed", type=int, default=0, help="draws the supports (as `iris train` and "
                                                            "`iris average-weights`)")
    parser.add_argument("--data-root", type=Path, default=None, help="datasets root (default ../shared/data)")
    parser.add_argument("--datasets", nargs="*", default=None, help="dataset folder names (default: all known)")
    parser.add_argument("--no-fine", action="store_true", help="no fine entries")
    parser.add_argument("--threads", type=int, default=1)
    return parser


def main(argv: list[str] | None = None) -> Path:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    loaded = load_checkpoint(args.checkpoint)
    split = Split.load(args.split)
    size = loaded.model.config.image_size
    datasets = tuple(args.datasets) if args.datasets else None
    bank = build_slice_bank(datasets, root=args.data_root, size=size)
    fine_bank = None if args.no_fine else build_slice_bank(datasets, root=args.data_root, size=FINE_SCALE * size)
    checks: dict[str, FineCheck] = {}
    memory = refresh_memory_bank(loaded.model, bank, split, TrainConfig().memory_momentum, seed=args.seed,
                                 fine_bank=fine_bank, checks=checks)
    metadata = {**loaded.metadata, "memory_bank_fine_checks": {k: asdict(v) for k, v in checks.items()}}
    save_checkpoint(args.out, loaded.model, memory, loaded.training_state, metadata)
    for name, check in checks.items():
        print(json.dumps({"class": name, **asdict(check), "kept": check.kept}), flush=True)
    fine = [name for name in memory.class_names if memory.has_fine(name)]
    print(f"{loaded.model.version}: {len(memory)} classes, {len(fine)} with a fine entry ({', '.join(fine)}) "
          f"-> {args.out}", flush=True)
    return args.out


if __name__ == "__main__":
    main()
