"""Probe (training patients only, dev_split): a thin structure's volume segmented at twice the input size on every
s-th slice only, the slices between given the linear interpolation of their neighbours' probabilities.

With TEST=1 the same on the held-out (test) patients of the shipped split (run once, after the rule's choice).
For every 3D task whose one-shot support is read at 2x, each dev volume (the class's slices +- 2) is segmented on
every slice once (the engine's one-shot path, vote and calibration included); stride s keeps slices 0, s, 2s, ...
and the last, and fills the others by interpolation in z. Prints volume Dice per stride, per task and overall."""
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from iris_engine import strategies
from iris_engine.checkpoint import load_checkpoint
from iris_engine.data.catalog import default_datasets
from iris_engine.data.episodes import iter_eval_pairs
from iris_engine.data.slices import build_slice_bank
from iris_engine.data.splits import Split, dev_split
from iris_engine.evaluation.harness import evaluation_tasks
from iris_engine.evaluation.refinement import RefineEvalConfig, _queries, dice, one_shot_embedding
from iris_engine.input_scale import FINE_SCALE

STRIDES = (1, 2, 3, 4)
torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 1)


def strided(probability: np.ndarray, stride: int) -> np.ndarray:
    """(H, W, Z) probabilities kept on slices 0, s, 2s, ..., last; linear in z between them."""
    z = probability.shape[2]
    kept = sorted(set(range(0, z, stride)) | {z - 1})
    out = np.empty_like(probability)
    for a, b in zip(kept[:-1], kept[1:], strict=True):
        for i in range(a, b + 1):
            t = (i - a) / (b - a)
            out[:, :, i] = (1 - t) * probability[:, :, a] + t * probability[:, :, b]
    if len(kept) == 1:
        out[:, :, 0] = probability[:, :, 0]
    return out


def main() -> None:
    loaded = load_checkpoint("assets/weights/iris2d.pt")
    model = loaded.model.eval()
    split = Split.load(Path("assets/weights/split.json"))
    split = split if os.environ.get("TEST") else dev_split(split)
    config = RefineEvalConfig(volumes=True)
    names = tuple(d for d in default_datasets() if split.test_cases.get(d))
    bank = build_slice_bank(names, size=FINE_SCALE * model.config.image_size)
    rows = []
    for spec in evaluation_tasks(bank, split):
        if not spec.is_3d:
            continue
        pairs = list(iter_eval_pairs(bank, split, spec.dataset, spec.class_name, 1, 0, support_from=spec.support_from))
        if not pairs:
            continue
        embedding, fine = one_shot_embedding(model, pairs[0], config)
        if not fine:
            continue
        for stack, truth, patient in _queries(pairs, spec, config):
            probability = strategies.predict_probabilities(model, stack, embedding, backend="bf16")[:, 0]
            probability = np.moveaxis(probability.numpy(), 0, -1)
            scores = {s: dice(strided(probability, s) >= 0.5, truth) for s in STRIDES}
            rows.append({"task": f"{spec.dataset}/{spec.class_name}", "patient": patient, "slices": truth.shape[2],
                         **{f"s{s}": round(v, 4) for s, v in scores.items()}})
            print(rows[-1], flush=True)
    tasks = sorted({r["task"] for r in rows})
    summary = {t: {f"s{s}": round(float(np.mean([r[f"s{s}"] for r in rows if r["task"] == t])), 4) for s in STRIDES}
               for t in tasks}
    summary["mean over volumes"] = {f"s{s}": round(float(np.mean([r[f"s{s}"] for r in rows])), 4) for s in STRIDES}
    print(json.dumps(summary, indent=1))
    Path(sys.argv[1]).write_text(json.dumps({"rows": rows, "summary": summary}, indent=1))


main()
