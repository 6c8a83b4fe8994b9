"""Probe (rule 2, training patients): a negative click at the core of a start-mask component with no positive
click removes that component. KAPPA=0.8 (env) sets the depth ratio; the click protocol's CLI arguments follow."""
import os
import sys

import numpy as np
from scipy import ndimage

import iris_engine.evaluation.refinement as ref
import iris_engine.refinement as R

KAPPA = float(os.environ["KAPPA"])
MIN_CLICKS = int(os.environ.get("MIN_CLICKS", "1"))  # negative clicks at the core of one component before it goes
original = R.refine_slab


def core_components(probability: np.ndarray, clicks: np.ndarray, config: R.RefineConfig) -> np.ndarray:
    """(H, W, Z) bool: start-mask components removed by a negative click at their core."""
    removed = np.zeros(probability.shape, dtype=bool)
    for z in sorted({int(v) for v in np.argwhere(clicks == R.NEGATIVE)[:, 2]}):
        mask = probability[:, :, z] >= config.threshold
        if not mask.any() or R._is_thin(probability[:, :, z], config):
            continue
        labels, _ = ndimage.label(mask)
        depth = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
        positive = set(labels[clicks[:, :, z] == R.POSITIVE].tolist())
        at_core: dict[int, int] = {}
        for y, x in np.argwhere(clicks[:, :, z] == R.NEGATIVE):
            label = int(labels[y, x])
            if label == 0 or label in positive:
                continue
            if depth[y, x] >= KAPPA * depth[labels == label].max():
                at_core[label] = at_core.get(label, 0) + 1
        for label, count in at_core.items():
            if count >= MIN_CLICKS:
                removed[:, :, z] |= labels == label
    return removed


def slab(image, probability, clicks, config, *args, **kwargs):
    out = original(image, probability, clicks, config, *args, **kwargs)
    if config.method != "learned":
        return out
    removed = core_components(probability, clicks, config)
    out = np.where(removed, np.minimum(out, 0.98 * config.threshold), out)
    return R.honour(out, clicks, config.threshold)


R.refine_slab = slab
ref.refine_on_grid.__globals__["refine_slab"] = slab
ref.main(sys.argv[1:])
