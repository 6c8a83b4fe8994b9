"""Rule 5: a runs/s32 or runs/s33 two-input refiner (train_two_inputs.py, train_more.py) as an engine click
refiner file with `sequential` on (same weights, same input order). export_sequential.py IN OUT."""
import sys
from dataclasses import replace

import torch

from iris_engine.checkpoint import load_checkpoint, save_click_refiner
from iris_engine.model.click_refiner import ClickRefiner, ClickRefinerConfig

source, target = sys.argv[1], sys.argv[2]
saved = torch.load(source, map_location="cpu", weights_only=False)
refiner = ClickRefiner(replace(ClickRefinerConfig.from_dict(saved["config"]), sequential=True))
refiner.load_state_dict(saved["state"])
version = load_checkpoint("assets/weights/iris2d.pt").model.version
assert saved["iris_model_version"] == version
save_click_refiner(target, refiner, version, {"iterations": saved["iterations"], "source": source})
print(target)
