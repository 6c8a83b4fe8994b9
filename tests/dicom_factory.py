"""Small DICOM series written by the tests themselves, named as archives name them (UIDs, IM0001, no suffix)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


@dataclass
class SeriesSpec:
    """One synthetic CT series: geometry, naming and which UIDs it carries."""

    description: str = "Abdomen 3.0"
    number: int = 2
    rows: int = 12
    cols: int = 10
    slices: int = 5
    step: float = 2.5
    orientation: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    series_uid: str | None = field(default_factory=generate_uid)
    study_uid: str = field(default_factory=generate_uid)
    frame_uid: str = field(default_factory=generate_uid)
    name: Callable[[int, str], str] = lambda k, sop_uid: f"CT.{sop_uid}"
    preamble: bool = True


def pixels(spec: SeriesSpec, k: int) -> np.ndarray:
    """Stored values of slice k (distinct per slice and per series number)."""
    return (1000 * spec.number + 50 * k + np.arange(spec.rows * spec.cols).reshape(spec.rows, spec.cols)).astype(
        np.uint16)


def write_series(folder: Path, spec: SeriesSpec | None = None) -> list[Path]:
    """Write the series into `folder`, one file per slice, files in reverse slice order; returns their paths."""
    spec = spec or SeriesSpec()
    folder.mkdir(parents=True, exist_ok=True)
    normal = np.cross(spec.orientation[:3], spec.orientation[3:])
    paths = []
    for k in reversed(range(spec.slices)):
        sop_uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / spec.name(k, sop_uid)
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128 if spec.preamble else None)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop_uid
        ds.StudyInstanceUID, ds.FrameOfReferenceUID = spec.study_uid, spec.frame_uid
        ds.SeriesInstanceUID = spec.series_uid or ""
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Patient", "P1", "19700101", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240101", "120000", "1", "A1"
        ds.ReferringPhysicianName, ds.Manufacturer, ds.Modality = "", "Synthetic", "CT"
        ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = spec.description, spec.number, k + 1
        ds.ImageOrientationPatient = list(spec.orientation)
        ds.ImagePositionPatient = [float(v) for v in np.array([-10.0, -20.0, 30.0]) + spec.step * k * normal]
        ds.PixelSpacing, ds.SliceThickness = [0.7, 0.9], spec.step
        ds.Rows, ds.Columns = spec.rows, spec.cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = pixels(spec, k).tobytes()
        if spec.preamble:
            ds.save_as(path, enforce_file_format=True)
        else:  # a bare dataset, as some old archives write: no preamble, no 'DICM', no file meta
            del ds.file_meta
            dcmwrite(path, ds, implicit_vr=True, little_endian=True)
        paths.append(path)
    return paths
