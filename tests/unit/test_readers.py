"""read_image / read_mask for NIfTI, Pillow and NumPy files, and their validation errors."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from iris_engine.errors import IrisInputError
from iris_engine.io.readers import read_image, read_mask
from iris_engine.io.volume import Volume


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def test_nifti_keeps_affine_and_squeezes_singleton_4d(tmp_path: Path) -> None:
    affine = np.diag([0.7, 0.7, 3.0, 1.0])
    affine[:3, 3] = (5, -4, 2)
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4, 1)
    vol = read_image(_nifti(tmp_path / "a.nii.gz", data, affine))
    assert vol.shape == (2, 3, 4) and vol.array.dtype == np.float32 and vol.modality == "unknown"
    np.testing.assert_allclose(vol.affine, affine, atol=1e-6)
    np.testing.assert_array_equal(vol.array, data[..., 0])
    assert read_image(_nifti(tmp_path / "b.nii", data[..., 0]), modality="MR").modality == "MR"
    with pytest.raises(IrisInputError, match="4D"):
        read_image(_nifti(tmp_path / "c.nii.gz", np.zeros((2, 3, 4, 2), np.float32)))


def test_png_grey_colour_and_16bit(tmp_path: Path) -> None:
    rgb = np.zeros((5, 7, 3), np.uint8)
    rgb[..., 0] = 100
    rgb[..., 1] = 200
    Image.fromarray(rgb).save(tmp_path / "c.png")
    vol = read_image(tmp_path / "c.png")
    assert vol.shape == (5, 7) and vol.modality == "photo"
    np.testing.assert_allclose(vol.array, 0.299 * 100 + 0.587 * 200, rtol=1e-5)
    deep = (np.arange(35, dtype=np.uint16).reshape(5, 7) * 1000).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "d.png")
    np.testing.assert_array_equal(read_image(tmp_path / "d.png").array, deep.astype(np.float32))
    Image.fromarray(rgb).save(tmp_path / "e.jpg")
    assert read_image(tmp_path / "e.jpg", modality="unknown").modality == "unknown"
    Image.fromarray(deep).save(tmp_path / "f.tif")
    assert read_image(tmp_path / "f.tif").shape == (5, 7)


def test_numpy_npy_and_npz(tmp_path: Path) -> None:
    a = np.random.default_rng(0).random((1, 4, 6)).astype(np.float64)
    np.save(tmp_path / "a.npy", a)
    assert read_image(tmp_path / "a.npy").shape == (4, 6)
    np.savez(tmp_path / "b.npz", other=np.zeros((2, 2)), image=np.ones((3, 3, 3)))
    assert read_image(tmp_path / "b.npz").shape == (3, 3, 3)
    np.savez(tmp_path / "c.npz", np.ones((2, 5)))
    assert read_image(tmp_path / "c.npz").shape == (2, 5)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(IrisInputError, match="obj.npy"):
        read_image(tmp_path / "obj.npy")


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("nan.npy", np.array([[1.0, np.nan], [0.0, 1.0]]), "NaN"),
        ("inf.npy", np.array([[1.0, np.inf], [0.0, 1.0]]), "NaN or infinite"),
        ("line.npy", np.ones((1, 5, 1)), "1D"),
        ("four.npy", np.ones((2, 2, 2, 2)), "4 dimensions"),
        ("empty.npy", np.ones((0, 5)), "empty"),
    ],
)
def test_invalid_arrays(tmp_path: Path, name: str, data: np.ndarray, message: str) -> None:
    np.save(tmp_path / name, data)
    with pytest.raises(IrisInputError, match=message) as info:
        read_image(tmp_path / name)
    assert name in str(info.value)


def test_invalid_files(tmp_path: Path) -> None:
    (tmp_path / "x.xyz").write_bytes(b"hello")
    with pytest.raises(IrisInputError, match="unknown file type"):
        read_image(tmp_path / "x.xyz")
    with pytest.raises(IrisInputError, match="not found"):
        read_image(tmp_path / "missing.nii.gz")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "t.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "t.png").read_bytes()[:60])
    with pytest.raises(IrisInputError, match="cut.png"):
        read_image(tmp_path / "cut.png")
    good = _nifti(tmp_path / "g.nii.gz", np.ones((8, 8, 8), np.float32))
    (tmp_path / "cut.nii.gz").write_bytes(good.read_bytes()[:-30])
    with pytest.raises(IrisInputError, match="cut.nii.gz"):
        read_image(tmp_path / "cut.nii.gz")
    with pytest.raises(IrisInputError, match="over the limit"):
        read_image(good, max_bytes=10)
    with pytest.raises(IrisInputError, match="modality"):
        read_image(good, modality="PET")


def test_read_mask_labels_and_reference_shape(tmp_path: Path) -> None:
    labels = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    Image.fromarray(labels).save(tmp_path / "m.png")
    ref = Volume(np.zeros((2, 3), np.float32))
    mask = read_mask(tmp_path / "m.png", reference=ref)
    assert mask.dtype == np.int32
    np.testing.assert_array_equal(mask, labels)
    with pytest.raises(IrisInputError, match="does not match"):
        read_mask(tmp_path / "m.png", reference=Volume(np.zeros((3, 2), np.float32)))
    _nifti(tmp_path / "soft.nii.gz", np.full((2, 2, 2), 0.5, np.float32))
    with pytest.raises(IrisInputError, match="non-integer"):
        read_mask(tmp_path / "soft.nii.gz")
