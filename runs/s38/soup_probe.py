"""A uniform weight average for the rule-1 measures only (no memory bank: one-shot and support = query do not use
it; `iris average-weights` rebuilds the bank for a soup that would ship). Usage: soup_probe.py OUT CKPT CKPT [...]"""

import sys

from iris_engine.checkpoint import load_checkpoint, save_checkpoint
from iris_engine.training.soup import average_models

out, paths = sys.argv[1], sys.argv[2:]
loaded = [load_checkpoint(path) for path in paths]
model = average_models([item.model for item in loaded]).eval()
save_checkpoint(out, model, None, None, {**loaded[0].metadata, "averaged_from": paths})
print(f"{out}: the mean of {len(paths)} checkpoints")
