"""DICOM by content (any file name), series grouping (UID, else geometry), nested exports, zips, DICOM-SEG read back."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from iris_engine.errors import IrisInputError
from iris_engine.io.dicom_series import is_dicom_file
from iris_engine.io.readers import read_dicom_series, read_image, scan_dicom
from iris_engine.io.writers import write_dicom_seg
from tests.dicom_factory import SeriesSpec, pixels, write_series

PYDICOM_EXPORT = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests"
NAMES = {
    "uid": lambda k, uid: f"CT.{uid}",
    "bare-uid": lambda k, uid: uid,
    "IM": lambda k, uid: f"IM{k + 1:04d}",
    "upper": lambda k, uid: f"SLICE{k}.DCM",
    "lower": lambda k, uid: f"slice{k}.dcm",
}


def expected_volume(spec: SeriesSpec) -> np.ndarray:
    """The series in the reader's (cols, rows flipped, slices) layout, in HU."""
    stack = np.stack([pixels(spec, k) for k in range(spec.slices)]).astype(np.float32) - 1024
    return stack.transpose(2, 1, 0)[:, ::-1, :]


@pytest.mark.parametrize("naming", list(NAMES))
def test_series_is_found_by_content_whatever_the_file_names(tmp_path: Path, naming: str) -> None:
    spec = SeriesSpec(name=NAMES[naming])
    paths = write_series(tmp_path / "export", spec)
    (tmp_path / "export" / "notes.txt").write_text("exported by PACS")
    assert all(is_dicom_file(p) for p in paths) and not is_dicom_file(tmp_path / "export" / "notes.txt")
    volume = read_image(tmp_path / "export")
    assert volume.shape == (spec.cols, spec.rows, spec.slices) and volume.modality == "CT"
    np.testing.assert_array_equal(volume.array, expected_volume(spec))
    np.testing.assert_allclose(volume.spacing, (0.9, 0.7, 2.5))
    assert volume.metadata["dicom_series_name"] == "Abdomen 3.0"
    scan = scan_dicom(tmp_path / "export", headers_only=True)
    assert [s.name for s in scan.series] == ["Abdomen 3.0"] and scan.skipped == [("notes.txt", "not a DICOM image")]
    assert read_image(paths[0]).shape == (spec.rows, spec.cols)  # one file alone: a 2D image


def test_dataset_without_preamble_is_dicom_and_lookalikes_are_not(tmp_path: Path) -> None:
    spec = SeriesSpec(preamble=False, name=NAMES["IM"])
    paths = write_series(tmp_path / "old", spec)
    assert paths[0].read_bytes()[128:132] != b"DICM" and is_dicom_file(paths[0])
    np.testing.assert_array_equal(read_image(tmp_path / "old").array, expected_volume(spec))
    lookalikes = {"text": b"hello", "group-8-garbage": b"\x08\x00\x05\x00" + b"\xff" * 300,
                  "png": b"\x89PNG\r\n\x1a\n" + b"\0" * 200, "empty-ish": b"\x08\x00"}
    for name, content in lookalikes.items():
        (tmp_path / name).write_bytes(content)
        assert not is_dicom_file(tmp_path / name), name


def test_two_series_in_one_folder_are_two_volumes(tmp_path: Path) -> None:
    arterial = SeriesSpec(description="Arterial", number=3, slices=4)
    venous = SeriesSpec(description="Venous", number=4, slices=6, rows=8, cols=8, study_uid=arterial.study_uid)
    write_series(tmp_path / "study", arterial)
    write_series(tmp_path / "study", venous)
    scan = scan_dicom(tmp_path / "study", headers_only=True)
    assert [s.name for s in scan.series] == ["Arterial", "Venous"]
    assert all("PixelData" not in ds for s in scan.series for ds in s.datasets)  # a header scan
    volumes = [read_dicom_series(s, s.name) for s in scan.series]
    assert [v.shape for v in volumes] == [(10, 12, 4), (8, 8, 6)]
    np.testing.assert_array_equal(volumes[1].array, expected_volume(venous))
    with pytest.raises(IrisInputError, match="2 DICOM series \\('Arterial', 'Venous'\\)"):
        read_image(tmp_path / "study")


def test_blank_series_uid_falls_back_to_geometry(tmp_path: Path) -> None:
    study, frame = SeriesSpec().study_uid, SeriesSpec().frame_uid
    common = {"series_uid": None, "study_uid": study, "frame_uid": frame, "description": "", "number": 7}
    write_series(tmp_path / "anon", SeriesSpec(**common, slices=3))
    write_series(tmp_path / "anon", SeriesSpec(**common, slices=3, orientation=(0, 1, 0, 0, 0, -1)))
    scan = scan_dicom(tmp_path / "anon")
    assert sorted(len(s.datasets) for s in scan.series) == [3, 3]
    assert [s.name for s in scan.series] == ["series 7 (1)", "series 7 (2)"]
    assert {read_dicom_series(s, s.name).shape for s in scan.series} == {(10, 12, 3)}


