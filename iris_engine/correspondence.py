"""Dense correspondence to the support at the fine input scale: each query pixel's label is voted by its most
similar support pixels in the decoder's pixel-feature space (a k-NN label transfer, as in non-parametric
few-shot segmentation; with top_k 1 the largest similarity to any sampled foreground pixel minus that to any
background pixel), and the vote is blended into the model's probability.

It applies only where the engine reads a thin structure at twice the input size (`input_scale.py`): there the
votes carry the support's own fine detail (vessels, trachea, membranes), while on thicker structures they
blurred the model's boundaries (training patients: report, "Session 22"; settings chosen in session 23).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from iris_engine.errors import IrisInputError

QUERY_CHUNK = 1024  # query pixels compared at once: their similarities (chunk x 2 samples) stay in cache


@dataclass(frozen=True)
class CorrespondenceConfig:
    """The k-NN vote and its blend (chosen on training patients, report "Session 22" and "Session 23")."""

    weight: float = 0.75  # share of the vote in the blended probability; 0 turns the path off
    temperature: float = 0.1  # of the foreground-minus-background similarity
    top_k: int = 1  # most similar support pixels averaged per side
    samples: int = 256  # support pixels kept per class and side (foreground, background)
    # the vote is taken only within `band` pixels of where the model's probability reaches `band_threshold`
    # (the thin structure and its surroundings; elsewhere the model's probability stands): 4x less work
    band_threshold: float = 0.1
    band: int = 4
    # the blend is sharpened, p -> sigmoid(sharpness * logit(p)): the same masks (0.5 stays 0.5), but without the
    # wide band of probabilities just under 0.5 that made a first negative click empty a thin mask
    sharpness: float = 6.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.weight <= 1.0 or self.temperature <= 0 or self.sharpness <= 0:
            raise IrisInputError("correspondence weight must lie in [0, 1], temperature and sharpness be > 0")
        if self.top_k < 1 or self.samples < 1:
            raise IrisInputError("correspondence top_k and samples must be >= 1")


@dataclass
class SupportPixels:
    """Unit pixel features of sampled support pixels per class: foreground and background (K, samples, D)."""

    foreground: torch.Tensor
    background: torch.Tensor
    config: CorrespondenceConfig

    def select(self, index: list[int]) -> SupportPixels:
        return SupportPixels(self.foreground[index], self.background[index], self.config)

    def to(self, device: torch.device | str) -> SupportPixels:
        return SupportPixels(self.foreground.to(device), self.background.to(device), self.config)


def _sample(features: torch.Tensor, chosen: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` rows of features (P, D) where `chosen` (P,) holds: without replacement when there are enough, else
    every one of them repeated in turn."""
    index = torch.nonzero(chosen)[:, 0]
    if index.numel() >= count:
        index = index[torch.randperm(index.numel(), generator=generator)[:count]]
    else:
        index = index.repeat(-(-count // index.numel()))[:count]
    return features[index]


def sample_support_pixels(features: torch.Tensor, masks: torch.Tensor, config: CorrespondenceConfig
                          ) -> SupportPixels:
    """Support pixel features (N, D, H, W) and masks (N, K, H, W) -> sampled unit features of each class's
    foreground and background over all supports (a class need not show in every support)."""
    d = features.shape[1]
    flat = F.normalize(features.float().permute(0, 2, 3, 1).reshape(-1, d), dim=1)
    inside = masks.float().permute(1, 0, 2, 3).reshape(masks.shape[1], -1) >= 0.5
    generator = torch.Generator().manual_seed(config.seed)
    foreground, background = [], []
    for k in range(inside.shape[0]):
        if not inside[k].any() or inside[k].all():
            raise IrisInputError(f"class index {k} needs foreground and background pixels in its supports")
        foreground.append(_sample(flat, inside[k].cpu(), config.samples, generator))
        background.append(_sample(flat, ~inside[k].cpu(), config.samples, generator))
    return SupportPixels(torch.stack(foreground), torch.stack(background), config)


def _top_mean(similarity: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of the k largest values of each row (P, M)."""
    return similarity.amax(1) if k == 1 else similarity.topk(min(k, similarity.shape[1]), dim=1).values.mean(1)


def _similarity_gap(queries: torch.Tensor, foreground: torch.Tensor, background: torch.Tensor, k: int
                    ) -> torch.Tensor:
    """Top-k mean cosine similarity of each unit query row (P, D) to the foreground rows (M, D) minus that to
    the background rows, one product per chunk of queries for both sides."""
    keys = torch.cat([foreground, background]).T.contiguous()
    count = foreground.shape[0]
    gaps = []
    for start in range(0, queries.shape[0], QUERY_CHUNK):
        similarity = queries[start : start + QUERY_CHUNK] @ keys
        gaps.append(_top_mean(similarity[:, :count], k) - _top_mean(similarity[:, count:], k))
    return torch.cat(gaps)


def band(probability: torch.Tensor, config: CorrespondenceConfig) -> torch.Tensor:
    """(B, K, H, W) bool: within `config.band` pixels of a probability reaching `config.band_threshold`."""
    near = F.max_pool2d((probability >= config.band_threshold).float(), 2 * config.band + 1, 1, config.band)
    return near > 0


def vote(pixels: torch.Tensor, support: SupportPixels, where: torch.Tensor) -> torch.Tensor:
    """The support's vote in [0, 1] (B, K, H, W) for query pixel features (B, D, H, W), taken where `where`
    (B, K, H, W) holds (0 elsewhere)."""
    d = pixels.shape[1]
    flat = pixels.float().permute(0, 2, 3, 1).reshape(-1, d)
    out = torch.zeros(where.shape, dtype=torch.float32, device=flat.device)
    foreground, background = support.foreground.to(flat), support.background.to(flat)
    for k in range(where.shape[1]):
        chosen = where[:, k].reshape(-1).to(flat.device)
        if not chosen.any():
            continue
        queries = F.normalize(flat[chosen], dim=1)
        gap = _similarity_gap(queries, foreground[k], background[k], support.config.top_k)
        values = torch.zeros(chosen.shape[0], device=flat.device)
        values[chosen] = torch.sigmoid(gap / support.config.temperature)
        out[:, k] = values.view(where.shape[0], *where.shape[2:])
    return out


def blend(probability: torch.Tensor, pixels: torch.Tensor, support: SupportPixels) -> torch.Tensor:
    """The model's probability (B, K, H, W) with the support's vote mixed in by `weight` within the band, then
    sharpened there."""
    config = support.config
    where = band(probability, config)
    mixed = (1.0 - config.weight) * probability + config.weight * vote(pixels, support, where)
    if config.sharpness != 1.0:
        mixed = torch.sigmoid(config.sharpness * torch.logit(mixed, eps=1e-6))
    return torch.where(where, mixed, probability)
