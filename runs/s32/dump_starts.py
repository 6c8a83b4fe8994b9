"""Dump (image, truth, start) of the dev click protocol's queries: dump_starts.py OUT.npz [--em] [dataset ...]."""
import sys
from pathlib import Path

import numpy as np
import torch

from iris_engine.data.slices import build_slice_bank
from iris_engine.data.splits import Split, dev_split
from iris_engine.evaluation import refinement as ev
from iris_engine.refinement import RefineConfig

out, args = Path(sys.argv[1]), sys.argv[2:]
em = "--em" in args
names = [a for a in args if not a.startswith("--")] or None
ROWS: list = []


def simulate(image, truth, start, config, tuner, max_clicks, target, learned=None, view=None):
    ROWS.append((image, truth, start, view))
    return [0.0] * 6, 0.0


ev.simulate = simulate
torch.set_num_threads(2)
split = Split.load("runs/s21/dev_em_split.json") if em else dev_split(Split.load("assets/weights/split.json"))
bank = None
if em:
    bank = build_slice_bank(("isbi_em",), size=256)
    ids = bank.patient_ids.copy().astype(object)
    for i, case in enumerate(bank.case_ids):
        if str(case).startswith("em_") and 10 <= int(str(case)[3:]) < 20:
            ids[i] = "em_sections_10_19_dev"
    bank.patient_ids = ids
config = ev.RefineEvalConfig(methods=("disc",), max_queries=10 if em else 6, seed=0)
ev.run(Path("assets/weights/iris2d.pt"), split, config, RefineConfig(), log=False, bank=bank,
       datasets=["isbi_em"] if em else names)
np.savez_compressed(out, **{f"{k}_{i}": r[j] for i, r in enumerate(ROWS) for j, k in enumerate(("image", "truth", "start"))})
print(len(ROWS))
