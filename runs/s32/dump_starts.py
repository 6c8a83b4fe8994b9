"""Dump (image, truth, start) of the dev click protocol's queries: dump_starts.py OUT.npz [--em] [dataset ...]."""
import sys
from pathlib import Path

import numpy as np
import torch

from dev_common import dev_split_and_bank
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
split, bank = dev_split_and_bank(em)
config = ev.RefineEvalConfig(methods=("disc",), max_queries=10 if em else 6, seed=0)
ev.run(Path("assets/weights/iris2d.pt"), split, config, RefineConfig(), log=False, bank=bank,
       datasets=["isbi_em"] if em else names)
np.savez_compressed(out, **{f"{k}_{i}": r[j] for i, r in enumerate(ROWS) for j, k in enumerate(("image", "truth", "start"))})
print(len(ROWS))
