"""Forward+backward of one training batch on one thread: float32 against CPU bfloat16 autocast."""
import time

import torch

from iris_engine.checkpoint import load_checkpoint
from iris_engine.data.episodes import EpisodeConfig, EpisodeSampler
from iris_engine.data.slices import SliceBank
from iris_engine.data.splits import Split
from iris_engine.training.losses import dice_bce_loss
from iris_engine.training.trainer import half_resolution

torch.set_num_threads(1)
bank = SliceBank.load("runs/s21/bank256.npz")
sampler = EpisodeSampler(bank, Split.load("assets/weights/split.json"), EpisodeConfig(superpixel_fraction=0.45), seed=5)
model = load_checkpoint("assets/weights/iris2d.pt").model
model.train()
batches = [sampler.sample_batch(8) for _ in range(4)]
for b in batches[:2]:
    half_resolution(b)
for name, enabled in (("fp32", False), ("bf16", True), ("fp32", False), ("bf16", True)):
    for label, group in (("128", batches[:2]), ("256", batches[2:])):
        start = time.perf_counter()
        for batch in group:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
                logits = model(batch.support_images, batch.support_masks, batch.query_images)
                valid = batch.class_valid[:, None, :].expand(-1, logits.shape[1], -1)
                loss = dice_bce_loss(logits.float(), batch.query_masks, valid, spatial_dims=2)
            model.zero_grad()
            loss.backward()
        print(name, label, round((time.perf_counter() - start) / len(group), 2), flush=True)
