"""The shipped model follows its support: given a slice and its own mask, it returns that mask.

A sample of structures from the shared datasets (one slice each, seeded); the full list is in
assets/evaluation/report.md (`iris sanity`). Skipped without the shared data. The bounds are what the shipped v2
model guarantees on this sample (mean 0.84, lowest 0.44 on the oesophagus; v1 scored about 0.4 on average): the
issue's goal of 0.90 on average and 0.80 per structure is not reached yet.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from iris_engine.checkpoint import load_checkpoint
from iris_engine.data.shared_paths import shared_data_dir
from iris_engine.evaluation.sanity import SanityConfig, run_sanity

WEIGHTS = Path(__file__).resolve().parents[2] / "assets" / "weights" / "iris2d.pt"
SAMPLE = ("ph2_dermoscopy", "hc18_fetal_us", "covid_cxr", "chaos_mr", "mscmr_cardiac_mr", "segthor_ct")

pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.skipif(shared_data_dir() is None, reason="shared data not found (../shared/data or IRIS_SHARED_DATA)"),
]


def test_support_equals_query_returns_the_support_mask() -> None:
    model = load_checkpoint(WEIGHTS).model
    rows = run_sanity(model, shared_data_dir(), SAMPLE, SanityConfig(draws=1), seed=0, max_classes=2)
    assert len(rows) >= 10
    dice = np.array([r["dice"] for r in rows])
    failing = [f"{r['dataset']}/{r['class_name']}: {r['dice']:.2f}" for r in rows if r["dice"] < 0.4]
    assert dice.mean() >= 0.8, f"mean {dice.mean():.3f}"
    assert not failing, failing
