"""Probe: the sequential click refiner (train_sequential.py, whose click simulation it shares) given the one-shot start as two more input channels
(its probability and scaled logit), so that it reads both the previous output and the model's own prediction.
train_two_inputs.py OUT MINUTES ITERATIONS SEED INIT. Training patients only."""
import json
import sys
from pathlib import Path

import torch

from iris_engine.checkpoint import load_checkpoint, load_click_refiner
from iris_engine.config import TrainConfig
from iris_engine.data.episodes import EpisodeConfig, EpisodeSampler
from iris_engine.data.slices import build_slice_bank
from iris_engine.data.splits import Split
from iris_engine.model.blocks import ResidualBlock
from iris_engine.model.click_refiner import ClickRefiner, _copy_block, click_inputs
from iris_engine.training import click_training as ct
from iris_engine.training.run import episode_source
from train_sequential import SequentialTrainer


class TwoInputRefiner(ClickRefiner):
    """A ClickRefiner whose stem reads two more channels: the one-shot start's probability and scaled logit."""

    def __init__(self, base: ClickRefiner):
        super().__init__(base.config)
        self.load_state_dict(base.state_dict())
        old = self.stem
        width = old.conv1.weight.shape[1]
        self.stem = ResidualBlock(2, width + 2, self.config.channels[0])
        with torch.no_grad():
            _copy_block(old, self.stem, torch.arange(width))


def inputs_with_start(refiner, image, previous, start, features, clicks):
    base = click_inputs(image, previous, features, clicks, refiner.config)
    logit = torch.logit(start.clamp(1e-4, 1 - 1e-4)) / refiner.config.logit_clip
    return torch.cat([base, start.to(base), logit.to(base)], dim=1)


class TwoInputTrainer(SequentialTrainer):
    def forward(self, batch, previous: torch.Tensor, clicks) -> torch.Tensor:
        return self.refiner(inputs_with_start(self.refiner, batch.image, previous, batch.start, batch.features,
                                              clicks))


if __name__ == "__main__":
    out, minutes, iterations, seed, init = (Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]),
                                            Path(sys.argv[5]))
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    split = Split.load("assets/weights/split.json")
    model = load_checkpoint("assets/weights/iris2d.pt").model
    bank = build_slice_bank(None, size=model.config.image_size)
    episodes = EpisodeConfig.from_train_config(TrainConfig(), max_classes=1, queries_per_episode=1,
                                               supports_per_episode=1)
    source = episode_source(EpisodeSampler(bank, split, episodes, seed=seed), 8, 0, seed)
    config = ct.ClickTrainConfig(iterations=iterations, lr=2e-4, warmup_iterations=30, degraded_start_fraction=0.3,
                                 seed=seed)
    trainer = TwoInputTrainer(model, source, config, out)
    trainer.refiner = TwoInputRefiner(load_click_refiner(init).refiner)
    trainer.optimizer = torch.optim.AdamW(trainer.refiner.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = TrainConfig(iterations=config.iterations, warmup_iterations=config.warmup_iterations,
                           min_lr_ratio=config.min_lr_ratio)
    trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer,
                                                          lambda it: ct.lr_factor(it, schedule))
    trainer.fit(minutes)
    torch.save({"state": trainer.refiner.state_dict(), "config": trainer.refiner.config.to_dict(),
                "iterations": trainer.iteration, "iris_model_version": model.version}, out / "two_inputs.pt")
    print(json.dumps({"refiner": str(out / "two_inputs.pt"), "iterations": trainer.iteration}), flush=True)
