"""RSS of a training process over steps, float32 against bfloat16 autocast (one process each, sys.argv[1]).

The logs rss_*.log were written by an earlier version with the same step inline, without gradient clipping."""
import resource
import sys

import torch

sys.path.insert(0, "benchmarks")
from benchmark_training import step_seconds  # noqa: E402

from iris_engine.checkpoint import load_checkpoint
from iris_engine.data.episodes import EpisodeConfig, EpisodeSampler
from iris_engine.data.slices import SliceBank
from iris_engine.data.splits import Split
from iris_engine.training.trainer import half_resolution

torch.set_num_threads(1)
bf16 = sys.argv[1] == "bf16"
bank = SliceBank.load("runs/train_bank_256.npz")
sampler = EpisodeSampler(bank, Split.load("assets/weights/split.json"), EpisodeConfig(superpixel_fraction=0.45), seed=5)
model = load_checkpoint("assets/weights/iris2d.pt").model.train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-6)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


for step in range(int(sys.argv[2])):
    batch = sampler.sample_batch(8)
    if step % 4:
        half_resolution(batch)
    step_seconds(model, batch, opt, bf16)
    if step % 10 == 9:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        print(sys.argv[1], step + 1, round(rss_mb()), "MB; peak", peak, flush=True)
