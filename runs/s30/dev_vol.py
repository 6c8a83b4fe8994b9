"""Dev volume click protocol (training patients, 2 volumes per structure, seed 0) with RefineConfig overrides:
dev_vol.py OUT [--refiner=PATH] [--fine=PATH] [--methods=a,b] [key=value ...]."""
import json
import sys
from pathlib import Path

import numpy as np
import torch

from iris_engine.data.splits import Split, dev_split
from iris_engine.evaluation import refinement as ev
from iris_engine.refinement import RefineConfig

out, args = Path(sys.argv[1]), sys.argv[2:]
refiner = next((Path(a.split("=", 1)[1]) for a in args if a.startswith("--refiner=")), None)
fine = next((Path(a.split("=", 1)[1]) for a in args if a.startswith("--fine=")), None)  # default: none
methods = next((tuple(a.split("=", 1)[1].split(",")) for a in args if a.startswith("--methods=")), ("learned",))
overrides = {k: type(getattr(RefineConfig(), k))(v) for k, v in (a.split("=") for a in args
                                                                  if "=" in a and not a.startswith("--"))}
real_queries = ev._queries


def two_volumes(pairs, spec, config):
    stacks = real_queries(pairs, spec, config)
    if len(stacks) <= 2:
        return stacks
    rng = np.random.default_rng(0)
    return [stacks[i] for i in sorted(rng.choice(len(stacks), 2, replace=False))]


ev._queries = two_volumes
torch.set_num_threads(1)
split = dev_split(Split.load("assets/weights/split.json"))
config = ev.RefineEvalConfig(methods=methods, volumes=True)
payload = ev.run(Path("assets/weights/iris2d.pt"), split, config, RefineConfig(**overrides), log=True,
                 click_refiner=refiner, workers=1,
                 fine_click_refiner=fine, use_fine_refiner=fine is not None)
ev.write(payload, out)
print(json.dumps({"overrides": overrides, "summary": ev.summary(payload)}))
