"""Where a click-refiner training step spends its time, float32 vs bf16 autocast (one thread, batch 8)."""
import time

import numpy as np
import torch

from iris_engine.training import click_training as ct
from iris_engine.checkpoint import load_checkpoint, load_click_refiner
from iris_engine.config import TrainConfig
from iris_engine.data.episodes import EpisodeConfig, EpisodeSampler
from iris_engine.data.slices import build_slice_bank
from iris_engine.data.splits import Split
from iris_engine.model.click_refiner import click_inputs
from iris_engine.training.losses import dice_bce_loss

torch.set_num_threads(1)
model = load_checkpoint("assets/weights/iris2d.pt").model.eval()
split = Split.load("assets/weights/split.json")
bank = build_slice_bank(None, size=128)
episodes = EpisodeConfig.from_train_config(TrainConfig(), max_classes=1, queries_per_episode=1, supports_per_episode=1)
sampler = EpisodeSampler(bank, split, episodes, seed=0)
refiner = load_click_refiner("assets/weights/click_refiner.pt").refiner
opt = torch.optim.AdamW(refiner.parameters(), lr=1e-6)
rng = np.random.default_rng(0)
for bf16 in (False, True, False, True):
    t = {}
    for rep in range(3):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            a = time.perf_counter()
            batch = ct.one_shot_batch(model, sampler, 8)
            b = time.perf_counter()
            counts = rng.integers(1, 7, size=8)
            refiner.eval()
            clicks = ct.simulate_clicks(refiner, batch, counts, 0.5)
            c = time.perf_counter()
            refiner.train()
            inputs = click_inputs(batch.image, batch.start, batch.features, clicks, refiner.config)
            logits = refiner(inputs)
            loss = dice_bce_loss(logits.float(), batch.truth, torch.ones(8, 1, dtype=torch.bool))
        opt.zero_grad()
        loss.backward()
        opt.step()
        d = time.perf_counter()
        if rep:
            for k, v in (("oneshot", b - a), ("clicks", c - b), ("train", d - c)):
                t.setdefault(k, []).append(v)
    print("bf16" if bf16 else "fp32", {k: round(float(np.mean(v)), 3) for k, v in t.items()}, flush=True)
