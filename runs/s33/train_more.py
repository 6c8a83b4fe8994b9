"""Rule 5: train rule 4's sequential two-input refiner on (runs/s32/train_two_inputs.py's recipe at a lower lr).
train_more.py OUT MINUTES ITERATIONS SEED INIT(two_inputs.pt). Training patients only."""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, "runs/s32")
from train_two_inputs import TwoInputRefiner, TwoInputTrainer  # noqa: E402

from iris_engine.checkpoint import load_checkpoint  # noqa: E402
from iris_engine.config import TrainConfig  # noqa: E402
from iris_engine.data.episodes import EpisodeConfig, EpisodeSampler  # noqa: E402
from iris_engine.data.slices import build_slice_bank  # noqa: E402
from iris_engine.data.splits import Split  # noqa: E402
from iris_engine.model.click_refiner import ClickRefiner, ClickRefinerConfig  # noqa: E402
from iris_engine.training import click_training as ct  # noqa: E402
from iris_engine.training.run import episode_source  # noqa: E402

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
    config = ct.ClickTrainConfig(iterations=iterations, lr=1e-4, warmup_iterations=30, degraded_start_fraction=0.3,
                                 seed=seed)
    trainer = TwoInputTrainer(model, source, config, out)
    saved = torch.load(init, map_location="cpu", weights_only=False)
    refiner = TwoInputRefiner(ClickRefiner(ClickRefinerConfig.from_dict(saved["config"])))
    refiner.load_state_dict(saved["state"])
    trainer.refiner = refiner
    trainer.optimizer = torch.optim.AdamW(refiner.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = TrainConfig(iterations=config.iterations, warmup_iterations=config.warmup_iterations,
                           min_lr_ratio=config.min_lr_ratio)
    trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer, lambda it: ct.lr_factor(it, schedule))
    trainer.fit(minutes)
    torch.save({"state": trainer.refiner.state_dict(), "config": trainer.refiner.config.to_dict(),
                "iterations": trainer.iteration, "iris_model_version": model.version}, out / "two_inputs.pt")
    print(json.dumps({"refiner": str(out / "two_inputs.pt"), "iterations": trainer.iteration}), flush=True)
