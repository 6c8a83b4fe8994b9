"""`iris evaluate`: Dice of every strategy per task on held-out cases, with baselines and a context check.

Supports and queries always come from different patients: queries are slices of the split's TEST
patients that show the class; supports are the middle class slice of other patients (training
patients when the dataset has them, else other test patients). Dice is aggregated per query case
over its evaluated slices, then averaged over cases; mean +- std is over the support draws (seeds).

Slices are scored on a grid `score_scale` x the model's input (256 px for the 128 px model): the model's inputs
are area-averaged down from it and its probabilities resized back up, except for thin structures, which the
engine segments at twice the input size (`iris_engine.input_scale`) straight from that grid.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from iris_engine import strategies
from iris_engine.checkpoint import load_checkpoint
from iris_engine.config import InferenceConfig
from iris_engine.data.episodes import EvalPair, iter_eval_pairs
from iris_engine.data.slices import SliceBank, build_slice_bank
from iris_engine.data.splits import Split, make_split
from iris_engine.errors import IrisInputError
from iris_engine.evaluation.baselines import copy_support_mask, intensity_nearest_neighbour
from iris_engine.evaluation.report import write_report
from iris_engine.input_scale import FINE_SCALE, support_inputs, to_model_grid, to_score_grid
from iris_engine.memory_bank import MemoryBank
from iris_engine.metrics import hd95
from iris_engine.model.iris import IrisModel

GROUP_SEEN = "held-out cases of training tasks"
GROUP_DATASET = "held-out dataset (unseen modality)"
GROUP_CLASS = "class never seen in training"


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate and how hard."""

    seeds: tuple[int, ...] = (0, 1, 2)
    max_queries: int = 24
    ensemble_sizes: tuple[int, ...] = (3, 5)
    tuning_steps: int = 20
    tuning_lr: float = 1e-2
    threshold: float = 0.5
    score_scale: int = FINE_SCALE  # slices scored at this multiple of the model's input size
    fine_scale_thickness: float = InferenceConfig.fine_scale_thickness  # 0: every task at the model's input size


@dataclass(frozen=True)
class TaskSpec:
    group: str
    dataset: str
    class_name: str
    support_from: str
    is_3d: bool


@dataclass
class TaskResult:
    spec: TaskSpec
    dice: dict[str, list[float]] = field(default_factory=dict)
    case_dice: dict[str, list[dict[str, float]]] = field(default_factory=dict)  # per support draw: case -> Dice
    hd95: dict[str, list[float]] = field(default_factory=dict)
    support_patients: dict[str, list[list[str]]] = field(default_factory=dict)
    query_patients: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def evaluation_tasks(bank: SliceBank, split: Split) -> list[TaskSpec]:
    """Every (dataset, class) with test patients, grouped as seen / unseen dataset / unseen class."""
    specs = []
    held_classes = {tuple(pair) for pair in split.held_out_classes}
    for dataset in bank.datasets:
        if not split.test_cases.get(dataset):
            continue
        is_3d = bool((bank.slice_index[bank.dataset_slices(dataset)] > 0).any()) and dataset != "isbi_em"
        for class_name in bank.class_names[dataset]:
            if dataset in split.held_out_datasets:
                group = GROUP_DATASET
            elif (dataset, class_name) in held_classes:
                group = GROUP_CLASS
            else:
                group = GROUP_SEEN
            has_train = bool(split.train_cases.get(dataset))
            specs.append(TaskSpec(group, dataset, class_name, "train" if has_train else "test", is_3d))
    return specs


def _subset(pairs: list[EvalPair], max_queries: int) -> list[EvalPair]:
    """Query slices that show the class, evenly spread over the (sorted) list, at most max_queries."""
    positive = [p for p in pairs if p.query_mask.sum() > 0]
    if len(positive) <= max_queries:
        return positive
    index = np.linspace(0, len(positive) - 1, max_queries).round().astype(int)
    return [positive[i] for i in index]


def case_dices(predictions: torch.Tensor, pairs: list[EvalPair]) -> dict[str, float]:
    """Dice of each query case, aggregated over its slices."""
    sums: dict[str, list[float]] = {}
    for prediction, pair in zip(predictions, pairs, strict=True):
        truth = pair.query_mask[0] >= 0.5
        pred = prediction.bool()
        entry = sums.setdefault(pair.query_case, [0.0, 0.0])
        entry[0] += 2.0 * float((pred & truth).sum())
        entry[1] += float(pred.sum() + truth.sum())
    return {case: a / b if b > 0 else 1.0 for case, (a, b) in sums.items()}


