"""Dev click protocol (training patients) with RefineConfig overrides:
dev_probe.py OUT [--em] [--refiner=PATH] [--fine=PATH] [key=value ...]."""
import json
import sys
from pathlib import Path

import torch

from iris_engine.data.slices import build_slice_bank
from iris_engine.data.splits import Split, dev_split
from iris_engine.evaluation import refinement as ev
from iris_engine.refinement import RefineConfig

out, args = Path(sys.argv[1]), sys.argv[2:]
em = "--em" in args
refiner = next((Path(a.split("=", 1)[1]) for a in args if a.startswith("--refiner=")), None)
fine = next((Path(a.split("=", 1)[1]) for a in args if a.startswith("--fine=")), None)  # default: none
overrides = {k: type(getattr(RefineConfig(), k))(v) for k, v in (a.split("=") for a in args
                                                                  if "=" in a and not a.startswith("--"))}
torch.set_num_threads(1)
split = (Split.load("runs/s21/dev_em_split.json") if em  # ISBI training sections 00-09 -> 10-19
         else dev_split(Split.load("assets/weights/split.json")))
config = ev.RefineEvalConfig(methods=("disc", "learned") if em else ("learned",), max_queries=10 if em else int(__import__("os").environ.get("DEV_QUERIES", 6)),
                             seed=int(__import__("os").environ.get("DEV_SEED", 0)))
bank = None
if em:  # sections 10-19 count as another patient than 00-09 (as runs/s27/em_look.py)
    bank = build_slice_bank(("isbi_em",), size=256)
    ids = bank.patient_ids.copy().astype(object)
    for i, case in enumerate(bank.case_ids):
        if str(case).startswith("em_") and 10 <= int(str(case)[3:]) < 20:
            ids[i] = "em_sections_10_19_dev"
    bank.patient_ids = ids
payload = ev.run(Path("assets/weights/iris2d.pt"), split, config, RefineConfig(**overrides), log=False,
                 datasets=["isbi_em"] if em else None, bank=bank, click_refiner=refiner,
                 fine_click_refiner=fine, use_fine_refiner=fine is not None)
ev.write(payload, out)
mean = ev.summary(payload).get("mean over datasets")
print(json.dumps({"overrides": overrides, "refiner": str(refiner), "fine": str(fine), "em": em, "mean": mean}))
