"""Intensity normalisation, canonical orientation and the geometry between volumes and model inputs."""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from iris_engine.config import PreprocessConfig
from iris_engine.errors import IrisInputError
from iris_engine.io.volume import Volume

RAS_ORNT = nib.orientations.axcodes2ornt(("R", "A", "S"))


def normalize_intensity(array: np.ndarray, modality: str, cfg: PreprocessConfig = PreprocessConfig()) -> np.ndarray:
    """Clip (CT window, else percentiles) and z-score to float32; a constant image gives zeros."""
    data = np.asarray(array, dtype=np.float32)
    if data.size == 0:
        raise IrisInputError("cannot normalise an empty image")
    if not np.isfinite(data).all():
        raise IrisInputError("image contains NaN or infinite values")
    if modality == "CT":
        lo, hi = cfg.ct_window
    else:
        lo, hi = np.percentile(data, cfg.percentile_window)
    data = np.clip(data, lo, hi)
    mean, std = float(data.mean(dtype=np.float64)), float(data.std(dtype=np.float64))
    if std <= 1e-6 * max(1.0, abs(mean)):
        return np.zeros(data.shape, dtype=np.float32)
    return ((data - mean) / std).astype(np.float32)


@dataclass
class CanonicalTransform:
    """Axis permutation/flips from a volume's voxel order to RAS (`ornt`), invertible on arrays."""

    ornt: np.ndarray
    original_shape: tuple[int, ...]
    original_affine: np.ndarray

    def apply(self, array: np.ndarray) -> np.ndarray:
        """Reorient an array in original voxel order (optionally channel-first) to canonical order."""
        return self._reorient(array, self.ornt, self.original_shape)

    def invert(self, array: np.ndarray) -> np.ndarray:
        """Reorient an array in canonical order (optionally channel-first) back to the original axes."""
        canonical_shape = tuple(
            int(s)
            for s in nib.orientations.apply_orientation(np.empty(self.original_shape, dtype=bool), self.ornt).shape
        )
        inverse = nib.orientations.ornt_transform(RAS_ORNT[: len(self.ornt)], self.ornt)
        return self._reorient(array, inverse, canonical_shape)

    @staticmethod
    def _reorient(array: np.ndarray, ornt: np.ndarray, spatial_shape: tuple[int, ...]) -> np.ndarray:
        """Apply `ornt` to the trailing spatial axes of an array shaped (*spatial) or (K, *spatial)."""
        array = np.asarray(array)
        if array.shape == spatial_shape:
            return np.ascontiguousarray(nib.orientations.apply_orientation(array, ornt))
        if array.ndim == len(spatial_shape) + 1 and array.shape[1:] == spatial_shape:
            return np.stack([nib.orientations.apply_orientation(a, ornt) for a in array])
        raise IrisInputError(f"array shape {array.shape} does not match (K,) + {spatial_shape}")


def to_canonical(volume: Volume) -> tuple[Volume, CanonicalTransform]:
    """Reorder a 3D volume's axes to RAS (closest to its affine); 2D images pass through unchanged."""
    if volume.ndim == 3:
        ornt = nib.orientations.io_orientation(volume.affine)
    else:
        ornt = RAS_ORNT[: volume.ndim].copy()
    transform = CanonicalTransform(ornt=ornt, original_shape=volume.shape, original_affine=volume.affine.copy())
    if volume.ndim != 3:
        return volume, transform
    array = transform.apply(volume.array)
    affine = volume.affine @ nib.orientations.inv_ornt_aff(ornt, volume.shape)
    canonical = Volume(
        array, affine=affine, modality=volume.modality, source=volume.source, metadata=dict(volume.metadata)
    )
    return canonical, transform


def axial_spacing(volume: Volume) -> float:
    """Slice spacing in mm along the axis `to_canonical` puts last (the axial slices of a 3D volume)."""
    ornt = nib.orientations.io_orientation(volume.affine)
    return volume.spacing[int(np.flatnonzero(ornt[:, 0] == 2)[0])]


@dataclass(frozen=True)
class SliceGeometry:
    """How a 2D image or 3D volume was cut into S x S model slices (to map predictions back)."""

    original_shape: tuple[int, ...]
    axis: int | None
    image_size: int

    @property
    def slice_shape(self) -> tuple[int, int]:
        """Shape of one original slice (the two axes other than `axis`)."""
        if self.axis is None:
            return (self.original_shape[0], self.original_shape[1])
        rest = [s for i, s in enumerate(self.original_shape) if i != self.axis]
        return (rest[0], rest[1])

    @property
    def num_slices(self) -> int:
        """Number of model slices N."""
        return 1 if self.axis is None else self.original_shape[self.axis]


