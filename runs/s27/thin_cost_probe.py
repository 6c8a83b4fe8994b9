"""Probe (rule 4, training patients): on a thin mask the local edit runs with intensity cost THIN_COST (env).
EM=1 relabels ISBI sections 10-19 as a dev patient as runs/s22/keep_probe.py does."""
import os
import runpy
import sys
from dataclasses import replace

import numpy as np

import iris_engine.refinement as R

COST = float(os.environ["THIN_COST"])
original = R.local_edit


def local_edit(image, probability, clicks, config, sampling=(1.0, 1.0, 1.0)):
    clicked = sorted({int(z) for z in np.argwhere(clicks > 0)[:, 2]})
    if clicked and all(R._is_thin(probability[:, :, z], config) for z in clicked):
        config = replace(config, intensity_cost=COST)
    return original(image, probability, clicks, config, sampling)


R.local_edit = local_edit
sys.argv = ["keep_probe.py", *sys.argv[1:]]
runpy.run_path("runs/s22/keep_probe.py", run_name="__main__")
