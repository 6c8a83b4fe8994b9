"""Superpixel pseudo-label tasks and task augmentation (pure functions) and their episodes in the sampler."""

from __future__ import annotations

import numpy as np

from iris_engine.data.pseudo_tasks import (
    PseudoTaskConfig,
    SuperpixelCache,
    augment_targets,
    boundary_band,
    choose_segments,
    follow_target,
    monotone_remap,
)


def blocks_image() -> np.ndarray:
    """Four flat quadrants of different brightness plus mild noise."""
    rng = np.random.default_rng(0)
    image = np.zeros((64, 64), np.float32)
    image[:32, 32:], image[32:, :32], image[32:, 32:] = 1.0, 2.0, 3.0
    return image + rng.normal(0, 0.01, image.shape).astype(np.float32)


def test_superpixels_follow_the_image_and_targets_are_disjoint():
    cfg = PseudoTaskConfig(min_area_fraction=0.05)
    segments = SuperpixelCache(blocks_image()[None], cfg)(0)
    assert len(np.unique(segments)) >= 4
    targets = choose_segments(segments, 3, cfg, np.random.default_rng(1))
    assert 1 <= len(targets) <= 3
    for i, t in enumerate(targets):
        assert cfg.min_area_fraction * t.size <= t.sum() <= cfg.max_area_fraction * t.size
        for other in targets[i + 1 :]:
            assert not (t & other).any()


def test_follow_target_keeps_only_mostly_covered_superpixels():
    segments = np.zeros((8, 8), np.int32)
    segments[:, 4:] = 1
    target = np.zeros((8, 8), bool)
    target[:, 3:] = True  # covers all of segment 1 and a quarter of segment 0
    followed = follow_target(target, segments, 0.5)
    assert followed[:, 4:].all() and not followed[:, :4].any()


def test_boundary_band_and_target_augmentation():
    mask = np.zeros((20, 20), bool)
    mask[5:15, 5:15] = True
    band = boundary_band(mask, 2)
    assert band.sum() == 100 - 36 and not band[7:13, 7:13].any()
    masks = np.stack([np.stack([mask, ~mask & (np.arange(20)[None, :] < 3)])] * 2)
    out = augment_targets(masks, PseudoTaskConfig(), np.random.default_rng(0))
    assert out.shape[0] == 2 and out.shape[1] in (1, 2)
    np.testing.assert_array_equal(out[0], out[1])


def test_monotone_remap_keeps_intensity_order():
    images = np.random.default_rng(0).normal(size=(2, 16, 16)).astype(np.float32)
    out = monotone_remap(images, np.random.default_rng(3))
    order = np.argsort(images.ravel())
    assert np.all(np.diff(out.ravel()[order]) >= -1e-6)
