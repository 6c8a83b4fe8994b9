"""The shipped model follows its support: given a slice and its own mask, it returns that mask.

A sample of structures from the shared datasets (one slice each, seeded); the full list is in
assets/evaluation/sanity.md (`iris sanity`). Skipped without the shared data. The bounds are what the shipped
v2 model guarantees on this sample (mean 0.92 without the oesophagus; v1 scored about 0.4 on average): the
issue's goal of 0.90 on average and 0.80 per structure is not reached yet. The oesophagus (thin, never trained
on) returned almost nothing at 128 px (0.00 on this slice); read at 256 px, as the engine now reads structures
that thin (`iris_engine.input_scale`), the it-10387 soup scored 0.41 and the shipped it-11357 thin2x soup 0.35
(its support = query over three oesophagus slices fell 0.56 -> 0.47 while its one-shot on held-out patients rose
0.146 -> 0.159; report, "Session 22").
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
THIN = "segthor_ct/esophagus"
FLOOR = 0.4
THIN_FLOOR = 0.3

pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.skipif(shared_data_dir() is None, reason="shared data not found (../shared/data or IRIS_SHARED_DATA)"),
]


@pytest.fixture(scope="module")
def rows() -> dict[str, dict[str, Any]]:
    model = load_checkpoint(WEIGHTS).model
    found = run_sanity(model, shared_data_dir(), SAMPLE, SanityConfig(draws=1), seed=0, max_classes=2)
    return {f"{r['dataset']}/{r['class_name']}": r for r in found}


def test_support_equals_query_returns_the_support_mask(rows: dict[str, dict[str, Any]]) -> None:
    assert len(rows) >= 10 and THIN in rows
    others = {name: float(row["dice"]) for name, row in rows.items() if name != THIN}
    assert np.mean(list(others.values())) >= 0.8, f"mean {np.mean(list(others.values())):.3f}"
    failing = [f"{name}: {dice:.2f}" for name, dice in others.items() if dice < FLOOR]
    assert not failing, failing


def test_the_oesophagus_support_is_followed_at_the_fine_scale(rows: dict[str, dict[str, Any]]) -> None:
    assert rows[THIN]["fine_scale_slices"] == 1
    assert rows[THIN]["dice"] >= THIN_FLOOR, f"{THIN}: {rows[THIN]['dice']:.2f}"
