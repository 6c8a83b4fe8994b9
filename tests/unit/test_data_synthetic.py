"""Synthetic task generator: determinism, label counts, normalisation."""

from __future__ import annotations

import numpy as np

from iris_engine.data.synthetic import SynthTaskGenerator


def test_deterministic_per_seed() -> None:
    gen = SynthTaskGenerator(64)
    a = gen.generate(np.random.default_rng(7))
    b = gen.generate(np.random.default_rng(7))
    c = gen.generate(np.random.default_rng(8))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_shapes_labels_zscore() -> None:
    gen = SynthTaskGenerator(64)
    rng = np.random.default_rng(0)
    for _ in range(10):
        img, lab = gen.generate(rng)
        assert img.shape == (64, 64) and img.dtype == np.float32 and lab.dtype == np.uint8
        assert lab.max() <= 5 and len(np.unique(lab)) >= 1
        assert abs(float(img.mean())) < 1e-3 and abs(float(img.std()) - 1) < 1e-2


def test_3d() -> None:
    img, lab = SynthTaskGenerator(16, ndim=3).generate(np.random.default_rng(1))
    assert img.shape == (16, 16, 16) and lab.shape == (16, 16, 16)
