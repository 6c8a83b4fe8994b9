"""The threshold calibrated on the support (2x reads): which threshold it picks and how the offset moves the
probabilities (how the strategies carry it: test_correspondence.py, beside the vote of the same reads)."""

from __future__ import annotations

import pytest
import torch

from iris_engine.calibration import CalibrationConfig, apply_offsets, offsets_of, support_thresholds
from iris_engine.embedding import TaskEmbedding
from iris_engine.errors import IrisInputError


def _ramp(size: int = 20) -> torch.Tensor:
    """(1, 1, size, size) probabilities rising from 0 to 1 along the rows."""
    return torch.linspace(0.0, 1.0, size).view(1, 1, size, 1).expand(1, 1, size, size).clone()


@pytest.mark.parametrize("true_threshold", [0.2, 0.8])
def test_the_threshold_that_reproduces_the_support_mask_is_chosen(true_threshold: float) -> None:
    probabilities = _ramp()
    mask = (probabilities >= true_threshold).float()
    chosen = support_thresholds(probabilities, mask, CalibrationConfig())
    assert (probabilities >= chosen).equal(mask >= 0.5)
    assert abs(float(chosen) - true_threshold) < 0.06


def test_a_threshold_near_one_half_stays_one_half() -> None:
    probabilities = _ramp(40)
    mask = (probabilities >= 0.56).float()
    assert float(support_thresholds(probabilities, mask, CalibrationConfig())) == 0.5
    assert float(support_thresholds(probabilities, mask, CalibrationConfig(dead_zone=0.0))) != 0.5


def test_each_class_gets_its_own_threshold() -> None:
    probabilities = torch.cat([_ramp(), _ramp()], dim=1)
    masks = torch.cat([probabilities[:, :1] >= 0.25, probabilities[:, 1:] >= 0.85], dim=1).float()
    low, high = support_thresholds(probabilities, masks, CalibrationConfig()).tolist()
    assert low < 0.4 and high > 0.75


def test_the_offset_moves_the_threshold_to_one_half_and_keeps_the_order() -> None:
    probabilities = _ramp()
    shifted = apply_offsets(probabilities, offsets_of(torch.tensor([0.8])))
    assert torch.equal(shifted >= 0.5, probabilities >= 0.8 - 1e-6)
    assert torch.all(shifted.flatten().diff() >= 0)
    torch.testing.assert_close(apply_offsets(probabilities, torch.zeros(1)), probabilities.clamp(1e-6, 1 - 1e-6))


def test_bad_settings_are_refused() -> None:
    with pytest.raises(IrisInputError):
        CalibrationConfig(lowest=0.6)
    with pytest.raises(IrisInputError):
        CalibrationConfig(dead_zone=-0.1)
    with pytest.raises(IrisInputError):
        TaskEmbedding(torch.zeros(2, 3, 4), ["a", "b"], logit_offsets=torch.zeros(3))
