"""What a wider decoder costs (session 39, for a GPU session's choice of --decoder-channels): one query slice
segmented for one class (encode + decode, one thread, float32), shipped configuration at widths 16 / 32 / 48,
alternating, median of the rounds; the IRIS training step (batch 8, one support, one query) the same way.
Random weights: the cost does not depend on them. Usage: decoder_width_timing.py [ROUNDS]"""

import statistics
import sys
import time
from dataclasses import replace

import torch

from iris_engine.checkpoint import load_checkpoint
from iris_engine.model.iris import IrisModel

torch.set_num_threads(1)
rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
base = load_checkpoint("assets/weights/iris2d.pt").model.config
widths = (16, 32, 48)
models = {w: IrisModel(replace(base, decoder_channels=w)).eval() for w in widths}
print({w: sum(p.numel() for p in m.parameters()) for w, m in models.items()})
times: dict[tuple[int, int, str], list[float]] = {}
for size in (128, 256):
    support = torch.randn(1, 1, size, size)
    mask = torch.zeros(1, 1, size, size)
    mask[..., size // 4: size // 2, size // 4: size // 2] = 1
    for _ in range(rounds):
        for w, model in models.items():
            with torch.inference_mode():
                tokens = model.encode_task(support, mask)
                start = time.perf_counter()
                model.segment(torch.randn(1, 1, size, size), tokens[0])
                times.setdefault((size, w, "slice"), []).append(time.perf_counter() - start)
    for w in widths:
        print(f"{size} px slice, width {w}: {statistics.median(times[(size, w, 'slice')]):.3f} s")
for _ in range(max(2, rounds // 2)):
    for w, model in models.items():
        model.train()
        images = torch.randn(8, 1, 1, 128, 128)
        masks = (torch.rand(8, 1, 1, 128, 128) > 0.7).float()
        start = time.perf_counter()
        model(images, masks, torch.randn(8, 1, 1, 128, 128)).mean().backward()
        times.setdefault((128, w, "step"), []).append(time.perf_counter() - start)
for w in widths:
    print(f"training forward + backward, batch 8 at 128 px, width {w}: {statistics.median(times[(128, w, 'step')]):.2f} s")
