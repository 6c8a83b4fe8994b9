"""A copy of a checkpoint whose support-mask prior has another size (session 37 probe; the prior has no weights).

Usage: python runs/s37/prior_size.py CHECKPOINT SIZE OUT
The memory bank is left empty (its embeddings carry the old prior): one-shot and support = query only.
"""

from __future__ import annotations

import sys
from dataclasses import replace

from iris_engine.checkpoint import load_checkpoint, save_checkpoint
from iris_engine.model.iris import IrisModel

loaded = load_checkpoint(sys.argv[1])
model = IrisModel(replace(loaded.model.config, prior_size=int(sys.argv[2])))
model.load_state_dict(loaded.model.state_dict())
model.version = f"{loaded.model.version}-prior{sys.argv[2]}"
save_checkpoint(sys.argv[3], model, None, None, {**loaded.metadata, "model_version": model.version})
