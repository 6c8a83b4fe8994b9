"""Toy in-context task for tests and smoke runs: each image holds a bright and a dark ellipse.

The class to segment ("bright" or "dark") is defined only by the support mask, so a model that
ignores its support cannot beat chance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

TOY_CLASSES = ("bright", "dark")


@dataclass
class ToyBatch:
    support_images: torch.Tensor
    support_masks: torch.Tensor
    query_images: torch.Tensor
    query_masks: torch.Tensor
    class_valid: torch.Tensor
    task_names: list[list[tuple[str, str]]] = field(default_factory=list)


def _ellipse(size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.uniform(0.25, 0.75, 2) * size
    ry, rx = rng.uniform(0.1, 0.22, 2) * size
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def toy_image(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(image, masks[2]) with non-overlapping bright and dark ellipses plus noise."""
    while True:
        bright, dark = _ellipse(size, rng), _ellipse(size, rng)
        if not (bright & dark).any():
            break
    image = rng.normal(0.0, 0.3, (size, size)).astype(np.float32)
    image[bright] += rng.uniform(1.0, 2.0)
    image[dark] -= rng.uniform(1.0, 2.0)
    return image, np.stack([bright, dark]).astype(np.float32)


class ToyEpisodes:
    """Episode source for the trainer: one random class per episode, support and query are different images."""

    def __init__(self, size: int = 32, supports: int = 1, seed: int = 0):
        self.size = size
        self.supports = supports
        self.rng = np.random.default_rng(seed)

    def sample_batch(self, batch_size: int) -> ToyBatch:
        s_img, s_mask, q_img, q_mask, names = [], [], [], [], []
        for _ in range(batch_size):
            label = int(self.rng.integers(2))
            pairs = [toy_image(self.size, self.rng) for _ in range(self.supports + 1)]
            s_img.append(np.stack([p[0][None] for p in pairs[:-1]]))
            s_mask.append(np.stack([p[1][label : label + 1] for p in pairs[:-1]]))
            q_img.append(pairs[-1][0][None, None])
            q_mask.append(pairs[-1][1][None, label : label + 1])
            names.append([("toy", TOY_CLASSES[label])])
        return ToyBatch(
            torch.from_numpy(np.stack(s_img)), torch.from_numpy(np.stack(s_mask)),
            torch.from_numpy(np.stack(q_img)), torch.from_numpy(np.stack(q_mask)),
            torch.ones(batch_size, 1, dtype=torch.bool), names,
        )

    def get_state(self) -> dict[str, Any]:
        return self.rng.bit_generator.state

    def set_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state
