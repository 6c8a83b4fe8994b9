"""Where one CPU training step's time goes: sampling, thin targets, forward+backward, at 128 and 256 px."""
import random
import time

import torch

from iris_engine.checkpoint import load_checkpoint
from iris_engine.config import InferenceConfig
from iris_engine.data.episodes import EpisodeConfig, EpisodeSampler
from iris_engine.data.slices import SliceBank
from iris_engine.data.splits import Split
from iris_engine.input_scale import FINE_SCALE
from iris_engine.training.losses import dice_bce_loss
from iris_engine.training.trainer import half_resolution, thin_targets

torch.set_num_threads(1)
bank = SliceBank.load("runs/s21/bank256.npz")
split = Split.load("assets/weights/split.json")
cfg = EpisodeConfig(synthetic_fraction=0.05, superpixel_fraction=0.45, same_volume_fraction=0.3, task_augment_prob=0.5)
sampler = EpisodeSampler(bank, split, cfg, seed=5)
model = load_checkpoint("assets/weights/iris2d.pt").model
model.train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
random.seed(0)
for size in ("128", "256"):
    t = {"sample": 0.0, "thin": 0.0, "fwdbwd": 0.0}
    for i in range(6):
        a = time.perf_counter()
        batch = sampler.sample_batch(8)
        b = time.perf_counter()
        if size == "128":
            half_resolution(batch)
        else:
            thin_targets(batch, FINE_SCALE * InferenceConfig.fine_scale_thickness)
        c = time.perf_counter()
        logits = model(batch.support_images, batch.support_masks, batch.query_images)
        valid = batch.class_valid[:, None, :].expand(-1, logits.shape[1], -1)
        loss = dice_bce_loss(logits.float(), batch.query_masks, valid, spatial_dims=2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        d = time.perf_counter()
        if i:
            t["sample"] += b - a
            t["thin"] += c - b
            t["fwdbwd"] += d - c
    print(size, {k: round(v / 5, 3) for k, v in t.items()}, flush=True)
