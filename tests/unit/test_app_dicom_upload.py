"""The studio's upload takes DICOM whatever the file names: one case per series, and it says how many it found."""

from __future__ import annotations

import zipfile
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest

from app import handlers as h
from app.handlers import Session
from iris_engine.data.shared_paths import shared_data_dir
from iris_engine.errors import IrisInputError
from iris_engine.io.readers import read_image
from iris_engine.io.writers import write_dicom_seg
from tests.dicom_factory import SeriesSpec, write_series


def test_uid_named_files_are_one_case_with_the_series_geometry(services, tmp_path: Path) -> None:
    spec = SeriesSpec(slices=5)
    files = write_series(tmp_path / "upload", spec)
    (tmp_path / "upload" / "notes.txt").write_text("beside the series")
    session = Session()
    message = h.load_case(services, session, [str(p) for p in [*files, tmp_path / "upload" / "notes.txt"]])
    assert message.startswith("Found 1 DICOM series.")
    assert "Skipped 1 file that is not a DICOM image: notes.txt" in message
    assert "**Abdomen 3.0** (10x12x5, CT)" in message
    cases = services.storage.cases.list()
    assert len(cases) == 1 and cases[0].name == "Abdomen 3.0" and tuple(cases[0].shape) == (10, 12, 5)
    services.forget_case(cases[0].id)  # read back from the store, not from the cache
    stored = services.case_volume(cases[0].id)
    expected = read_image(tmp_path / "upload")
    np.testing.assert_array_equal(stored.array, expected.array)
    np.testing.assert_allclose(stored.affine, expected.affine)
    mask = np.zeros((1, *stored.shape), dtype=bool)
    mask[0, 2:6, 3:8, 1:4] = True
    seg = hd.seg.segread(write_dicom_seg(mask, stored, ["liver"], tmp_path / "seg.dcm"))
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == spec.series_uid
    assert int(seg.NumberOfFrames) == spec.slices


def test_uploaded_series_is_segmented_and_exported_on_its_geometry(services, tmp_path: Path) -> None:
    spec = SeriesSpec(slices=5, rows=40, cols=36)
    files = write_series(tmp_path / "upload", spec)
    session = Session()
    h.load_case(services, session, [str(p) for p in files])
    value = h.editor_value(services, session, 2, "CT soft tissue")
    layer = np.zeros((*value["background"].shape[:2], 4), dtype=np.uint8)
    height, width = layer.shape[:2]
    layer[height // 4: height // 2, width // 3: 2 * width // 3, 3] = 255
    h.add_support(services, session, {**value, "layers": [layer]}, "organ", 2)
    h.run_segmentation(services, session, "One-shot")
    source = read_image(tmp_path / "upload")
    seg = hd.seg.segread(h.export_mask(services, session, "DICOM-SEG"))
    assert int(seg.NumberOfFrames) == spec.slices and seg.SegmentSequence[0].SegmentLabel == "organ"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == spec.series_uid
    assert {uid for _, _, uid in seg.get_source_image_uids()} == {
        ds.SOPInstanceUID for ds in source.metadata["dicom_datasets"]}
    nifti = nib.load(h.export_mask(services, session, "NIfTI"))
    assert nifti.shape == source.shape == (36, 40, 5)
    np.testing.assert_allclose(nifti.affine, source.affine, atol=1e-6)


def test_two_series_in_one_zip_become_two_cases(services, tmp_path: Path) -> None:
    write_series(tmp_path / "study" / "SE1", SeriesSpec(description="Arterial", number=3, slices=4))
    write_series(tmp_path / "study" / "SE2", SeriesSpec(description="", number=9, slices=3, rows=8, cols=8,
                                                        name=lambda k, uid: f"IM{k:04d}"))
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted((tmp_path / "study").rglob("*")):
            z.write(path, path.relative_to(tmp_path / "study").as_posix())
    session = Session()
    message = h.load_case(services, session, [str(archive)])
    assert message.startswith("Found 2 DICOM series.") and "**Arterial** is open" in message
    cases = {c.name: c for c in services.storage.cases.list()}
    assert set(cases) == {"Arterial", "series 9"}
    assert tuple(cases["series 9"].shape) == (8, 8, 3) and session.case_id == cases["Arterial"].id
    services.forget_case(cases["series 9"].id)
    assert services.case_volume(cases["series 9"].id).shape == (8, 8, 3)


def test_series_that_form_no_volume_are_named_and_nothing_else_is_refused(services, tmp_path: Path) -> None:
    localizer = [*write_series(tmp_path / "a", SeriesSpec(description="Localizer", slices=1)),
                 *write_series(tmp_path / "b", SeriesSpec(description="Localizer", slices=1,
                                                          orientation=(0, 1, 0, 0, 0, -1)))]
    for path in localizer[1:]:  # one series, two planes
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = pydicom.dcmread(localizer[0]).SeriesInstanceUID
        ds.save_as(path)
    body = write_series(tmp_path / "c", SeriesSpec(description="Body", slices=3))
    message = h.load_case(services, Session(), [str(p) for p in [*localizer, *body]])
    assert message.startswith("Found 2 DICOM series; not loaded: 'Localizer' (") and "orientations" in message
    assert [c.name for c in services.storage.cases.list()] == ["Body"]
    with pytest.raises(IrisInputError, match="different sizes or orientations"):
        h.load_case(services, Session(), [str(p) for p in localizer])
    texts = [tmp_path / "x.txt", tmp_path / "y.txt"]
    for text in texts:
        text.write_text("not an image")
    with pytest.raises(IrisInputError, match="no DICOM images found in the upload"):
        h.load_case(services, Session(), [str(p) for p in texts])
    assert len(services.storage.cases.list()) == 1


@pytest.mark.shared_data
def test_real_ct_series_upload(services, tmp_path: Path) -> None:
    root = shared_data_dir()
    if root is None or not (root / "totalseg_ct_dicom" / "dicom").is_dir():
        pytest.skip("shared data (../shared/data/totalseg_ct_dicom or $IRIS_SHARED_DATA) is not available")
    files = sorted((root / "totalseg_ct_dicom" / "dicom").iterdir())
    message = h.load_case(services, Session(), [str(p) for p in files])
    assert message.startswith("Found 1 DICOM series.") and "(512x512x20, CT)" in message
