"""Reference rows for every report: copy the support mask, and intensity nearest-neighbour label transfer."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def copy_support_mask(support_masks: torch.Tensor) -> torch.Tensor:
    """Prediction = the (majority of the) support mask(s) pasted onto the query grid: (N, K, H, W) -> (K, H, W)."""
    return support_masks.float().mean(0) >= 0.5


def _pixel_features(images: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) -> (N, H*W, 3): intensity and two Gaussian-smoothed intensities."""
    features = [images]
    for sigma in (2.0, 4.0):
        radius = int(3 * sigma)
        grid = torch.arange(-radius, radius + 1, dtype=images.dtype)
        kernel = torch.exp(-(grid**2) / (2 * sigma**2))
        kernel = kernel / kernel.sum()
        blurred = F.conv2d(F.pad(images, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
        blurred = F.conv2d(F.pad(blurred, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
        features.append(blurred)
    return torch.cat(features, dim=1).flatten(2).transpose(1, 2)


def intensity_nearest_neighbour(
    support_images: torch.Tensor,
    support_masks: torch.Tensor,
    query_image: torch.Tensor,
    samples_per_class: int = 1000,
    k: int = 5,
    seed: int = 0,
) -> torch.Tensor:
    """Non-learned baseline: k-NN label transfer on (intensity, smoothed intensities) from the supports.

    For each class, balanced samples of foreground and background support pixels vote on each query pixel.
    support_images (N, 1, H, W), support_masks (N, K, H, W), query_image (1, H, W) -> (K, H, W) bool.
    """
    generator = torch.Generator().manual_seed(seed)
    support_features = _pixel_features(support_images.float()).reshape(-1, 3)
    query_features = _pixel_features(query_image.float()[None])[0]
    predictions = []
    for c in range(support_masks.shape[1]):
        labels = support_masks[:, c].flatten() >= 0.5
        chosen = []
        for value in (True, False):
            rows = (labels == value).nonzero().flatten()
            if len(rows) > 0:
                pick = torch.randint(len(rows), (min(samples_per_class, len(rows)),), generator=generator)
                chosen.append(rows[pick])
        rows = torch.cat(chosen)
        distances = torch.cdist(query_features, support_features[rows])
        nearest = distances.topk(min(k, len(rows)), largest=False).indices
        votes = labels[rows][nearest].float().mean(1)
        predictions.append((votes >= 0.5).reshape(query_image.shape[-2:]))
    return torch.stack(predictions)
