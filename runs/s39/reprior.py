"""The same weights with another support-mask prior size (the prior has no weights), no memory bank; for the
rule-1 soups only. Usage: reprior.py CKPT OUT PRIOR_SIZE"""

import sys
from dataclasses import replace

from iris_engine.checkpoint import load_checkpoint, save_checkpoint
from iris_engine.model.iris import IrisModel

source, out, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
loaded = load_checkpoint(source)
model = IrisModel(replace(loaded.model.config, prior_size=size))
model.load_state_dict(loaded.model.state_dict())
save_checkpoint(out, model.eval(), None, None, {**loaded.metadata, "prior_size_from": source})
print(f"{out}: {source} with a {size} px prior")
