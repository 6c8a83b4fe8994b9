"""Intensity normalisation, canonical orientation and volume <-> model geometry round trips."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from iris_engine.config import PreprocessConfig
from iris_engine.errors import IrisInputError
from iris_engine.io.readers import read_image, read_mask
from iris_engine.io.volume import Volume
from iris_engine.io.writers import write_mask
from iris_engine.preprocess import (
    mask_to_model_slices,
    model_output_to_volume_3d,
    model_slices_to_volume,
    normalize_intensity,
    resize_volume,
    to_canonical,
    volume_to_model_input_3d,
    volume_to_model_slices,
)


def _oblique_affine() -> np.ndarray:
    """Rotation about z by 30 degrees, axis flips and anisotropic spacing (0.7, 0.7, 3.0)."""
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([-1.0, 1.0, -1.0])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.7, 0.7, 3.0])
    affine[:3, 3] = (12.0, -30.0, 45.0)
    return affine


def test_normalize_ct_window_and_constant() -> None:
    ct = np.array([[-3000.0, 0.0], [400.0, 3000.0]])
    out = normalize_intensity(ct, "CT")
    assert out.dtype == np.float32 and abs(out.mean()) < 1e-5 and abs(out.std() - 1) < 1e-4
    assert out[0, 0] == out.min() and out[1, 1] == out.max()  # clipped to (-990, 500)
    np.testing.assert_array_equal(normalize_intensity(np.full((4, 4), 7.0), "MR"), np.zeros((4, 4)))
    spiky = np.zeros((10, 10))
    spiky[0, 0] = 1e6
    two_to_98 = PreprocessConfig(percentile_window=(2.0, 98.0))
    assert np.abs(normalize_intensity(spiky, "photo", two_to_98)).max() == 0  # percentile clip
    with pytest.raises(IrisInputError):
        normalize_intensity(np.array([[np.nan, 1.0]]), "MR")


def test_to_canonical_and_inverse() -> None:
    data = np.random.default_rng(0).random((4, 5, 6)).astype(np.float32)
    vol = Volume(data, affine=_oblique_affine(), modality="MR")
    canon, transform = to_canonical(vol)
    assert nib.aff2axcodes(canon.affine) == ("R", "A", "S")
    ijk = np.array([1, 2, 3, 1])
    world = vol.affine @ ijk  # the same voxel value sits at the same world point after reordering
    cijk = np.round(np.linalg.solve(canon.affine, world)).astype(int)
    assert canon.array[tuple(cijk[:3])] == data[1, 2, 3]
    np.testing.assert_array_equal(transform.invert(canon.array), data)
    stacked = np.stack([canon.array, canon.array * 2])
    np.testing.assert_array_equal(transform.invert(stacked)[1], data * 2)
    flat = Volume(np.ones((3, 4), np.float32))
    assert to_canonical(flat)[0] is flat


@pytest.mark.parametrize(("shape", "axis"), [((37, 23), -1), ((9, 20, 7), -1), ((9, 20, 7), 0), ((9, 20, 7), 1)])
def test_slice_round_trip_shapes(shape: tuple[int, ...], axis: int) -> None:
    vol = Volume(np.random.default_rng(1).random(shape).astype(np.float32), modality="MR")
    slices, geometry = volume_to_model_slices(vol, 16, axis=axis)
    n = 1 if len(shape) == 2 else shape[axis]
    assert slices.shape == (n, 1, 16, 16) and slices.dtype == torch.float32
    mask = np.zeros(shape, bool)
    mask[(slice(2, 6),) * len(shape)] = True
    targets = mask_to_model_slices(np.stack([mask, ~mask]), geometry)
    assert targets.shape == (n, 2, 16, 16) and 0 <= targets.min() and targets.max() <= 1
    back = model_slices_to_volume(targets, geometry)
    assert back.shape == (2, *shape) and back.dtype == np.float32
    assert ((back[0] >= 0.5) == mask).mean() > 0.9


def test_tiny_structure_survives_as_soft_value() -> None:
    vol = Volume(np.zeros((64, 64), np.float32))
    _, geometry = volume_to_model_slices(vol, 16)
    mask = np.zeros((64, 64), bool)
    mask[10:12, 10:12] = True  # 4 px of a 4x4 block
    target = mask_to_model_slices(mask, geometry)
    assert target.max() == pytest.approx(0.25) and target.sum() == pytest.approx(4 / 16)


def test_geometry_errors() -> None:
    _, geometry = volume_to_model_slices(Volume(np.zeros((8, 8, 3), np.float32)), 4)
    with pytest.raises(IrisInputError):
        mask_to_model_slices(np.zeros((8, 3, 8)), geometry)
    with pytest.raises(IrisInputError):
        model_slices_to_volume(torch.zeros(2, 1, 4, 4), geometry)


def test_resize_volume_and_3d_round_trip() -> None:
    labels = np.zeros((10, 12, 5), np.uint8)
    labels[2:8, 3:9, 1:4] = 3
    up = resize_volume(labels, (20, 24, 10), order=0)
    assert up.shape == (20, 24, 10) and up.dtype == np.uint8 and set(np.unique(up)) == {0, 3}
    np.testing.assert_array_equal(resize_volume(up, labels.shape, order=0), labels)
    assert resize_volume(np.random.rand(7, 9), (13, 4), order=1).shape == (13, 4)
    vol = Volume(np.random.default_rng(2).random((10, 12, 5)).astype(np.float32), modality="CT")
    tensor, geometry = volume_to_model_input_3d(vol, 8)
    assert tensor.shape == (1, 1, 8, 8, 8)
    assert model_output_to_volume_3d(torch.rand(2, 8, 8, 8), geometry).shape == (2, 10, 12, 5)


def test_nifti_round_trip_with_oblique_anisotropic_affine(tmp_path: Path) -> None:
    affine = _oblique_affine()
    data = np.random.default_rng(3).normal(100, 20, (24, 20, 6)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "img.nii.gz"))
    vol = read_image(tmp_path / "img.nii.gz", modality="MR")
    np.testing.assert_allclose(vol.spacing, (0.7, 0.7, 3.0), atol=1e-5)
    slices, geometry = volume_to_model_slices(vol, 32)
    probs = torch.zeros(slices.shape[0], 1, 32, 32)
    probs[:, :, 8:24, 8:24] = 1.0
    mask = model_slices_to_volume(probs, geometry)[0] >= 0.5
    out = write_mask(mask, vol, tmp_path / "mask.nii.gz")
    back = read_mask(out, reference=vol)
    assert back.shape == vol.shape and back.any()
    np.testing.assert_allclose(nib.load(out).affine, vol.affine, atol=1e-5)
    np.testing.assert_array_equal(back, mask)
