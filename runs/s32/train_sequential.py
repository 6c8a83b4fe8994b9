"""Probe: fine-tune the shipped click refiner for SEQUENTIAL refinement (as RITM): click k is read on the previous
output (after clicks 1..k-1, every click honoured) instead of the one-shot start; the loss on the output after the
last click, read from the output before it. train_sequential.py OUT MINUTES ITERATIONS SEED. Training patients only."""
import json
import sys
from pathlib import Path

import numpy as np
import torch

from iris_engine.checkpoint import load_checkpoint, save_click_refiner
from iris_engine.config import TrainConfig
from iris_engine.data.episodes import EpisodeConfig, EpisodeSampler
from iris_engine.data.slices import build_slice_bank
from iris_engine.data.splits import Split
from iris_engine.model.click_refiner import NEGATIVE, POSITIVE, click_inputs
from iris_engine.refinement import next_click
from iris_engine.training import click_training as ct
from iris_engine.training.losses import dice_bce_loss
from iris_engine.training.run import episode_source
from iris_engine.training.trainer import training_autocast

def honoured(probability: torch.Tensor, clicks: np.ndarray) -> torch.Tensor:
    marks = torch.from_numpy(clicks)[:, None].to(probability.device)
    return torch.where(marks == POSITIVE, 1.0, torch.where(marks == NEGATIVE, 0.0, probability))


def sequential_clicks(forward, batch, counts, threshold):
    """Clicks after counts[i] automatic clicks, each read on the previous output, and the output before the last;
    forward(previous, clicks) -> the refiner's logits."""
    truth = batch.truth[:, 0].cpu().numpy() >= 0.5
    previous = batch.start.clone()
    before_last = batch.start.clone()
    clicks = np.zeros(truth.shape, dtype=np.uint8)
    for step in range(int(counts.max())):
        current = previous[:, 0].float().cpu().numpy() >= threshold
        for i in np.flatnonzero(counts > step):
            placed = next_click(current[i], truth[i])
            if placed is not None:
                (r, c), positive = placed
                clicks[i, r, c] = POSITIVE if positive else NEGATIVE
        last = counts == step + 1
        before_last[torch.from_numpy(last)] = previous[torch.from_numpy(last)]
        if step + 1 < counts.max():
            with torch.no_grad():
                output = torch.sigmoid(forward(previous, clicks).float())
            going = torch.from_numpy(counts > step + 1)
            previous[going] = honoured(output, clicks)[going].to(previous.dtype)
    return clicks, before_last


class SequentialTrainer(ct.ClickTrainer):
    def forward(self, batch, previous: torch.Tensor, clicks: np.ndarray) -> torch.Tensor:
        """The refiner's logits on `previous` (the output before the last click) with `clicks`."""
        return self.refiner(click_inputs(batch.image, previous, batch.features, clicks, self.refiner.config))

    def step(self) -> float:
        with training_autocast(self.device, self.config.cpu_bf16):
            batch = ct.one_shot_batch(self.model, self.sampler, self.config.batch_size, self.device)
            batch.start = ct.degrade_starts(batch.start, self.rng, self.config.degraded_start_fraction,
                                            self.config.empty_start_probability, self.config.merged_start_fraction)
            counts = self.rng.integers(1, self.config.max_clicks + 1, size=batch.image.shape[0])
            self.refiner.eval()
            clicks, previous = sequential_clicks(lambda before, marks: self.forward(batch, before, marks), batch,
                                                 counts, self.config.threshold)
            self.refiner.train()
            logits = self.forward(batch, previous, clicks).float()
        clicked = torch.from_numpy((clicks > 0).reshape(len(clicks), -1).any(axis=1)).to(self.device)
        return self.update(dice_bce_loss(logits, batch.truth, clicked[:, None]))


if __name__ == "__main__":
    out, minutes, iterations, seed = Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    split = Split.load("assets/weights/split.json")
    model = load_checkpoint("assets/weights/iris2d.pt").model
    bank = build_slice_bank(None, size=model.config.image_size)
    episodes = EpisodeConfig.from_train_config(TrainConfig(), max_classes=1, queries_per_episode=1, supports_per_episode=1)
    source = episode_source(EpisodeSampler(bank, split, episodes, seed=seed), 8, 0, seed)
    config = ct.ClickTrainConfig(iterations=iterations, lr=3e-4, warmup_iterations=30, degraded_start_fraction=0.3,
                                 seed=seed)
    trainer = SequentialTrainer(model, source, config, out)
    if not trainer.resume():
        trainer.initialise_from(Path("assets/weights/click_refiner.pt"), model.version)
    trainer.fit(minutes)
    path = save_click_refiner(out / "click_refiner.pt", trainer.refiner, model.version, {
        "iterations": trainer.iteration, "train_seconds": round(trainer.elapsed, 1), "recipe": "runs/s32/train_sequential.py",
        "init": "assets/weights/click_refiner.pt", "split_fingerprint": split.fingerprint()})
    print(json.dumps({"refiner": str(path), "iterations": trainer.iteration}), flush=True)
