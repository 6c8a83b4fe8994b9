"""Rule 5: the dev click protocol (training patients) through the engine's sequential path:
dev_seq.py OUT [--sequential=PATH] [key=value ...] (DEV_SEED, DEV_QUERIES as runs/s29/dev_probe.py); the shipped
model-grid and fine refiners as in the shipped protocol."""
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, "runs/s32")
from dev_common import dev_split_and_bank  # noqa: E402

from iris_engine.evaluation import refinement as ev  # noqa: E402
from iris_engine.refinement import RefineConfig  # noqa: E402

out, args = Path(sys.argv[1]), sys.argv[2:]
sequential = next((Path(a.split("=", 1)[1]) for a in args if a.startswith("--sequential=")), None)
overrides = {k: type(getattr(RefineConfig(), k))(v) for k, v in (a.split("=") for a in args
                                                                  if "=" in a and not a.startswith("--"))}
torch.set_num_threads(1)
split, _ = dev_split_and_bank(False)
config = ev.RefineEvalConfig(methods=("learned",), max_queries=int(os.environ.get("DEV_QUERIES", 6)),
                             seed=int(os.environ.get("DEV_SEED", 0)))
payload = ev.run(Path("assets/weights/iris2d.pt"), split, config,
                 RefineConfig(sequential=sequential is not None, **overrides), log=False,
                 fine_click_refiner=Path("assets/weights/click_refiner_fine.pt"), sequential_click_refiner=sequential)
ev.write(payload, out)
print(json.dumps({"overrides": overrides, "sequential": str(sequential),
                  "mean": ev.summary(payload).get("mean over datasets")}))
