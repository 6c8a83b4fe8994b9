"""Dice + binary cross-entropy, the IRIS training loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dice_bce_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    valid: torch.Tensor | None = None,
    spatial_dims: int = 2,
    smooth: float = 1.0,
) -> torch.Tensor:
    """Mean over valid (sample, class) maps of soft Dice loss + BCE; logits/targets (..., K, *S).

    `valid` is a bool tensor of the leading (..., K) shape; invalid maps do not contribute.
    """
    spatial = tuple(range(logits.ndim - spatial_dims, logits.ndim))
    probabilities = torch.sigmoid(logits)
    intersection = (probabilities * targets).sum(spatial)
    denominator = probabilities.sum(spatial) + targets.sum(spatial)
    dice = 1.0 - (2.0 * intersection + smooth) / (denominator + smooth)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(spatial)
    per_map = dice + bce
    if valid is None:
        return per_map.mean()
    weights = valid.to(per_map.dtype).expand_as(per_map)
    return (per_map * weights).sum() / weights.sum().clamp_min(1.0)
