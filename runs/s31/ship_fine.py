"""Ship session 30's 510-step fine refiner (runs/s31/RULE.md rule 1) with the metadata `iris train-refiner` writes."""
import json
import shutil
from dataclasses import asdict
from pathlib import Path

from iris_engine.checkpoint import FINE_CLICK_REFINER_FILE, load_click_refiner, save_click_refiner
from iris_engine.data.splits import Split
from iris_engine.training.click_training import ClickTrainConfig

source = Path("runs/s30/fine_refiner")
loaded = load_click_refiner(source / FINE_CLICK_REFINER_FILE)
recipe = ClickTrainConfig(iterations=600, lr=3e-4, warmup_iterations=30, degraded_start_fraction=0.3, seed=30,
                          fine_thin_only=True)
metadata = {
    "iterations": loaded.metadata["iterations"], "train_seconds": loaded.metadata["train_seconds"],
    "recipe": asdict(recipe), "iris_checkpoint": "assets/weights/iris2d.pt",
    "init": "assets/weights/click_refiner.pt",
    "split_fingerprint": Split.load("assets/weights/split.json").fingerprint(),
    "command": "iris train-refiner --fine-thin-only --init assets/weights/click_refiner.pt --iterations 600 "
               "--lr 3e-4 --warmup-iterations 30 --degraded-start-fraction 0.3 --seed 30 --loader-workers 1 "
               "--threads 1 --time-limit-minutes 38, then --resume --time-limit-minutes 21 (stopped at 510 of 600)",
    "trained_by": "runs/s30/train_fine_refiner.py, the same recipe before it became --fine-thin-only (session 30)",
    "chosen_by": "runs/s31/RULE.md rule 1 (training patients only); fine_learned_weight 0.5",
}
path = save_click_refiner(Path("assets/weights") / FINE_CLICK_REFINER_FILE, loaded.refiner,
                          loaded.iris_model_version, metadata)
shutil.copyfile(source / "refiner_log.jsonl", "assets/weights/click_refiner_fine_log.jsonl")
print(json.dumps({"shipped": str(path), "bytes": path.stat().st_size}))
