"""SynthSeg-style synthetic tasks: random label maps rendered with random per-label intensities."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def _smooth_noise(rng: np.random.Generator, channels: int, shape: tuple[int, ...], cells: int) -> torch.Tensor:
    """Smooth random fields (channels, *shape): low-resolution noise upsampled (bi/tri-)cubically-ish."""
    low = torch.from_numpy(rng.standard_normal((1, channels, *([cells] * len(shape)))).astype(np.float32))
    mode = "bicubic" if len(shape) == 2 else "trilinear"
    return F.interpolate(low, size=shape, mode=mode, align_corners=False)[0]


@dataclass(frozen=True)
class SynthStyle:
    """One rendering style: per-label intensity table and corruption strengths."""

    means: np.ndarray
    stds: np.ndarray
    blur_sigma: float
    bias_strength: float
    gamma: float
    noise_std: float


class SynthTaskGenerator:
    """Random label maps (2-6 labels, value 0 = background) and their renderings at size S (2D or 3D)."""

    def __init__(self, size: int = 128, ndim: int = 2, min_labels: int = 2, max_labels: int = 6) -> None:
        if ndim not in (2, 3):
            raise ValueError("ndim must be 2 or 3")
        if not 2 <= min_labels <= max_labels:
            raise ValueError("need 2 <= min_labels <= max_labels")
        self.size, self.ndim = size, ndim
        self.min_labels, self.max_labels = min_labels, max_labels

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.size,) * self.ndim

    def sample_num_labels(self, rng: np.random.Generator) -> int:
        """Number of labels (background included)."""
        return int(rng.integers(self.min_labels, self.max_labels + 1))

    def sample_style(self, rng: np.random.Generator, n_labels: int) -> SynthStyle:
        """A random intensity table and corruption parameters."""
        return SynthStyle(
            means=rng.uniform(0.0, 1.0, n_labels).astype(np.float32),
            stds=rng.uniform(0.0, 0.08, n_labels).astype(np.float32),
            blur_sigma=float(rng.uniform(0.0, 1.5)),
            bias_strength=float(rng.uniform(0.0, 0.5)),
            gamma=float(np.exp(rng.normal(0.0, 0.25))),
            noise_std=float(rng.uniform(0.0, 0.05)),
        )

    def sample_label_map(self, rng: np.random.Generator, n_labels: int) -> np.ndarray:
        """Random label map with values 0..n_labels-1 (blobs on a smooth-noise background partition)."""
        shape = self.shape
        if rng.random() < 0.5:
            fields = _smooth_noise(rng, n_labels, shape, int(rng.integers(3, 9)))
            label = torch.argmax(fields, dim=0).to(torch.uint8)
        else:
            label = torch.zeros(shape, dtype=torch.uint8)
            grids = torch.meshgrid(*[torch.linspace(-1, 1, s) for s in shape], indexing="ij")
            warp = _smooth_noise(rng, 1, shape, int(rng.integers(3, 7)))[0] * float(rng.uniform(0.1, 0.4))
            for value in range(1, n_labels):
                centre = rng.uniform(-0.6, 0.6, self.ndim)
                radii = rng.uniform(0.12, 0.5, self.ndim)
                dist = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii, strict=True))
                label[dist + warp < 1.0] = value
        return self._elastic(rng, label).numpy()

    def _elastic(self, rng: np.random.Generator, label: torch.Tensor) -> torch.Tensor:
        """Smooth random displacement of a label map (nearest resampling)."""
        shape = self.shape
        disp = _smooth_noise(rng, self.ndim, shape, 4) * float(rng.uniform(0.0, 0.08))
        grids = torch.meshgrid(*[torch.linspace(-1, 1, s) for s in shape], indexing="ij")
        # grid_sample wants (x, y[, z]) = reversed axis order
        coords = torch.stack([g + d for g, d in zip(grids, disp, strict=True)][::-1], dim=-1)[None]
        out = F.grid_sample(label[None, None].float(), coords, mode="nearest", align_corners=True)
        return out[0, 0].to(torch.uint8)

    def render(self, label: np.ndarray, style: SynthStyle, rng: np.random.Generator) -> np.ndarray:
        """Image of a label map in a style, z-scored float32."""
        lab = torch.from_numpy(label.astype(np.int64))
        means = torch.from_numpy(style.means)[lab]
        stds = torch.from_numpy(style.stds)[lab]
        img = means + stds * torch.from_numpy(rng.standard_normal(label.shape).astype(np.float32))
        if style.blur_sigma > 0.3:
            img = _gaussian_blur(img, style.blur_sigma)
        bias = torch.exp(_smooth_noise(rng, 1, self.shape, 3)[0] * style.bias_strength)
        img = (img * bias).clamp_min(0.0)
        img = (img / img.max().clamp_min(1e-6)) ** style.gamma
        img = img + style.noise_std * torch.from_numpy(rng.standard_normal(label.shape).astype(np.float32))
        img = (img - img.mean()) / img.std().clamp_min(1e-6)
        return img.numpy().astype(np.float32)

    def generate(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One image (z-scored float32) and its label map (uint8) in a fresh random style."""
        n = self.sample_num_labels(rng)
        style = self.sample_style(rng, n)
        label = self.sample_label_map(rng, n)
        return self.render(label, style, rng), label


def _gaussian_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a 2D or 3D tensor."""
    radius = max(1, int(round(2.5 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    k = k / k.sum()
    out = img[None, None]
    for axis in range(img.ndim):
        shape = [1, 1] + [1] * img.ndim
        shape[2 + axis] = k.numel()
        pad = [0, 0] * img.ndim
        pad[2 * (img.ndim - 1 - axis)] = radius
        pad[2 * (img.ndim - 1 - axis) + 1] = radius
        conv = F.conv2d if img.ndim == 2 else F.conv3d
        out = conv(F.pad(out, pad, mode="replicate"), k.view(shape))
    return out[0, 0]
