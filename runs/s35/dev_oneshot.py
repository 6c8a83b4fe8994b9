"""Dev one-shot probe (training patients only): dev_split of the shipped split, support draws 0 and 1, 8 queries
per task, 256 px scoring, the engine's rule (fine scale, vote, calibration). Usage: dev_oneshot.py CKPT OUT.json"""

import json
import sys
import time

import numpy as np
import torch

from iris_engine.checkpoint import load_checkpoint
from iris_engine.data.slices import build_slice_bank
from iris_engine.data.splits import Split, dev_split
from iris_engine.evaluation.harness import GROUP_CLASS, GROUP_SEEN, EvalConfig, Evaluator, case_dices, evaluation_tasks

torch.set_num_threads(1)
checkpoint, out = sys.argv[1], sys.argv[2]
loaded = load_checkpoint(checkpoint)
split = dev_split(Split.load("assets/weights/split.json"))
config = EvalConfig(seeds=(0, 1), max_queries=8)
bank = build_slice_bank(size=config.score_scale * loaded.model.config.image_size)
evaluator = Evaluator(loaded.model, loaded.memory_bank, bank, split, config)
start = time.perf_counter()
tasks = {}
for spec in evaluation_tasks(bank, split):
    dices = []
    for seed in config.seeds:
        pairs = evaluator.pairs(spec, 1, seed)
        if not pairs:
            continue
        predictions = evaluator.predict(pairs, torch.stack([p.query_image for p in pairs]))
        dices.append(float(np.mean(list(case_dices(predictions, pairs).values()))))
    tasks[f"{spec.dataset}/{spec.class_name}"] = {"group": spec.group, "dice": float(np.mean(dices))}
    print(spec.dataset, spec.class_name, spec.group, round(tasks[f"{spec.dataset}/{spec.class_name}"]["dice"], 4),
          flush=True)
summary = {group: float(np.mean([t["dice"] for t in tasks.values() if t["group"] == group]))
           for group in (GROUP_SEEN, GROUP_CLASS)}
counts = {group: sum(t["group"] == group for t in tasks.values()) for group in (GROUP_SEEN, GROUP_CLASS)}
result = {"checkpoint": checkpoint, "summary": summary, "counts": counts, "tasks": tasks,
          "seconds": round(time.perf_counter() - start, 1)}
json.dump(result, open(out, "w"), indent=1)
print(json.dumps({"summary": summary, "counts": counts, "seconds": result["seconds"]}))
