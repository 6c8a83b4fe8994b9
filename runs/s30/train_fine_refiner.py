"""Probe: fine-tune the shipped click refiner at the fine input scale (256 px slices, the IRIS features of the
256 px input) on thin targets only (thicker classes become 1-3 px boundary bands, as `iris train --fine-thin-only`).
train_fine_refiner.py OUT MINUTES THREADS. Training patients only (the split's training cases)."""
import json
import sys
from pathlib import Path

import torch

from iris_engine.checkpoint import load_checkpoint, save_click_refiner
from iris_engine.config import InferenceConfig, TrainConfig
from iris_engine.data.episodes import EpisodeConfig, EpisodeSampler
from iris_engine.data.slices import build_slice_bank
from iris_engine.data.splits import Split
from iris_engine.input_scale import FINE_SCALE
from iris_engine.training.click_training import ClickTrainConfig, ClickTrainer
from iris_engine.training.run import episode_source
from iris_engine.training.trainer import thin_targets

out, minutes, threads = Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
torch.manual_seed(30)
split = Split.load("assets/weights/split.json")
model = load_checkpoint("assets/weights/iris2d.pt").model
bank = build_slice_bank(None, size=FINE_SCALE * model.config.image_size)
episodes = EpisodeConfig.from_train_config(TrainConfig(), max_classes=1, queries_per_episode=1, supports_per_episode=1)
source = episode_source(EpisodeSampler(bank, split, episodes, seed=30), 8, 1, 30)


class ThinSource:
    """Episodes whose thick targets became boundary bands."""

    def sample_batch(self, batch_size):
        batch = source.sample_batch(batch_size)
        thin_targets(batch, FINE_SCALE * InferenceConfig.fine_scale_thickness)
        return batch

    def get_state(self):
        return source.get_state()

    def set_state(self, state):
        source.set_state(state)


config = ClickTrainConfig(iterations=600, lr=3e-4, warmup_iterations=30, degraded_start_fraction=0.3, seed=30)
trainer = ClickTrainer(model, ThinSource(), config, out)
if not trainer.resume():  # a second call continues the first from its refiner_last.pt
    trainer.initialise_from(Path("assets/weights/click_refiner.pt"), model.version)
trainer.fit(minutes)
path = save_click_refiner(out / "click_refiner_fine.pt", trainer.refiner, model.version,
                          {"iterations": trainer.iteration, "train_seconds": round(trainer.elapsed, 1),
                           "recipe": "runs/s30/train_fine_refiner.py (256 px, thin targets, from the shipped refiner)"})
print(json.dumps({"refiner": str(path), "iterations": trainer.iteration}), flush=True)
