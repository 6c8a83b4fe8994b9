"""Largest component, hole filling, small-object removal and the options pipeline on 2D and 3D masks."""

from __future__ import annotations

import numpy as np
import pytest

from iris_engine.errors import IrisInputError
from iris_engine.postprocess import (
    PostprocessOptions,
    apply_postprocessing,
    fill_holes,
    keep_largest_component,
    remove_small_objects,
)


def _blobs_2d() -> np.ndarray:
    mask = np.zeros((20, 20), bool)
    mask[2:10, 2:10] = True  # 64 px with a hole
    mask[5, 5] = False
    mask[15:17, 15:17] = True  # 4 px
    mask[12, 12] = mask[13, 13] = True  # diagonal pair: one object only with connectivity 2
    return mask


def test_keep_largest_component_2d_and_connectivity() -> None:
    mask = _blobs_2d()
    largest = keep_largest_component(mask)
    assert largest.sum() == 63 and not largest[15, 15]
    diag = np.zeros((5, 5), bool)
    diag[1, 1] = diag[2, 2] = diag[3, 3] = True
    assert keep_largest_component(diag, connectivity=1).sum() == 1
    assert keep_largest_component(diag, connectivity=2).sum() == 3
    assert not keep_largest_component(np.zeros((4, 4), bool)).any()
    with pytest.raises(IrisInputError):
        keep_largest_component(diag, connectivity=3)


def test_fill_holes_and_remove_small_3d() -> None:
    cube = np.zeros((9, 9, 9), bool)
    cube[1:8, 1:8, 1:8] = True
    cube[4, 4, 4] = False
    cube[0, 0, 0] = True
    filled = fill_holes(cube)
    assert filled[4, 4, 4] and filled.sum() == 7**3 + 1
    cleaned = remove_small_objects(cube, min_size=2)
    assert not cleaned[0, 0, 0] and cleaned.sum() == 7**3 - 1
    assert remove_small_objects(cube, 0).sum() == cube.sum()


def test_apply_postprocessing_pipeline() -> None:
    mask = _blobs_2d()
    assert np.array_equal(apply_postprocessing(mask, PostprocessOptions()), mask)
    out = apply_postprocessing(mask, PostprocessOptions(remove_small_objects=True, min_size=5, fill_holes=True))
    assert out[5, 5] and not out[15, 15] and out.sum() == 64
    out = apply_postprocessing(mask, PostprocessOptions(keep_largest_component=True, fill_holes=True))
    assert out.sum() == 64
    with pytest.raises(IrisInputError):
        apply_postprocessing(np.zeros(5, bool), PostprocessOptions())
