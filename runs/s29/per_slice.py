"""Per-slice click curves of method learned on the dev split (training patients): where do later clicks lose?"""
import json
import sys
from pathlib import Path

import torch

from iris_engine.data.splits import Split, dev_split
from iris_engine.evaluation import refinement as ev
from iris_engine.refinement import RefineConfig

out = Path(sys.argv[1])
records = []
real_simulate, real_evaluate = ev.simulate, ev.evaluate_task
current = {}


def simulate(*args, **kwargs):
    scores, seconds = real_simulate(*args, **kwargs)
    records.append({**current, "scores": [round(s, 4) for s in scores]})
    return scores, seconds


def evaluate_task(model, bank, split, spec, *args, **kwargs):
    current.update(dataset=spec.dataset, class_name=spec.class_name)
    return real_evaluate(model, bank, split, spec, *args, **kwargs)


ev.simulate, ev.evaluate_task = simulate, evaluate_task
torch.set_num_threads(1)
split = dev_split(Split.load("assets/weights/split.json"))
config = ev.RefineEvalConfig(methods=("learned",))
payload = ev.run(Path("assets/weights/iris2d.pt"), split, config, RefineConfig(), log=False,
                 click_refiner=Path(sys.argv[2]) if len(sys.argv) > 2 else None)
print(json.dumps(ev.summary(payload).get("mean over datasets")))
out.write_text(json.dumps(records))