def _resize_2d(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (antialiased when shrinking) resize of (N, C, H, W) to `size`."""
    if tuple(t.shape[-2:]) == size:
        return t
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True)


def _to_slices(array: np.ndarray, geometry: SliceGeometry) -> np.ndarray:
    """(C, *original_shape) to (N, C, a, b) along the geometry's slicing axis."""
    if geometry.axis is None:
        return array[None]
    return np.moveaxis(array, geometry.axis + 1, 0)


def volume_to_model_slices(
    volume: Volume, image_size: int, axis: int = -1, cfg: PreprocessConfig = PreprocessConfig()
) -> tuple[torch.Tensor, SliceGeometry]:
    """Normalise the whole volume, cut it into slices along `axis` and resize each to (1, S, S)."""
    if image_size < 1:
        raise IrisInputError(f"image_size must be positive, got {image_size}")
    if volume.ndim not in (2, 3):
        raise IrisInputError(f"expected a 2D image or 3D volume, got shape {volume.shape}")
    if volume.ndim == 3 and not -3 <= axis <= 2:
        raise IrisInputError(f"axis {axis} is out of range for a 3D volume")
    geometry = SliceGeometry(volume.shape, None if volume.ndim == 2 else axis % 3, image_size)
    normalised = normalize_intensity(volume.array, volume.modality, cfg)
    slices = torch.from_numpy(np.ascontiguousarray(_to_slices(normalised[None], geometry)))
    return _resize_2d(slices, (image_size, image_size)).contiguous().float(), geometry


def mask_to_model_slices(mask: np.ndarray, geometry: SliceGeometry) -> torch.Tensor:
    """Masks (*shape) or (K, *shape) to soft (N, K, S, S) targets in [0, 1] (area averaging when shrinking)."""
    data = np.asarray(mask)
    if data.shape == geometry.original_shape:
        data = data[None]
    if data.shape[1:] != geometry.original_shape:
        raise IrisInputError(f"mask shape {np.asarray(mask).shape} does not match image {geometry.original_shape}")
    slices = torch.from_numpy(np.ascontiguousarray(_to_slices(data.astype(np.float32), geometry)))
    size = geometry.image_size
    a, b = slices.shape[-2:]
    if a < size or b < size:
        slices = F.interpolate(slices, size=(max(a, size), max(b, size)), mode="bilinear", align_corners=False)
    if tuple(slices.shape[-2:]) != (size, size):
        slices = F.interpolate(slices, size=(size, size), mode="area")
    return slices.clamp(0.0, 1.0).contiguous()


def model_slices_to_volume(probs: torch.Tensor, geometry: SliceGeometry) -> np.ndarray:
    """Resize (N, K, S, S) slice predictions back to a (K, *original_shape) float32 array."""
    if (
        probs.ndim != 4
        or probs.shape[0] != geometry.num_slices
        or probs.shape[-2:]
        != (
            geometry.image_size,
            geometry.image_size,
        )
    ):
        raise IrisInputError(
            f"predictions shape {tuple(probs.shape)} does not match "
            f"(N={geometry.num_slices}, K, {geometry.image_size}, {geometry.image_size})"
        )
    resized = _resize_2d(probs.detach().float().cpu(), geometry.slice_shape).numpy()
    if geometry.axis is None:
        return np.ascontiguousarray(resized[0])
    return np.ascontiguousarray(np.moveaxis(resized, 0, geometry.axis + 1))


def resize_volume(array: np.ndarray, shape: tuple[int, ...], order: int = 1) -> np.ndarray:
    """Resample a 2D/3D array to exactly `shape` (spline `order`; 0 for label maps), pixel-edge aligned."""
    data = np.asarray(array)
    if len(shape) != data.ndim or any(s < 1 for s in shape):
        raise IrisInputError(f"cannot resize shape {data.shape} to {tuple(shape)}")
    if tuple(shape) == data.shape:
        return data.copy()
    factors = [t / s for t, s in zip(shape, data.shape, strict=True)]
    work = data.astype(np.float32) if order > 0 else data
    out = ndimage.zoom(work, factors, order=order, mode="nearest", grid_mode=True)
    return out.astype(data.dtype, copy=False) if order == 0 else out


@dataclass(frozen=True)
class Geometry3D:
    """Original shape of a volume resized to an S x S x S cube for a 3D model."""

    original_shape: tuple[int, int, int]
    size: int


def volume_to_model_input_3d(
    volume: Volume, size: int, cfg: PreprocessConfig = PreprocessConfig()
) -> tuple[torch.Tensor, Geometry3D]:
    """Normalise a 3D volume and resize it trilinearly to a (1, 1, S, S, S) tensor."""
    if volume.ndim != 3:
        raise IrisInputError(f"3D model input needs a 3D volume, got shape {volume.shape}")
    if size < 1:
        raise IrisInputError(f"size must be positive, got {size}")
    normalised = torch.from_numpy(normalize_intensity(volume.array, volume.modality, cfg))[None, None]
    tensor = F.interpolate(normalised, size=(size,) * 3, mode="trilinear", align_corners=False)
    return tensor.contiguous(), Geometry3D(volume.shape, size)


def model_output_to_volume_3d(probs: torch.Tensor, geometry: Geometry3D) -> np.ndarray:
    """Resize (K, S, S, S) predictions trilinearly back to a (K, *original_shape) float32 array."""
    if probs.ndim != 4 or tuple(probs.shape[1:]) != (geometry.size,) * 3:
        raise IrisInputError(f"predictions shape {tuple(probs.shape)} does not match (K, {geometry.size}^3)")
    out = F.interpolate(
        probs.detach().float().cpu()[None], size=geometry.original_shape, mode="trilinear", align_corners=False
    )
    return np.ascontiguousarray(out[0].numpy())
