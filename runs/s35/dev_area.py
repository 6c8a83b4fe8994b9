"""Dev one-shot predicted / true foreground area per task (training patients only; same pairs as dev_oneshot.py).
Usage: dev_area.py CKPT"""

import sys

import numpy as np
import torch

from iris_engine.checkpoint import load_checkpoint
from iris_engine.data.slices import build_slice_bank
from iris_engine.data.splits import Split, dev_split
from iris_engine.evaluation.harness import EvalConfig, Evaluator, case_dices, evaluation_tasks

torch.set_num_threads(1)
loaded = load_checkpoint(sys.argv[1])
split = dev_split(Split.load("assets/weights/split.json"))
config = EvalConfig(seeds=(0, 1), max_queries=8)
bank = build_slice_bank(size=config.score_scale * loaded.model.config.image_size)
evaluator = Evaluator(loaded.model, loaded.memory_bank, bank, split, config)
for spec in evaluation_tasks(bank, split):
    ratios, dices = [], []
    for seed in config.seeds:
        pairs = evaluator.pairs(spec, 1, seed)
        predictions = evaluator.predict(pairs, torch.stack([p.query_image for p in pairs]))
        truth = torch.stack([p.query_mask[0] > 0.5 for p in pairs])
        ratios.append(float(predictions.sum() / truth.sum()))
        dices.append(float(np.mean(list(case_dices(predictions, pairs).values()))))
    mean_area = float(torch.stack([p.query_mask[0] for p in pairs]).sum() / len(pairs))
    print(f"{spec.dataset:20s} {spec.class_name:30s} dice {np.mean(dices):.3f} area ratio {np.mean(ratios):.2f} "
          f"true area {mean_area:.0f} px", flush=True)
