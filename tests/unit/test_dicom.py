"""DICOM reading (synthetic series, zip, real TotalSegmentator series) and DICOM-SEG writing."""

from __future__ import annotations

import zipfile
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from iris_engine.data.shared_paths import shared_data_dir
from iris_engine.errors import IrisInputError
from iris_engine.io.readers import read_image, read_mask
from iris_engine.io.writers import write_dicom_seg, write_mask

ROWS, COLS, SLICES = 6, 8, 4
SPACING = (0.5, 0.8)  # (row spacing, column spacing)
SLICE_STEP = 2.5


def make_series(folder: Path, reverse_files: bool = True) -> list[Path]:
    """Write a small CT series (stored pixel = 100*k + r*COLS + c, slope 2, intercept -1024) to `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    paths = []
    for k in range(SLICES):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"slice_{(SLICES - k if reverse_files else k):03d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Patient", "P1", "19700101", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240101", "120000", "1", "A1"
        ds.ReferringPhysicianName, ds.Manufacturer, ds.Modality = "", "Synthetic", "CT"
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-10.0, -20.0, 30.0 + SLICE_STEP * k]
        ds.PixelSpacing = list(SPACING)
        ds.SliceThickness = SLICE_STEP
        ds.Rows, ds.Columns = ROWS, COLS
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = 2, -1024
        pixels = (100 * k + np.arange(ROWS * COLS).reshape(ROWS, COLS)).astype(np.uint16)
        ds.PixelData = pixels.tobytes()
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def expected_array() -> np.ndarray:
    """The synthetic series in the reader's (cols, rows flipped, slices) layout, in HU."""
    stack = np.stack([100 * k + np.arange(ROWS * COLS).reshape(ROWS, COLS) for k in range(SLICES)])
    return (stack.transpose(2, 1, 0)[:, ::-1, :] * 2.0 - 1024).astype(np.float32)


def test_series_folder_sorted_rescaled_with_ras_affine(tmp_path: Path) -> None:
    make_series(tmp_path / "series")
    (tmp_path / "series" / "README.txt").write_text("not dicom")
    vol = read_image(tmp_path / "series")
    assert vol.modality == "CT" and vol.shape == (COLS, ROWS, SLICES) and vol.array.dtype == np.float32
    np.testing.assert_array_equal(vol.array, expected_array())
    # voxel (c, y, k) sits at LPS (-10 + c*0.8, -20 + (ROWS-1-y)*0.5, 30 + 2.5k): RAS negates x and y.
    for c, y, k in [(0, 0, 0), (3, 2, 1), (COLS - 1, ROWS - 1, SLICES - 1)]:
        world = vol.affine @ [c, y, k, 1]
        lps = [-10 + c * SPACING[1], -20 + (ROWS - 1 - y) * SPACING[0], 30 + SLICE_STEP * k]
        np.testing.assert_allclose(world[:3], [-lps[0], -lps[1], lps[2]], atol=1e-6)
    np.testing.assert_allclose(vol.spacing, (0.8, 0.5, 2.5))
    assert len(vol.metadata["dicom_datasets"]) == SLICES


def test_single_dicom_file_is_2d_rows_first(tmp_path: Path) -> None:
    path = make_series(tmp_path / "s")[0]
    renamed = path.with_name("noext")
    path.rename(renamed)  # found by the DICM magic
    vol = read_image(renamed)
    assert vol.shape == (ROWS, COLS)
    np.testing.assert_array_equal(vol.array[0, :3], 2.0 * np.array([0, 1, 2]) - 1024)


