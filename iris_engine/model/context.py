"""Support context (v2): what the support says, packed into tokens, and read back as dense maps over a query.

The IRIS tokens summarise a task; a small model trained on few tasks can learn to ignore them and fall back
on the structures it memorised. The support context gives the decoder a path it cannot ignore (PANet, ALPNet,
PFENet): per class, the masked foreground/background prototypes of every encoder level, regional foreground
prototypes, the foreground/background intensity histograms and the support mask itself at low resolution.
Everything is parameter-free and linear in the support, so averaging embeddings (context ensemble, memory-bank
EMA) averages prototypes, histograms and mask priors, and a stored embedding segments with no support at hand.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from iris_engine.config import ContextLayout
from iris_engine.model.blocks import interpolation_mode
from iris_engine.model.task_encoding import full_resolution_pooling_weights

HISTOGRAM_RANGE = (-4.0, 4.0)
CONTEXT_MAPS = 5  # foreground and background similarity, regional maximum, intensity posterior, mask prior


def _pad(vectors: torch.Tensor, dim: int) -> torch.Tensor:
    """Zero-pad the last axis to `dim`."""
    return F.pad(vectors, (0, dim - vectors.shape[-1]))


def _bin_index(image: torch.Tensor, bins: int) -> torch.Tensor:
    """Intensity bin (N, *S) of each pixel of z-scored images (N, 1, *S) over HISTOGRAM_RANGE."""
    low, high = HISTOGRAM_RANGE
    return ((image[:, 0].clamp(low, high - 1e-6) - low) / (high - low) * bins).long()


def _intensity_bins(image: torch.Tensor, bins: int) -> torch.Tensor:
    """One-hot intensity bins (N, bins, *S) of z-scored images over HISTOGRAM_RANGE."""
    index = _bin_index(image, bins)
    levels = torch.arange(bins, device=image.device).reshape(1, bins, *([1] * (image.ndim - 2)))
    return (index.unsqueeze(1) == levels).to(image.dtype)


def _pool(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    return F.adaptive_avg_pool2d(x, size) if x.ndim == 4 else F.adaptive_avg_pool3d(x, size)


def _downsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Average pooling by a fixed factor (the encoder level's; exportable, unlike adaptive pooling)."""
    if factor == 1:
        return x
    return F.avg_pool2d(x, factor) if x.ndim == 4 else F.avg_pool3d(x, factor)


def encode_context(
    layout: ContextLayout, image: torch.Tensor, features: list[torch.Tensor], masks: torch.Tensor
) -> torch.Tensor:
    """Context tokens (N, K, T_ctx, C) of supports: image (N, 1, *S), encoder features, masks (N, K, *S)."""
    n, k = masks.shape[:2]
    dim = features[-1].shape[1]
    spatial = tuple(range(2, masks.ndim))
    fg_area = masks.sum(spatial).clamp_min(1e-6)[..., None]
    bg_area = (1 - masks).sum(spatial).clamp_min(1e-6)[..., None]
    parts = []
    for level in features:
        size = tuple(level.shape[2:])
        fg_w = full_resolution_pooling_weights(masks, size).flatten(2)
        bg_w = full_resolution_pooling_weights(1 - masks, size).flatten(2)
        flat = level.flatten(2)
        parts.append(_pad(torch.einsum("ncx,nkx->nkc", flat, fg_w) / fg_area, dim))
        parts.append(_pad(torch.einsum("ncx,nkx->nkc", flat, bg_w) / bg_area, dim))
    bottleneck = features[-1]
    low_masks = _pool(masks, tuple(bottleneck.shape[2:]))
    grid = (round(layout.regions ** (1 / layout.spatial_dims)),) * layout.spatial_dims
    cell_fg = _pool(low_masks, grid).flatten(2)
    weighted = (bottleneck.unsqueeze(1) * low_masks.unsqueeze(2)).flatten(0, 1)
    cell_sum = _pool(weighted, grid).reshape(n, k, dim, -1)
    regions = torch.where(cell_fg[..., None] > 1e-3, cell_sum.transpose(2, 3) / cell_fg[..., None].clamp_min(1e-3), 0)
    one_hot = _intensity_bins(image, layout.histogram_bins).flatten(2)
    flat_masks = masks.flatten(2)
    fg_hist = torch.einsum("nbx,nkx->nkb", one_hot, flat_masks) / fg_area
    bg_hist = torch.einsum("nbx,nkx->nkb", one_hot, 1 - flat_masks) / bg_area
    prior = _pool(masks, (layout.prior_size,) * layout.spatial_dims).flatten(2)
    prior = F.pad(prior, (0, layout.prior_tokens * dim - prior.shape[-1])).reshape(n, k, layout.prior_tokens, dim)
    return torch.cat(
        [
            torch.stack(parts, dim=2),
            regions,
            _pad(cell_fg, dim).unsqueeze(2),
            _pad(torch.cat([fg_hist, bg_hist], dim=-1), dim).unsqueeze(2),
            prior,
        ],
        dim=2,
    )


