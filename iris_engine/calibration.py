"""A threshold calibrated on the support: the support is segmented as its own query, and the threshold that best
reproduces its mask becomes the threshold of the queries (carried as a logit offset, so that 0.5 stays the
threshold everywhere downstream: masks, click refinement, the app).

It applies only where the engine reads a thin support at twice the input size (`input_scale.py`): there the
model's masks come out wider than the structure and the support says by how much (vessels, trachea); on thicker
structures the support's own threshold did not carry over to other patients (training patients: report,
"Session 26").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from iris_engine.errors import IrisInputError

LOGIT_EPS = 1e-6


@dataclass(frozen=True)
class CalibrationConfig:
    """The thresholds tried on the support (chosen on training patients, report "Session 26")."""

    enabled: bool = True
    lowest: float = 0.10
    highest: float = 0.90
    step: float = 0.05
    dead_zone: float = 0.1  # a support threshold nearer 0.5 than this is taken as 0.5 (one support's noise)

    def __post_init__(self) -> None:
        if not 0.0 < self.lowest <= 0.5 <= self.highest < 1.0 or self.step <= 0 or self.dead_zone < 0:
            raise IrisInputError("calibration thresholds must satisfy 0 < lowest <= 0.5 <= highest < 1, step > 0, "
                                 "dead_zone >= 0")

    def thresholds(self) -> torch.Tensor:
        count = round((self.highest - self.lowest) / self.step) + 1
        return torch.linspace(self.lowest, self.highest, count)


def support_thresholds(probabilities: torch.Tensor, masks: torch.Tensor, config: CalibrationConfig) -> torch.Tensor:
    """(K,) thresholds: per class, the one of `config.thresholds()` whose masks of the supports' own probabilities
    (N, K, H, W) have the highest Dice with their masks (N, K, H, W), pooled over the supports; ties go to the
    threshold nearest 0.5, and one within `config.dead_zone` of 0.5 becomes 0.5."""
    candidates = config.thresholds().to(probabilities.device)
    truth = masks.float().transpose(0, 1).flatten(1) >= 0.5  # (K, P)
    scores = probabilities.float().transpose(0, 1).flatten(1)  # (K, P)
    area = truth.sum(-1).float()
    dice = torch.empty(len(candidates), truth.shape[0], device=probabilities.device)  # (T, K)
    for i, threshold in enumerate(candidates):  # one (K, P) mask at a time: a 16-slice support set stays small
        predicted = scores >= threshold
        total = predicted.sum(-1).float() + area
        overlap = (predicted & truth).sum(-1).float()
        dice[i] = torch.where(total > 0, 2 * overlap / total.clamp(min=1), torch.ones_like(total))
    nearness = (candidates - 0.5).abs().view(-1, 1)
    best = candidates[(dice - 1e-6 * nearness).argmax(0)]
    return torch.where((best - 0.5).abs() < config.dead_zone - 1e-6, torch.full_like(best, 0.5), best)


def support_offsets(probabilities: torch.Tensor, masks: torch.Tensor, config: CalibrationConfig) -> torch.Tensor:
    """Logit offsets (K,) of the `support_thresholds` of the supports' own probabilities and masks."""
    return offsets_of(support_thresholds(probabilities, masks, config))


def offsets_of(thresholds: torch.Tensor) -> torch.Tensor:
    """Logit offsets (K,) that move each threshold to 0.5."""
    return torch.logit(thresholds.float(), eps=LOGIT_EPS)


def apply_offsets(probabilities: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """(B, K, *S) probabilities with each class's logit shifted down by its offset (K,)."""
    shape = (1, -1, *[1] * (probabilities.ndim - 2))
    shifted = torch.logit(probabilities.float(), eps=LOGIT_EPS) - offsets.to(probabilities.device).view(shape)
    return torch.sigmoid(shifted)
