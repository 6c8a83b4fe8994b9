"""The shipped model follows its support: given a slice and its own mask, it returns that mask.

A sample of structures from the shared datasets (one slice each, seeded); the full list is in
assets/evaluation/sanity.md (`iris sanity`). Skipped without the shared data. The bounds are what the shipped
v2 model guarantees on this sample (mean 0.88 without the oesophagus; v1 scored about 0.4 on average): the
issue's goal of 0.90 on average and 0.80 per structure is not reached yet. The oesophagus (thin, never trained
on) is a known failure of the it-2450 weights (0.00 on this slice; the it-1500 weights gave 0.44): a strict
xfail, so fixing it shows up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from iris_engine.checkpoint import load_checkpoint
from iris_engine.data.shared_paths import shared_data_dir
from iris_engine.evaluation.sanity import SanityConfig, run_sanity

WEIGHTS = Path(__file__).resolve().parents[2] / "assets" / "weights" / "iris2d.pt"
SAMPLE = ("ph2_dermoscopy", "hc18_fetal_us", "covid_cxr", "chaos_mr", "mscmr_cardiac_mr", "segthor_ct")
KNOWN_FAILURE = "segthor_ct/esophagus"
FLOOR = 0.4

pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.skipif(shared_data_dir() is None, reason="shared data not found (../shared/data or IRIS_SHARED_DATA)"),
]


@pytest.fixture(scope="module")
def scores() -> dict[str, float]:
    model = load_checkpoint(WEIGHTS).model
    rows: list[dict[str, Any]] = run_sanity(model, shared_data_dir(), SAMPLE, SanityConfig(draws=1), seed=0,
                                            max_classes=2)
    return {f"{r['dataset']}/{r['class_name']}": float(r["dice"]) for r in rows}


def test_support_equals_query_returns_the_support_mask(scores: dict[str, float]) -> None:
    assert len(scores) >= 10 and KNOWN_FAILURE in scores
    others = {name: dice for name, dice in scores.items() if name != KNOWN_FAILURE}
    assert np.mean(list(others.values())) >= 0.8, f"mean {np.mean(list(others.values())):.3f}"
    failing = [f"{name}: {dice:.2f}" for name, dice in others.items() if dice < FLOOR]
    assert not failing, failing


@pytest.mark.xfail(strict=True, reason="issue 11 (open): the it-2450 weights return almost nothing for the "
                   "oesophagus even with its own slice as support")
def test_the_oesophagus_support_is_followed(scores: dict[str, float]) -> None:
    assert scores[KNOWN_FAILURE] >= FLOOR, f"{KNOWN_FAILURE}: {scores[KNOWN_FAILURE]:.2f}"
