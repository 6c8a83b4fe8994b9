"""Input scale chosen from the support: a structure only a few pixels thick on the model grid is segmented at
twice the grid's size, where the model (trained at 128 px) still sees its shape.

Measured on training patients (assets/evaluation/report.md, "Session 16: a fine input scale ..."): vessels,
oesophagus and trachea gain at 2x, while thicker structures (kidneys, lungs, aorta, LV myocardium) lose there.
A volume read at 2x runs on every few slices only, the others interpolated (`strided_slices`, `fill_between`;
"Session 27" there).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FINE_SCALE = 2


def covered(masks: torch.Tensor) -> torch.Tensor:
    """Binary (N, K, *S) from resized soft masks: pixels from 0.5 on, or above 0 where a structure is so thin
    that none of its pixels reaches 0.5."""
    inside = masks >= 0.5
    reaches = inside.flatten(2).any(-1).view(*inside.shape[:2], *[1] * (inside.ndim - 2))
    return torch.where(reaches, inside, masks > 0)


def structure_thickness(masks: torch.Tensor) -> torch.Tensor:
    """(N, K, H, W) masks -> (K,) mean thickness in pixels, 2 x area / boundary pixels (4-neighbour boundary, the
    image border counts as outside), over all N, of their `covered` pixels; inf for a class no mask shows."""
    inside = covered(masks)
    padded = F.pad(inside.float(), (1, 1, 1, 1))
    neighbours = torch.stack([padded[..., :-2, 1:-1], padded[..., 2:, 1:-1], padded[..., 1:-1, :-2],
                              padded[..., 1:-1, 2:]]).amin(0) > 0.5
    boundary = (inside & ~neighbours).flatten(2).sum(-1).sum(0).float()
    area = inside.flatten(2).sum(-1).sum(0).float()
    return torch.where(area > 0, 2.0 * area / boundary.clamp(min=1.0), torch.full_like(area, float("inf")))


def choose_input_scale(masks: torch.Tensor, fine_scale_thickness: float) -> int:
    """FINE_SCALE when every class of 2D support masks (N, K, H, W) on the model grid is thinner than
    `fine_scale_thickness` pixels (`InferenceConfig.fine_scale_thickness`), else 1 (3D masks and a limit of 0
    always give 1)."""
    if masks.ndim != 4 or fine_scale_thickness <= 0:
        return 1
    thickness = structure_thickness(masks)
    return FINE_SCALE if bool((thickness < fine_scale_thickness).all()) else 1


def to_model_grid(images: torch.Tensor, size: int, masks: bool = False) -> torch.Tensor:
    """(N, C, H, W) tensors on a finer grid area-averaged down to size x size (masks: their `covered` pixels)."""
    if images.shape[-1] == size:
        return images
    small = F.interpolate(images.float(), size=(size, size), mode="area")
    return covered(small).float() if masks else small


def to_score_grid(values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) model-grid probabilities resized bilinearly to (B, *size)."""
    if tuple(values.shape[-2:]) == tuple(size):
        return values
    return F.interpolate(values[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]


def support_inputs(images: torch.Tensor, masks: torch.Tensor, size: int, fine_scale_thickness: float
                   ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Model inputs of supports (N, C, H, W) given on a grid finer than size x size, and the input scale taken:
    straight from that grid where it is twice the input size and every class is thin (the engine's rule), else
    area-averaged down to the input size."""
    small_masks = to_model_grid(masks, size, masks=True)
    if images.shape[-1] == FINE_SCALE * size and choose_input_scale(small_masks, fine_scale_thickness) == FINE_SCALE:
        return images, masks.float(), FINE_SCALE
    return to_model_grid(images, size), small_masks, 1


def strided_slices(depth: int, stride: int) -> list[int]:
    """Slices 0, stride, 2 stride, ... and the last of a stack of `depth` (all of them at stride 1)."""
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    return sorted(set(range(0, depth, stride)) | {depth - 1})


def take_slices(values: torch.Tensor, kept: list[int]) -> torch.Tensor:
    """The `kept` slices of a stack (the stack itself, uncopied, when it keeps them all)."""
    return values if len(kept) == values.shape[0] else values[kept]


def fill_between(values: torch.Tensor, kept: list[int], depth: int) -> torch.Tensor:
    """(len(kept), ...) values of the `kept` slices of a stack (ascending, first 0, last depth - 1) -> (depth, ...),
    linear between neighbouring kept slices."""
    if len(kept) == depth:
        return values
    position = torch.arange(depth, dtype=torch.float32)
    anchors = torch.tensor(kept, dtype=torch.float32)
    upper = torch.searchsorted(anchors, position).clamp(1, len(kept) - 1)
    lower = upper - 1
    weight = ((position - anchors[lower]) / (anchors[upper] - anchors[lower])).view(-1, *[1] * (values.ndim - 1))
    return (1.0 - weight) * values[lower] + weight * values[upper]
