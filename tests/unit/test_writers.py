"""write_mask (NIfTI, PNG, npy), write_overlay_png, and atomicity of writes."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from iris_engine.errors import IrisInputError
from iris_engine.io import writers
from iris_engine.io.volume import Volume
from iris_engine.io.writers import write_mask, write_overlay_png


def test_write_mask_nifti_png_npy(tmp_path: Path) -> None:
    affine = np.diag([0.7, 0.7, 3.0, 1.0])
    ref3 = Volume(np.zeros((4, 5, 3), np.float32), affine=affine)
    labels = np.zeros((4, 5, 3), np.int64)
    labels[1, 2, 0] = 300
    img = nib.load(write_mask(labels, ref3, tmp_path / "m.nii.gz"))
    assert img.get_data_dtype() == np.uint16 and img.shape == (4, 5, 3)
    np.testing.assert_allclose(img.affine, affine, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(img.dataobj), labels)
    ref2 = Volume(np.zeros((3, 4), np.float32))
    binary = np.eye(3, 4, dtype=bool)
    np.testing.assert_array_equal(np.asarray(Image.open(write_mask(binary, ref2, tmp_path / "b.png"))), binary * 255)
    multi = np.arange(12).reshape(3, 4)
    np.testing.assert_array_equal(np.asarray(Image.open(write_mask(multi, ref2, tmp_path / "l.png"))), multi)
    np.testing.assert_array_equal(np.load(write_mask(multi, ref2, tmp_path / "l.npy")), multi)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.png", "l.npy", "l.png", "m.nii.gz"]


def test_write_mask_rejects_bad_input(tmp_path: Path) -> None:
    ref = Volume(np.zeros((3, 4), np.float32))
    with pytest.raises(IrisInputError, match="does not match"):
        write_mask(np.zeros((4, 3), np.uint8), ref, tmp_path / "a.png")
    with pytest.raises(IrisInputError, match="integer or bool"):
        write_mask(np.zeros((3, 4), np.float32), ref, tmp_path / "a.png")
    with pytest.raises(IrisInputError, match="unknown mask format"):
        write_mask(np.zeros((3, 4), np.uint8), ref, tmp_path / "a.bmp")
    with pytest.raises(IrisInputError, match="2D"):
        write_mask(np.zeros((3, 4, 2), np.uint8), Volume(np.zeros((3, 4, 2), np.float32)), tmp_path / "a.png")


def test_failed_write_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "out.npy"
    target.write_bytes(b"old")

    def boom(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        writers.atomic_write(target, boom)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["out.npy"]


def test_overlay_png(tmp_path: Path) -> None:
    image = np.tile(np.linspace(0, 1, 8, dtype=np.float32), (6, 1))
    masks = np.zeros((2, 6, 8), bool)
    masks[0, :2] = True
    masks[1, 4:] = True
    out = np.asarray(
        Image.open(write_overlay_png(image, masks, tmp_path / "o.png", colors=[(255, 0, 0), (0, 0, 255)], opacity=1.0))
    )
    assert out.shape == (6, 8, 3)
    np.testing.assert_array_equal(out[0, 0], (255, 0, 0))
    np.testing.assert_array_equal(out[5, 7], (0, 0, 255))
    assert out[3, 7, 0] == out[3, 7, 1] == out[3, 7, 2] == 255  # untouched grey
    with pytest.raises(IrisInputError, match="colours"):
        write_overlay_png(image, masks, tmp_path / "p.png", colors=[(1, 2, 3)])
    with pytest.raises(IrisInputError, match="does not match"):
        write_overlay_png(image, masks[:, :3], tmp_path / "p.png")