def test_nested_export_is_walked_and_non_dicom_files_listed(tmp_path: Path) -> None:
    root = tmp_path / "export"
    ct = SeriesSpec(description="CT Body", number=2)
    write_series(root / "PAT001" / "STUDY1" / "SER001", ct)
    write_series(root / "PAT001" / "STUDY1" / "SER002", SeriesSpec(description="", number=5, study_uid=ct.study_uid))
    (root / "DICOMDIR.txt").write_text("index")
    (root / "PAT001" / "thumb.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    (root / ".DS_Store").write_bytes(b"\0")
    scan = scan_dicom(root)
    assert [s.name for s in scan.series] == ["CT Body", "series 5"]
    assert sorted(name for name, _ in scan.skipped) == ["DICOMDIR.txt", "PAT001/thumb.jpg"]
    assert "2 DICOM series (CT Body, series 5); skipped 2 files" in scan.summary()
    with zipfile.ZipFile(tmp_path / "export.zip", "w") as archive:
        for path in sorted(root.rglob("*")):
            archive.write(path, path.relative_to(root).as_posix())
    zipped = scan_dicom(tmp_path / "export.zip", headers_only=True)
    assert [s.name for s in zipped.series] == ["CT Body", "series 5"]
    np.testing.assert_array_equal(read_dicom_series(zipped.series[0], "zip").array, expected_volume(ct))
    with pytest.raises(IrisInputError, match="holds 2 DICOM series"):
        read_image(tmp_path / "export.zip")


def test_pydicom_shipped_dicomdir_export(tmp_path: Path) -> None:
    if not (PYDICOM_EXPORT / "DICOMDIR").is_file():
        pytest.skip("pydicom's bundled dicomdirtests export is not installed")
    export = shutil.copytree(PYDICOM_EXPORT, tmp_path / "export")
    scan = scan_dicom(export, headers_only=True)
    by_name = {s.name: s for s in scan.series}
    assert {"Routine Brain", "Scout", "SmartScore - Gated 0.5 sec", "Cervical LAT"} <= set(by_name)
    assert "DICOMDIR" in {name for name, _ in scan.skipped}
    smart = read_dicom_series(by_name["SmartScore - Gated 0.5 sec"], "smart")
    assert smart.shape == (16, 16, 5) and smart.modality == "CT"
    np.testing.assert_allclose(smart.spacing, (0.488281, 0.488281, 2.5), atol=1e-5)
    assert read_dicom_series(by_name["Cervical LAT"], "cr").shape == (16, 16)
    with pytest.raises(IrisInputError, match="different sizes or orientations"):
        read_dicom_series(by_name["Scout"], "scout")  # two localizers at right angles
    with pytest.raises(IrisInputError, match="uneven"):
        read_dicom_series(by_name["Routine Brain"], "brain")  # 4 slices with a 200 mm gap


def test_dicom_seg_for_a_uid_named_series_reads_back_with_highdicom(tmp_path: Path) -> None:
    spec = SeriesSpec(slices=4)
    write_series(tmp_path / "series", spec)
    (tmp_path / "series" / "README").write_text("not dicom")
    volume = read_image(tmp_path / "series")
    masks = np.zeros((2, *volume.shape), dtype=bool)
    masks[0, 2:6, 3:9, 1:3] = True
    masks[1, 0:2, 0:2, 3] = True
    seg = hd.seg.segread(write_dicom_seg(masks, volume, ["liver", "spleen"], tmp_path / "seg.dcm"))
    sources = volume.metadata["dicom_datasets"]
    assert [item.SegmentLabel for item in seg.SegmentSequence] == ["liver", "spleen"]
    assert int(seg.NumberOfFrames) == 2 * spec.slices
    assert seg.StudyInstanceUID == spec.study_uid
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == spec.series_uid
    referenced = {uid for _, _, uid in seg.get_source_image_uids()}
    assert referenced == {ds.SOPInstanceUID for ds in sources}
    source_positions = {tuple(round(float(v), 3) for v in ds.ImagePositionPatient) for ds in sources}
    frame_positions = [tuple(round(float(v), 3) for v in frame.PlanePositionSequence[0].ImagePositionPatient)
                       for frame in seg.PerFrameFunctionalGroupsSequence]
    assert len(frame_positions) == 2 * spec.slices and set(frame_positions) == source_positions
    frames = seg.get_pixels_by_source_instance([ds.SOPInstanceUID for ds in sources])
    np.testing.assert_array_equal(frames.transpose(3, 2, 1, 0)[:, :, ::-1, :].astype(bool), masks)
