"""`iris sanity` with the support-mask prior of every class embedding taken away (session 36 probe).

Usage: python runs/s36/prior_probe.py CHECKPOINT OUT_DIR [zero|flat] [dev]
zero: the prior tokens set to 0 (no foreground anywhere); flat: every prior value set to the mask's mean (the
support's area fraction everywhere: where it lies is lost, how much there is is kept); dev: session 35's dev one-shot
probe (`runs/s35/dev_oneshot.py`, OUT_DIR is its JSON file) instead of `iris sanity`.
"""

from __future__ import annotations

import runpy
import sys

import torch

from iris_engine.config import ContextLayout
from iris_engine.evaluation import sanity
from iris_engine.model.context import flatten_prior
from iris_engine.model.iris import IrisModel

encode_task = IrisModel.encode_task
MODE = sys.argv[3] if len(sys.argv) > 3 else "zero"


def encode_task_without_prior(self: IrisModel, support_images: torch.Tensor,
                              support_masks: torch.Tensor) -> torch.Tensor:
    tokens = encode_task(self, support_images, support_masks)
    layout = ContextLayout.of(self.config)
    tokens = flatten_prior(layout, tokens, torch.ones(tokens.shape[0], dtype=torch.bool))
    if MODE == "zero":  # the flattened prior's values (its mean) set to zero, the padding kept
        prior = tokens[:, :, layout.prior]
        values = layout.prior_size**layout.spatial_dims
        flat = prior.flatten(2)
        zeroed = torch.cat([torch.zeros_like(flat[..., :values]), flat[..., values:]], dim=-1).reshape(prior.shape)
        tokens = torch.cat([tokens[:, :, : layout.prior.start], zeroed, tokens[:, :, layout.prior.stop :]], dim=2)
    return tokens


IrisModel.encode_task = encode_task_without_prior
if sys.argv[4:] == ["dev"]:
    sys.argv = ["dev_oneshot.py", sys.argv[1], sys.argv[2]]
    runpy.run_path("runs/s35/dev_oneshot.py", run_name="__main__")
else:
    sanity.main(["--checkpoint", sys.argv[1], "--out", sys.argv[2], "--threads", "1"])