def flatten_prior(layout: ContextLayout, tokens: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """Tokens (B, K, T, C) whose support-mask prior, in the episodes `chosen` (B,), becomes the mask's mean
    everywhere: where the support lies is lost, how much of it there is is kept (training's prior dropout)."""
    prior = tokens[:, :, layout.prior]
    flat = prior.flatten(2)
    values = layout.prior_size**layout.spatial_dims
    mean = flat[..., :values].mean(-1, keepdim=True).expand(-1, -1, values)
    flattened = torch.cat([mean, flat[..., values:]], dim=-1).reshape(prior.shape)
    prior = torch.where(chosen.reshape(-1, 1, 1, 1), flattened, prior)
    return torch.cat([tokens[:, :, : layout.prior.start], prior, tokens[:, :, layout.prior.stop :]], dim=2)


def _cosine(features: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of features (B, c, *s) to vectors (B, K, G, c) -> (B, K, G, *s).

    The feature norms are taken once for all G vectors (as F.normalize: divided by max(norm, 1e-12))."""
    flat = features.flatten(2)
    inverse_norm = flat.square().sum(1).sqrt().clamp_min(1e-12).reciprocal()
    sim = torch.einsum("bcx,bkgc->bkgx", flat, F.normalize(vectors, dim=-1)) * inverse_norm[:, None, None]
    return sim.reshape(*sim.shape[:-1], *features.shape[2:])


def _intensity_posterior(image: torch.Tensor, posterior: torch.Tensor) -> torch.Tensor:
    """Each pixel's foreground posterior looked up by its intensity bin: image (B, 1, *S), posterior (B, K, bins)."""
    index = _bin_index(image, posterior.shape[-1]).flatten(1)
    looked_up = torch.gather(posterior, 2, index.unsqueeze(1).expand(-1, posterior.shape[1], -1))
    return looked_up.reshape(*posterior.shape[:2], *image.shape[2:])


def context_maps(
    layout: ContextLayout, tokens: torch.Tensor, image: torch.Tensor, features: list[torch.Tensor]
) -> list[torch.Tensor]:
    """Per encoder level, (B, K, CONTEXT_MAPS, *s) maps of a query from task tokens (B, K, T, C)."""
    b, k = tokens.shape[:2]
    mode = interpolation_mode(layout.spatial_dims)
    full_size = tuple(image.shape[2:])
    bottleneck = features[-1]
    region_sim = _cosine(bottleneck, tokens[:, :, layout.region_prototypes])
    valid = tokens[:, :, layout.region_weights, : layout.regions] > 1e-3
    valid_view = valid.reshape(*valid.shape, *([1] * layout.spatial_dims))
    region_max = torch.where(valid_view, region_sim, torch.full_like(region_sim, -1.0)).amax(dim=2)
    bins = layout.histogram_bins
    histogram = tokens[:, :, layout.histogram, : 2 * bins]
    fg_hist, bg_hist = histogram[..., :bins].clamp_min(0), histogram[..., bins:].clamp_min(0)
    posterior = (fg_hist + 1e-3) / (fg_hist + bg_hist + 2e-3)
    intensity = _intensity_posterior(image, posterior)
    prior_values = layout.prior_size**layout.spatial_dims
    prior = tokens[:, :, layout.prior].flatten(2)[..., :prior_values]
    prior = prior.reshape(b * k, 1, *(layout.prior_size,) * layout.spatial_dims)
    prototypes = tokens[:, :, layout.prototypes]
    maps = []
    for index, level in enumerate(features):
        size = tuple(level.shape[2:])
        channels = level.shape[1]
        fg_bg = _cosine(level, prototypes[:, :, 2 * index : 2 * index + 2, :channels])
        regional = F.interpolate(region_max.reshape(b * k, 1, *region_max.shape[2:]), size=size, mode=mode,
                                 align_corners=False)
        level_intensity = _downsample(intensity.reshape(b * k, 1, *full_size), 2**index)
        low_prior = F.interpolate(prior, size=size, mode=mode, align_corners=False)
        stacked = torch.cat(
            [fg_bg.reshape(b * k, 2, *size), regional, level_intensity, low_prior], dim=1
        )
        maps.append(stacked.reshape(b, k, CONTEXT_MAPS, *size))
    return maps
