"""Training tasks that cannot be memorised: superpixel pseudo-labels and task augmentation of real labels.

Superpixel tasks follow SSL-ALPNet (Ouyang et al., ECCV 2020): one or more random Felzenszwalb superpixels of
a slice are the target; the support and the query are two independent augmentations of that slice, or two
nearby slices of the same volume (the target followed through by overlap). Task augmentation follows
UniverSeg: merged classes, boundary bands, and intensity inversion / monotone remapping / edge images applied
to support and query alike. Nothing here depends on which structure a label names.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import repeat

import numpy as np
from scipy import ndimage
from skimage.segmentation import felzenszwalb


@dataclass
class PseudoTaskConfig:
    """Superpixel and task-augmentation settings."""

    scale_range: tuple[float, float] = (50.0, 300.0)
    sigma: float = 0.8
    min_segment_size: int = 20
    min_area_fraction: float = 0.008
    max_area_fraction: float = 0.4
    merge_prob: float = 0.3
    neighbour_prob: float = 0.4
    max_slice_gap: int = 3
    follow_overlap: float = 0.5
    band_width: tuple[int, int] = (1, 3)


def slice_superpixels(row: int, image: np.ndarray, cfg: PseudoTaskConfig) -> np.ndarray:
    """Felzenszwalb superpixels of one bank slice; the scale is fixed per row."""
    low, high = cfg.scale_range
    scale = low + (high - low) * ((row * 2654435761) % 1000) / 1000
    return felzenszwalb(
        image.astype(np.float32), scale=scale, sigma=cfg.sigma, min_size=cfg.min_segment_size, channel_axis=None
    ).astype(np.int32)


class SuperpixelCache:
    """Superpixels of bank slices, computed once per slice (`fill` computes many at once in worker processes)."""

    def __init__(self, images: np.ndarray, cfg: PseudoTaskConfig):
        self.images, self.cfg = images, cfg
        self._cache: dict[int, np.ndarray] = {}

    def __call__(self, row: int) -> np.ndarray:
        if row not in self._cache:
            self._cache[row] = slice_superpixels(row, self.images[row], self.cfg)
        return self._cache[row]

    def fill(self, rows: np.ndarray, workers: int) -> None:
        """Compute the superpixels of `rows` not yet cached, in `workers` processes."""
        todo = [int(r) for r in rows if int(r) not in self._cache]
        if not todo:
            return
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            images = (self.images[r] for r in todo)
            for row, segments in zip(todo, pool.map(slice_superpixels, todo, images, repeat(self.cfg), chunksize=32),
                                     strict=True):
                self._cache[row] = segments


def choose_segments(
    segments: np.ndarray, n_classes: int, cfg: PseudoTaskConfig, rng: np.random.Generator
) -> list[np.ndarray]:
    """Up to n_classes disjoint targets, each one superpixel or (sometimes) two touching ones."""
    total = segments.size
    ids, areas = np.unique(segments, return_counts=True)
    eligible = ids[(areas >= cfg.min_area_fraction * total) & (areas <= cfg.max_area_fraction * total)]
    rng.shuffle(eligible)
    targets: list[np.ndarray] = []
    used: set[int] = set()
    for seg in eligible:
        if len(targets) == n_classes:
            break
        if int(seg) in used:
            continue
        target = segments == seg
        used.add(int(seg))
        if rng.random() < cfg.merge_prob:
            ring = ndimage.binary_dilation(target) & ~target
            neighbours = [int(v) for v in np.unique(segments[ring]) if int(v) not in used]
            if neighbours:
                extra = int(rng.choice(neighbours))
                merged = target | (segments == extra)
                if merged.sum() <= cfg.max_area_fraction * total:
                    target = merged
                    used.add(extra)
        targets.append(target)
    return targets


def follow_target(target: np.ndarray, segments: np.ndarray, min_overlap: float) -> np.ndarray:
    """The superpixels of a nearby slice that lie mostly (> min_overlap of their area) inside `target`."""
    ids = segments.ravel()
    inside = np.bincount(ids, weights=target.ravel().astype(np.float64), minlength=ids.max() + 1)
    area = np.bincount(ids, minlength=ids.max() + 1)
    keep = inside / np.maximum(area, 1) > min_overlap
    return keep[segments]


def boundary_band(mask: np.ndarray, width: int) -> np.ndarray:
    """The inner band of `width` pixels along the mask's boundary."""
    return mask & ~ndimage.binary_erosion(mask, iterations=width)


def monotone_remap(images: np.ndarray, rng: np.random.Generator, knots: int = 5) -> np.ndarray:
    """One random increasing piecewise-linear intensity map applied to every image (z-scored output)."""
    low, high = float(images.min()), float(images.max())
    if high <= low:
        return images
    xs = np.linspace(low, high, knots)
    ys = np.cumsum(rng.uniform(0.1, 1.0, knots))
    out = np.interp(images, xs, ys)
    return ((out - out.mean()) / (out.std() + 1e-6)).astype(np.float32)


def edge_images(images: np.ndarray) -> np.ndarray:
    """Sobel gradient magnitude of each image, z-scored."""
    out = np.empty_like(images, dtype=np.float32)
    for i, image in enumerate(images.astype(np.float32)):
        magnitude = np.hypot(ndimage.sobel(image, 0), ndimage.sobel(image, 1))
        out[i] = (magnitude - magnitude.mean()) / (magnitude.std() + 1e-6)
    return out


def augment_intensities(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Inversion, a monotone remap or edge images, the same for every image of an episode."""
    choice = rng.integers(3)
    if choice == 0:
        return -images
    if choice == 1:
        return monotone_remap(images, rng)
    return edge_images(images)


def augment_targets(masks: np.ndarray, cfg: PseudoTaskConfig, rng: np.random.Generator) -> np.ndarray:
    """Masks (M, L, S, S) of one episode -> merged classes (when L > 1) or boundary bands, alike for all images."""
    if masks.shape[1] > 1 and rng.random() < 0.5:
        return masks.any(axis=1, keepdims=True)
    width = int(rng.integers(cfg.band_width[0], cfg.band_width[1] + 1))
    out = np.zeros_like(masks)
    for m in range(masks.shape[0]):
        for c in range(masks.shape[1]):
            out[m, c] = boundary_band(masks[m, c], width)
    return out
