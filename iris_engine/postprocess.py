"""Morphological clean-up of binary 2D/3D masks: largest component, hole filling, small-object removal."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from iris_engine.errors import IrisInputError


def _as_bool(mask: np.ndarray) -> np.ndarray:
    """Validate a 2D/3D mask and return it as bool."""
    array = np.asarray(mask)
    if array.ndim not in (2, 3):
        raise IrisInputError(f"postprocessing needs a 2D or 3D mask, got shape {array.shape}")
    return array.astype(bool, copy=False)


def _structure(ndim: int, connectivity: int) -> np.ndarray:
    """Neighbourhood for labelling: 1 = faces only, ndim = faces, edges and corners."""
    if not 1 <= connectivity <= ndim:
        raise IrisInputError(f"connectivity must be in 1..{ndim}, got {connectivity}")
    return ndimage.generate_binary_structure(ndim, connectivity)


def keep_largest_component(mask: np.ndarray, connectivity: int = 1) -> np.ndarray:
    """Keep only the largest connected component (an empty mask stays empty)."""
    array = _as_bool(mask)
    labels, count = ndimage.label(array, structure=_structure(array.ndim, connectivity))
    if count <= 1:
        return array.copy()
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill background regions not connected to the array border (in 3D: fully enclosed cavities)."""
    array = _as_bool(mask)
    return ndimage.binary_fill_holes(array)


def remove_small_objects(mask: np.ndarray, min_size: int, connectivity: int = 1) -> np.ndarray:
    """Remove connected components with fewer than `min_size` pixels/voxels."""
    array = _as_bool(mask)
    if min_size < 0:
        raise IrisInputError(f"min_size must be >= 0, got {min_size}")
    labels, count = ndimage.label(array, structure=_structure(array.ndim, connectivity))
    if count == 0 or min_size <= 1:
        return array.copy()
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_size
    keep[0] = False
    return keep[labels]


@dataclass(frozen=True)
class PostprocessOptions:
    """Which clean-up steps to run; applied in the order small objects, holes, largest component."""

    remove_small_objects: bool = False
    min_size: int = 10
    fill_holes: bool = False
    keep_largest_component: bool = False
    connectivity: int = 1


def apply_postprocessing(mask: np.ndarray, options: PostprocessOptions) -> np.ndarray:
    """Run the enabled clean-up steps on a 2D/3D binary mask."""
    result = _as_bool(mask).copy()
    if options.remove_small_objects:
        result = remove_small_objects(result, options.min_size, options.connectivity)
    if options.fill_holes:
        result = fill_holes(result)
    if options.keep_largest_component:
        result = keep_largest_component(result, options.connectivity)
    return result