def case_dice(predictions: torch.Tensor, pairs: list[EvalPair]) -> float:
    """Dice aggregated per query case over its slices, then averaged over cases."""
    return float(np.mean(list(case_dices(predictions, pairs).values())))


def _mean_hd95(predictions: torch.Tensor, pairs: list[EvalPair], scale: int) -> float:
    """Mean per-slice HD95 in model-grid pixels (scored on a grid `scale` x finer) over non-empty predictions."""
    values = [
        hd95(p.bool().numpy(), (pair.query_mask[0] >= 0.5).numpy()) / scale
        for p, pair in zip(predictions, pairs, strict=True)
        if p.any()
    ]
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


class Evaluator:
    """Runs every strategy and baseline on each task for each seed."""

    def __init__(self, model: IrisModel, memory_bank: MemoryBank, bank: SliceBank, split: Split, config: EvalConfig):
        self.model = model.eval()
        self.memory_bank = memory_bank
        self.bank = bank
        self.split = split
        self.config = config
        self.inference = InferenceConfig(threshold=config.threshold, batch_size=16,
                                         fine_scale_thickness=config.fine_scale_thickness)
        self.size = model.config.image_size

    def pairs(self, spec: TaskSpec, n_supports: int, seed: int) -> list[EvalPair]:
        pairs = list(iter_eval_pairs(self.bank, self.split, spec.dataset, spec.class_name, n_supports, seed,
                                     support_from=spec.support_from))
        return _subset(pairs, self.config.max_queries)

    def model_grid(self, images: torch.Tensor, masks: bool = False) -> torch.Tensor:
        """Bank-grid tensors (N, C, H, W) area-averaged down to the model's input (masks: their `covered` pixels)."""
        return to_model_grid(images, self.size, masks)

    def score_grid(self, values: torch.Tensor) -> torch.Tensor:
        """(B, *S) model-grid probabilities -> (B, H, W) on the bank's grid."""
        return to_score_grid(values, tuple(self.bank.images.shape[-2:]))

    def inputs(self, support_images: torch.Tensor, support_masks: torch.Tensor, queries: torch.Tensor,
               fine_allowed: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Model inputs: at twice the input size straight from the bank for a thin support (the engine's rule,
        when the bank is that fine), else area-averaged down to the input size."""
        thickness = self.inference.fine_scale_thickness if fine_allowed else 0.0
        images, masks, scale = support_inputs(support_images, support_masks, self.size, thickness)
        return images, masks, queries if scale == FINE_SCALE else self.model_grid(queries)

    def bank_scale(self, key: str) -> int:
        """The memory bank's input scale for a class (its fine entry where it keeps one, as the engine) when the
        slice bank is that fine, else 1."""
        fine_bank = self.bank.images.shape[-1] == FINE_SCALE * self.size and self.inference.fine_scale_thickness > 0
        return self.memory_bank.input_scale(key) if fine_bank else 1

    def predict(self, pairs: list[EvalPair], queries: torch.Tensor) -> torch.Tensor:
        """Masks on the bank grid from the supports of pairs[0] (one-shot or context ensemble)."""
        images, masks, inputs = self.inputs(pairs[0].support_images, pairs[0].support_masks, queries)
        embedding = strategies.encode_supports(self.model, images, masks, correspondence=self.inference.correspondence,
                                               calibration=self.inference.calibration)
        result = strategies.segment_with_embedding(self.model, inputs, embedding, self.inference)
        return self.score_grid(result.probabilities[:, 0]) >= self.config.threshold

    def _record(self, result: TaskResult, name: str, predictions: torch.Tensor, pairs: list[EvalPair]) -> None:
        per_case = case_dices(predictions, pairs)
        result.dice.setdefault(name, []).append(float(np.mean(list(per_case.values()))))
        result.case_dice.setdefault(name, []).append(per_case)
        if result.spec.is_3d:
            result.hd95.setdefault(name, []).append(_mean_hd95(predictions, pairs,
                                                               self.bank.images.shape[-1] // self.size))
        result.support_patients.setdefault(name, []).append(pairs[0].support_patients)

    def evaluate_task(self, spec: TaskSpec) -> TaskResult:
        result = TaskResult(spec)
        for seed in self.config.seeds:
            try:
                pairs = self.pairs(spec, 1, seed)
            except IrisInputError as error:
                result.notes.append(f"seed {seed}: {error}")
                continue
            if not pairs:
                result.notes.append(f"seed {seed}: no query slice shows the class")
                continue
            queries = torch.stack([p.query_image for p in pairs])
            result.query_patients = sorted({p.query_patient for p in pairs})
            self._record(result, "one_shot", self.predict(pairs, queries), pairs)
            largest = pairs
            for k in self.config.ensemble_sizes:
                try:
                    ensemble_pairs = self.pairs(spec, k, seed)
                except IrisInputError as error:
                    result.notes.append(f"ensemble k={k}, seed {seed}: {error}")
                    continue
                largest = ensemble_pairs
                ensemble_queries = torch.stack([p.query_image for p in ensemble_pairs])
                self._record(result, f"context_ensemble_k{k}", self.predict(ensemble_pairs, ensemble_queries),
                             ensemble_pairs)
            images, masks, inputs = self.inputs(largest[0].support_images, largest[0].support_masks,
                                                torch.stack([p.query_image for p in largest]))
            tuned = strategies.in_context_tuning(self.model, images, masks, inputs, [spec.class_name], self.inference,
                                                 steps=self.config.tuning_steps, lr=self.config.tuning_lr)
            self._record(result, "in_context_tuning", self.score_grid(tuned.probabilities[:, 0])
                         >= self.config.threshold, largest)
            key = f"{spec.dataset}/{spec.class_name}"
            if key in self.memory_bank:
                scale = self.bank_scale(key)
                bank_queries = queries if scale == FINE_SCALE else self.model_grid(queries)
                probabilities = strategies.segment_with_embedding(
                    self.model, bank_queries, self.memory_bank.get(key, scale=scale), self.inference).probabilities
                self._record(result, "memory_bank", self.score_grid(probabilities[:, 0]) >= self.config.threshold,
                             pairs)
            support_images, support_masks, small_queries = self.inputs(
                pairs[0].support_images, pairs[0].support_masks, queries, fine_allowed=False)
            copied = copy_support_mask(support_masks)[0].float().expand(len(pairs), -1, -1)
            self._record(result, "baseline_copy_support", self.score_grid(copied) >= 0.5, pairs)
            knn = torch.stack([intensity_nearest_neighbour(support_images, support_masks, q, seed=seed)[0]
                               for q in small_queries])
            self._record(result, "baseline_intensity_knn", self.score_grid(knn.float()) >= 0.5, pairs)
        return result

    def context_sensitivity(self, dataset: str, classes: list[str], seed: int = 0) -> dict[str, Any] | None:
        """Same queries, supports of two structures: each prediction should match its own structure."""
        if len(classes) < 2:
            return None
        first, second = classes[:2]
        value_a, value_b = self.bank.class_value(dataset, first), self.bank.class_value(dataset, second)
        try:
            pairs_a = list(iter_eval_pairs(self.bank, self.split, dataset, first, 1, seed, support_from="train"))
            pairs_b = list(iter_eval_pairs(self.bank, self.split, dataset, second, 1, seed, support_from="train"))
        except IrisInputError:
            return None
        labels = {(p.query_case, p.query_slice_index): p for p in pairs_a}
        both = [p for p in pairs_b if (p.query_case, p.query_slice_index) in labels]
        rows = [self.bank_row(p) for p in both]
        keep = [i for i, row in enumerate(rows)
                if (self.bank.labels[row] == value_a).any() and (self.bank.labels[row] == value_b).any()]
        both = [both[i] for i in keep][: self.config.max_queries]
        if not both:
            return None
        queries = torch.stack([p.query_image for p in both])
        truth_a = torch.stack([torch.from_numpy(self.bank.labels[self.bank_row(p)] == value_a) for p in both])
        truth_b = torch.stack([torch.from_numpy(self.bank.labels[self.bank_row(p)] == value_b) for p in both])
        pred_a = self.predict(pairs_a[:1], queries)
        pred_b = self.predict(pairs_b[:1], queries)

        def dice(x: torch.Tensor, y: torch.Tensor) -> float:
            total = float(x.sum() + y.sum())
            return 2.0 * float((x & y).sum()) / total if total else 1.0

        return {
            "dataset": dataset, "class_a": first, "class_b": second, "queries": len(both),
            "dice_a_vs_a": dice(pred_a, truth_a), "dice_b_vs_b": dice(pred_b, truth_b),
            "dice_a_vs_b": dice(pred_a, truth_b), "dice_b_vs_a": dice(pred_b, truth_a),
            "mask_overlap_a_b": dice(pred_a, pred_b),
        }

    def bank_row(self, pair: EvalPair) -> int:
        """Row of the bank holding a pair's query slice."""
        rows = np.nonzero((self.bank.case_ids == pair.query_case) & (self.bank.slice_index == pair.query_slice_index))
        return int(rows[0][0])


def run_evaluation(
    checkpoint: Path,
    out: Path,
    split: Split,
    config: EvalConfig,
    bank: SliceBank | None = None,
    datasets: list[str] | None = None,
    data_root: Path | None = None,
) -> dict[str, Any]:
    """Evaluate one checkpoint; the slice bank is built at the model's input size unless given."""
    loaded = load_checkpoint(checkpoint)
    if bank is None:
        bank = build_slice_bank(root=data_root, size=config.score_scale * loaded.model.config.image_size)
    evaluator = Evaluator(loaded.model, loaded.memory_bank, bank, split, config)
    specs = [s for s in evaluation_tasks(bank, split) if datasets is None or s.dataset in datasets]
    start = time.perf_counter()
    results = []
    for index, spec in enumerate(specs):
        print(f"[{index + 1}/{len(specs)}] {spec.dataset}/{spec.class_name} ({spec.group})", flush=True)
        results.append(evaluator.evaluate_task(spec))
    sensitivity = []
    for dataset in sorted({s.dataset for s in specs}):
        classes = [s.class_name for s in specs if s.dataset == dataset and s.group == GROUP_SEEN]
        entry = evaluator.context_sensitivity(dataset, classes)
        if entry is not None:
            sensitivity.append(entry)
    payload = {
        "checkpoint": str(checkpoint),
        "model_version": loaded.model.version,
        "checkpoint_metadata": loaded.metadata,
        "split_seed": split.seed,
        "split_fingerprint": split.fingerprint(),
        "held_out_datasets": list(split.held_out_datasets),
        "held_out_classes": [list(p) for p in split.held_out_classes],
        "config": asdict(config),
        "support_calibration": asdict(evaluator.inference.calibration),
        "memory_bank_fine": [key for key in loaded.memory_bank.class_names if evaluator.bank_scale(key) > 1],
        "seconds": round(time.perf_counter() - start, 1),
        "tasks": [
            {**asdict(r.spec), "dice": r.dice, "case_dice": r.case_dice, "hd95": r.hd95,
             "support_patients": r.support_patients, "query_patients": r.query_patients, "notes": r.notes}
            for r in results
        ],
        "context_sensitivity": sensitivity,
    }
    write_report(payload, out)
    return payload


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iris evaluate", description="Evaluate a checkpoint on held-out cases.")
    parser.add_argument("--checkpoint", type=Path, default=Path("assets/weights/iris2d.pt"))
    parser.add_argument("--split", type=Path, default=None, help="split JSON (default: the checkpoint run's split)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of a fresh split when no file is given")
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--datasets", nargs="*", default=None)
    parser.add_argument("--out", type=Path, default=Path("runs/evaluation"))
    parser.add_argument("--seeds", type=int, nargs="*", default=list(EvalConfig.seeds))
    parser.add_argument("--max-queries", type=int, default=EvalConfig.max_queries)
    parser.add_argument("--tuning-steps", type=int, default=EvalConfig.tuning_steps)
    parser.add_argument("--score-scale", type=int, default=EvalConfig.score_scale,
                        help="score on a grid this many times the model's input size (1: the model's grid)")
    parser.add_argument("--fine-scale-thickness", type=float, default=EvalConfig.fine_scale_thickness,
                        help="support structures thinner than this (model-grid pixels) run at 2x; 0: off")
    parser.add_argument("--threads", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    split_path = args.split or args.checkpoint.parent / "split.json"
    split = Split.load(split_path) if split_path.exists() else make_split(args.split_seed, root=args.data_root)
    config = EvalConfig(seeds=tuple(args.seeds), max_queries=args.max_queries, tuning_steps=args.tuning_steps,
                        score_scale=args.score_scale, fine_scale_thickness=args.fine_scale_thickness)
    payload = run_evaluation(args.checkpoint, args.out, split, config, datasets=args.datasets, data_root=args.data_root)
    print(json.dumps({"report": str(args.out / "report.md"), "seconds": payload["seconds"]}))
    return payload
