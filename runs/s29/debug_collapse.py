"""Click by click on the dev slices that collapse: sign, mask area, Dice, for the learned method's parts."""
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from iris_engine.data.splits import Split, dev_split
from iris_engine.evaluation import refinement as ev
from iris_engine.refinement import NEGATIVE, POSITIVE, RefineConfig, next_click, refine_on_grid

dataset, class_name = sys.argv[1], sys.argv[2]
real_simulate = ev.simulate


def simulate(image, truth, start, config, tuner, max_clicks, target, learned=None, view=None):
    clicks = np.zeros(truth.shape, dtype=np.uint8)
    probability = start
    print(f"slice: truth {int(truth.sum())} px, start {int((start >= 0.5).sum())} px, "
          f"dice {ev.dice(start >= 0.5, truth):.3f}")
    for n in range(6):
        (position, positive) = next_click(probability >= config.threshold, truth)
        clicks[position] = POSITIVE if positive else NEGATIVE
        probability = refine_on_grid(image, start, clicks, config, view, tuner, learned=learned)
        parts = {}
        for name, cfg in (("local", replace(config, method="local")),
                          ("refiner", replace(config, learned_weight=1.0))):
            p = refine_on_grid(image, start, clicks, cfg, view, tuner, learned=learned)
            parts[name] = (int((p >= 0.5).sum()), round(ev.dice(p >= 0.5, truth), 3))
        mask = probability >= config.threshold
        print(f"  click {n + 1} {'+' if positive else '-'} at {position[:2]}: mask {int(mask.sum())} px, "
              f"dice {ev.dice(mask, truth):.3f}; local {parts['local']}, refiner alone {parts['refiner']}")
    return real_simulate(image, truth, start, config, tuner, max_clicks, target, learned, view)


ev.simulate = simulate
torch.set_num_threads(1)
split = dev_split(Split.load("assets/weights/split.json"))
config = ev.RefineEvalConfig(methods=("learned",))
ev.run(Path("assets/weights/iris2d.pt"), split, config, RefineConfig(), log=False, datasets=[dataset],
       ) if False else None
from iris_engine.checkpoint import load_checkpoint, load_click_refiner
from iris_engine.data.slices import build_slice_bank
from iris_engine.evaluation.harness import evaluation_tasks

model = load_checkpoint("assets/weights/iris2d.pt").model.eval()
refiner = load_click_refiner("assets/weights/click_refiner.pt").refiner
bank = build_slice_bank((dataset,), size=256)
spec = next(s for s in evaluation_tasks(bank, split) if s.class_name == class_name)
ev.evaluate_task(model, bank, split, spec, config, RefineConfig(), refiner)
