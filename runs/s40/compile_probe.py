"""Session 40 probe: a training step eager vs with the encoder and decoder compiled (torch.compile), one thread."""

import statistics
import sys
import time

import torch

from iris_engine.checkpoint import load_checkpoint
from iris_engine.data.toy import ToyEpisodes
from iris_engine.training.trainer import embeddings_and_loss

torch.set_num_threads(1)
size = int(sys.argv[1]) if len(sys.argv) > 1 else 128
steps = 6


def run(model, batches):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    times = []
    for batch in batches:
        start = time.perf_counter()
        _, loss = embeddings_and_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return times


episodes = ToyEpisodes(size=size, seed=size)
batches = [episodes.sample_batch(8) for _ in range(steps)]
eager = load_checkpoint("assets/weights/iris2d.pt").model.train()
compiled = load_checkpoint("assets/weights/iris2d.pt").model.train()
compiled.encoder.compile()
compiled.decoder.compile()
t_compiled = run(compiled, batches)
print("compiled", [round(t, 2) for t in t_compiled], flush=True)
t_eager = run(eager, batches)
print("eager", [round(t, 2) for t in t_eager], flush=True)
t_compiled2 = run(compiled, batches)
print("compiled again", [round(t, 2) for t in t_compiled2], flush=True)
e, c = statistics.median(t_eager[1:]), statistics.median(t_compiled2)
print(f"size {size}: eager {e:.2f} s/step, compiled {c:.2f} s/step, eager / compiled {e / c:.2f}x")
