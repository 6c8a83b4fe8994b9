"""Dev click protocol with the refiner's change gated by distance to the clicks:
gate_probe.py OUT MULT [key=value ...]; gate exp(-(d / (MULT x structure radius))^2), radius = 3 x mean inner
distance of the start mask on the slice (no gate on an empty slice)."""
import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from iris_engine import refinement as rf
from iris_engine.data.splits import Split, dev_split
from iris_engine.evaluation import refinement as ev
from iris_engine.thin_clicks import mean_inner_distance

out, mult, args = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
original = rf.LearnedClicks.refine


def gated(self, probability, clicks, slices):
    refined = original(self, probability, clicks, slices)
    for i in range(probability.shape[2]):
        mask = probability[:, :, i] >= 0.5
        if mask.sum() < 4 or not (clicks[:, :, i] > 0).any():
            continue
        radius = 3.0 * mean_inner_distance(mask)
        distance = ndimage.distance_transform_edt(clicks[:, :, i] == 0)
        gate = np.exp(-((distance / (mult * radius)) ** 2))
        refined[:, :, i] = probability[:, :, i] + gate * (refined[:, :, i] - probability[:, :, i])
    return refined


if mult > 0:
    rf.LearnedClicks.refine = gated
overrides = {k: type(getattr(rf.RefineConfig(), k))(v) for k, v in (a.split("=") for a in args if "=" in a)}
torch.set_num_threads(1)
em = "--em" in args
split = (Split.load("runs/s21/dev_em_split.json") if em else dev_split(Split.load("assets/weights/split.json")))
config = ev.RefineEvalConfig(methods=("learned",), max_queries=6, seed=0)
payload = ev.run(Path("assets/weights/iris2d.pt"), split, config, rf.RefineConfig(**overrides), log=False,
                 fine_click_refiner=Path("assets/weights/click_refiner_fine.pt"), workers=1)
ev.write(payload, out)
print(json.dumps({"mult": mult, "mean": ev.summary(payload).get("mean over datasets")}))
