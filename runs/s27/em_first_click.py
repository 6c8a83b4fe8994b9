"""Probe (training patients only): what the first click does on ISBI EM membranes, disc vs learned, per slice.

Wraps the click protocol's `simulate` to log, per query slice and method, the start's false-positive and
false-negative pixels, the first click's sign and error-region size, and Dice before / after clicks 1-3.
Run with EM=1 as runs/s22/keep_probe.py (sections 10-19 as the dev queries)."""
import json
import os
import sys

import numpy as np

sys.argv = [sys.argv[0], *sys.argv[1:]]
import iris_engine.evaluation.refinement as ref  # noqa: E402
from iris_engine.refinement import next_click  # noqa: E402

LOG = []
original = ref.simulate


def simulate(image, truth, start, config, *args, **kwargs):
    mask = start >= config.threshold
    placed = next_click(mask, truth)
    scores, seconds = original(image, truth, start, config, *args, **kwargs)
    LOG.append({"method": config.method, "fp": int((mask & ~truth).sum()), "fn": int((truth & ~mask).sum()),
                "truth": int(truth.sum()), "first_positive": bool(placed[1]) if placed else None,
                "scores": [round(s, 4) for s in scores[:6]]})
    return scores, seconds


ref.simulate = simulate
runpy_args = sys.argv[1:]
out = os.environ["LOG_OUT"]
import runpy  # noqa: E402

sys.argv = ["keep_probe.py", *runpy_args]
try:
    runpy.run_path("runs/s22/keep_probe.py", run_name="__main__")
finally:
    with open(out, "w") as f:
        json.dump(LOG, f)
    for row in LOG:
        print(row)
