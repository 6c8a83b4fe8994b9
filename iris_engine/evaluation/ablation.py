"""Ablation at equal iterations: the v1 recipe, + pseudo-label tasks, + the support-context path, and both.

Each variant trains from scratch with the same seed, iterations and batch size (a variant whose final checkpoint
exists is not retrained), then is measured on the same support = query sample and the same held-out one-shot
tasks. Short on CPU; the table says so.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from iris_engine.checkpoint import load_checkpoint
from iris_engine.data.catalog import default_datasets
from iris_engine.data.shared_paths import shared_data_dir
from iris_engine.data.slices import build_slice_bank
from iris_engine.data.splits import Split
from iris_engine.errors import IrisInputError
from iris_engine.evaluation.harness import (
    GROUP_CLASS,
    GROUP_DATASET,
    GROUP_SEEN,
    EvalConfig,
    Evaluator,
    case_dice,
    evaluation_tasks,
)
from iris_engine.evaluation.sanity import SanityConfig, run_sanity
from iris_engine.memory_bank import MemoryBank
from iris_engine.training import run as train_run

V1_MIX = ["--synthetic-fraction", "0.3", "--superpixel-fraction", "0", "--same-volume-fraction", "0",
          "--task-augment-prob", "0"]
V2_MIX = ["--synthetic-fraction", "0.1", "--superpixel-fraction", "0.45", "--same-volume-fraction", "0.35",
          "--task-augment-prob", "0.5"]
VARIANTS = {
    "v1 recipe": [*V1_MIX, "--no-similarity-path"],
    "+ pseudo-label tasks": [*V2_MIX, "--no-similarity-path"],
    "+ support-context path": V1_MIX,
    "both (v2)": V2_MIX,
}
EVAL_DATASETS = ["chaos_mr", "mscmr_cardiac_mr", "covid_cxr", "ph2_dermoscopy", "segthor_ct", "hc18_fetal_us"]


def one_shot_by_group(checkpoint: Path, split: Split, config: EvalConfig) -> dict[str, float]:
    """Mean one-shot Dice per task group on EVAL_DATASETS (supports and queries from different patients)."""
    model = load_checkpoint(checkpoint).model
    bank = build_slice_bank(size=model.config.image_size)
    evaluator = Evaluator(model, MemoryBank(), bank, split, config)
    scores: dict[str, list[float]] = {}
    for spec in evaluation_tasks(bank, split):
        if spec.dataset not in EVAL_DATASETS:
            continue
        try:
            pairs = evaluator.pairs(spec, 1, config.seeds[0])
        except IrisInputError:
            continue
        if pairs:
            queries = torch.stack([p.query_image for p in pairs])
            masks = evaluator.predict(pairs, queries)
            scores.setdefault(spec.group, []).append(case_dice(masks, pairs))
    return {group: float(np.mean(values)) for group, values in scores.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m iris_engine.evaluation.ablation")
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    root = shared_data_dir()
    rows = []
    for name, flags in VARIANTS.items():
        run_dir = args.out / name.replace(" ", "_").replace("+", "plus").replace("(", "").replace(")", "")
        checkpoint = run_dir / "final.pt"
        if not checkpoint.exists():
            train_run.main(["--out", str(run_dir), "--iterations", str(args.iterations), "--threads",
                            str(args.threads), "--seed", "0", "--warmup-iterations",
                            str(max(1, args.iterations // 10)), *flags])
        model = load_checkpoint(checkpoint).model
        sanity = run_sanity(model, root, default_datasets(), SanityConfig(draws=1), seed=0, max_classes=3)
        split = Split.load(run_dir / "split.json")
        groups = one_shot_by_group(checkpoint, split, EvalConfig(seeds=(0,), max_queries=6))
        rows.append({"variant": name, "support_equals_query": float(np.mean([r["dice"] for r in sanity])),
                     "held_out_patients": groups.get(GROUP_SEEN, float("nan")),
                     "unseen_classes": groups.get(GROUP_CLASS, float("nan")),
                     "unseen_modality": groups.get(GROUP_DATASET, float("nan"))})
        (args.out / "ablation.json").write_text(json.dumps(rows, indent=2))
    lines = [f"Ablation: each variant trained from scratch for {args.iterations} iterations (batch 8, seed 0, "
             f"{args.threads} CPU thread); support = query over 3 structures per dataset (1 slice each); one-shot "
             f"Dice (support draw seed 0, <= 6 query slices per task, supports and queries from different patients) "
             f"on {', '.join(EVAL_DATASETS)}.", "",
             "| variant | support = query | held-out patients | unseen classes | unseen modality |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['support_equals_query']:.3f} | {r['held_out_patients']:.3f} | "
              f"{r['unseen_classes']:.3f} | {r['unseen_modality']:.3f} |" for r in rows]
    (args.out / "ablation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
