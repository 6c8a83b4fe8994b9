"""Export a refiner run's refiner_last.pt as a click refiner file: export_last.py RUN_DIR OUT_FILE."""
import sys
from pathlib import Path

import torch

from iris_engine.checkpoint import load_checkpoint, load_click_refiner, save_click_refiner

state = torch.load(Path(sys.argv[1]) / "refiner_last.pt", map_location="cpu", weights_only=False)
refiner = load_click_refiner(Path("assets/weights/click_refiner.pt")).refiner
refiner.load_state_dict(state["refiner"])
model = load_checkpoint("assets/weights/iris2d.pt").model
Path(sys.argv[2]).parent.mkdir(parents=True, exist_ok=True)
save_click_refiner(Path(sys.argv[2]), refiner, model.version, {"iterations": int(state["iteration"]),
                                                                 "recipe": "runs/s32/train_sequential.py"})
print(state["iteration"])
