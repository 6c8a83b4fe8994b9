"""Dev click protocol (training patients) logging every simulated click: sign, whether it lands on the mask's
connected component / empty slice, Dice before and after, and the clicks on their wrong side before they are honoured
(events_shipped.json was written before that count was added; events_v.json has it). click_events.py OUT.json"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from iris_engine.data.splits import Split, dev_split
from iris_engine.evaluation import refinement as ev
from iris_engine.refinement import NEGATIVE, POSITIVE, RefineConfig, next_click, refine_on_grid

EVENTS: list[dict] = []
VIOLATIONS: list[int] = []
import iris_engine.refinement as rf
_honour = rf.honour


def honour(probability, clicks, threshold):
    wrong = int(((clicks == POSITIVE) & (probability < threshold)).sum() + ((clicks == NEGATIVE) & (probability >= threshold)).sum())
    VIOLATIONS.append(wrong)
    return _honour(probability, clicks, threshold)


rf.honour = honour


def simulate(image, truth, start, config, tuner, max_clicks, target, learned=None, view=None):
    clicks = np.zeros(truth.shape, dtype=np.uint8)
    probability = start
    scores = [ev.dice(start >= config.threshold, truth)]
    for n in range(max_clicks):
        if n >= 5 and max(scores) >= target:
            break
        mask = probability >= config.threshold
        placed = next_click(mask, truth)
        if placed is None:
            scores.append(scores[-1])
            continue
        position, positive = placed
        labels, _ = ndimage.label(mask[..., position[2]])
        on_component = bool(labels[position[:2]] > 0) if not positive else bool(
            ndimage.binary_dilation(mask[..., position[2]], iterations=3)[position[:2]])
        clicks[position] = POSITIVE if positive else NEGATIVE
        VIOLATIONS.clear()
        begin = time.process_time()
        probability = refine_on_grid(image, start, clicks, config, view, tuner, learned=learned)
        scores.append(ev.dice(probability >= config.threshold, truth))
        EVENTS.append({"n": n + 1, "positive": positive, "near_mask": on_component, "area": int(mask.sum()),
                       "truth_area": int(truth.sum()), "before": scores[-2], "after": scores[-1],
                       "method": config.method, "violations": list(VIOLATIONS), "clicks": int((clicks > 0).sum())})
    return scores, 0.0


ev.simulate = simulate
out, args = Path(sys.argv[1]), sys.argv[2:]
overrides = {k: type(getattr(RefineConfig(), k))(v) for k, v in (a.split("=") for a in args if "=" in a)}
torch.set_num_threads(1)
split = dev_split(Split.load("assets/weights/split.json"))
config = ev.RefineEvalConfig(methods=("learned",), max_queries=6, seed=0)
payload = ev.run(Path("assets/weights/iris2d.pt"), split, config, RefineConfig(**overrides), log=False,
                 fine_click_refiner=Path("assets/weights/click_refiner_fine.pt"))
print(json.dumps(ev.summary(payload).get("mean over datasets")))
out.write_text(json.dumps({"events": EVENTS, "summary": ev.summary(payload)}))