def test_zip_series_and_guards(tmp_path: Path) -> None:
    paths = make_series(tmp_path / "s")
    good = tmp_path / "series.zip"
    with zipfile.ZipFile(good, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for p in paths:
            z.write(p, f"series/{p.name}")
    np.testing.assert_array_equal(read_image(good).array, expected_array())
    unpacked = sum(p.stat().st_size for p in paths)
    assert good.stat().st_size < unpacked  # the guard counts uncompressed bytes, not the archive size
    with pytest.raises(IrisInputError, match="over the limit"):
        read_image(good, max_bytes=unpacked - 1)
    for bad_name in ("../evil.dcm", "/abs/evil.dcm"):
        bad = tmp_path / "bad.zip"
        with zipfile.ZipFile(bad, "w") as z:
            z.writestr(zipfile.ZipInfo(bad_name), paths[0].read_bytes())
        with pytest.raises(IrisInputError, match="unsafe path"):
            read_image(bad)
    corrupt = tmp_path / "corrupt.zip"
    corrupt.write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(IrisInputError, match="corrupt zip"):
        read_image(corrupt)


def test_duplicate_slices_and_truncated_file(tmp_path: Path) -> None:
    paths = make_series(tmp_path / "s")
    ds = pydicom.dcmread(paths[1])
    ds.ImagePositionPatient = pydicom.dcmread(paths[0]).ImagePositionPatient
    ds.save_as(paths[1])
    with pytest.raises(IrisInputError, match="same position"):
        read_image(tmp_path / "s")
    truncated = tmp_path / "t.dcm"
    truncated.write_bytes(make_series(tmp_path / "u")[0].read_bytes()[:-40])
    with pytest.raises(IrisInputError, match="t.dcm"):
        read_image(truncated)


def test_dicom_seg_round_trip(tmp_path: Path) -> None:
    make_series(tmp_path / "series")
    vol = read_image(tmp_path / "series")
    masks = np.zeros((2, *vol.shape), dtype=bool)
    masks[0, 1:4, 2:5, 1:3] = True
    masks[1, 5:7, 0:2, 3] = True
    out = write_dicom_seg(masks, vol, ["liver", "lesion"], tmp_path / "seg.dcm")
    seg = hd.seg.segread(out)
    assert seg.number_of_segments == 2 and seg.SegmentSequence[1].SegmentLabel == "lesion"
    assert int(seg.NumberOfFrames) == 2 * SLICES
    uids = [ds.SOPInstanceUID for ds in vol.metadata["dicom_datasets"]]
    frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids)
    assert frames.shape == (SLICES, ROWS, COLS, 2)
    back = frames.transpose(3, 2, 1, 0)[:, :, ::-1, :].astype(bool)  # (K, cols, rows flipped, slices)
    np.testing.assert_array_equal(back, masks)
    assert not list(tmp_path.glob(".seg.dcm*"))  # no temp file left behind


def test_dicom_seg_source_requirements(tmp_path: Path) -> None:
    make_series(tmp_path / "series")
    vol = read_image(tmp_path / "series")
    with pytest.raises(IrisInputError, match="class names"):
        write_dicom_seg(np.zeros((1, *vol.shape), bool), vol, ["a", "b"], tmp_path / "x.dcm")
    datasets = vol.metadata["dicom_datasets"]
    expected_uid = datasets[0].file_meta.MediaStorageSOPInstanceUID
    datasets[0].SOPClassUID, datasets[0].SOPInstanceUID = "", ""  # blanked: restored from the file meta
    seg = hd.seg.segread(write_dicom_seg(np.ones((1, *vol.shape), bool), vol, ["a"], tmp_path / "ok.dcm"))
    assert expected_uid in {uid for _, _, uid in seg.get_source_image_uids()}
    datasets[0].StudyInstanceUID = ""
    with pytest.raises(IrisInputError, match="lacks StudyInstanceUID"):
        write_dicom_seg(np.ones((1, *vol.shape), bool), vol, ["a"], tmp_path / "x.dcm")
    vol.metadata = {}
    with pytest.raises(IrisInputError, match="read from DICOM"):
        write_dicom_seg(np.zeros((1, *vol.shape), bool), vol, ["a"], tmp_path / "x.dcm")


@pytest.mark.shared_data
def test_real_totalseg_dicom_matches_nifti_segmentation(tmp_path: Path) -> None:
    root = shared_data_dir()
    if root is None or not (root / "totalseg_ct_dicom").is_dir():
        pytest.skip("shared data (../shared/data/totalseg_ct_dicom or $IRIS_SHARED_DATA) is not available")
    case = root / "totalseg_ct_dicom"
    vol = read_image(case / "dicom")
    seg = nib.load(case / "segmentation.nii.gz")
    assert vol.modality == "CT" and vol.shape == seg.shape == (512, 512, 20)
    np.testing.assert_allclose(vol.affine, seg.affine, atol=1e-3)
    labels = read_mask(case / "segmentation.nii.gz", reference=vol)
    assert 0 < vol.array[labels == 5].mean() < 200  # liver in HU: the voxel grids line up
    assert vol.array[labels == 32].mean() > 150  # vertebra T12 is bone
    out = write_mask((labels == 5).astype(np.uint8), vol, tmp_path / "liver.nii.gz")
    np.testing.assert_allclose(nib.load(out).affine, seg.affine, atol=1e-3)
    with pytest.raises(IrisInputError, match="lacks StudyInstanceUID"):  # this series is anonymised
        write_dicom_seg(labels[None] == 5, vol, ["liver"], tmp_path / "liver.dcm")
