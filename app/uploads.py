"""DICOM uploads, whatever the file names: the series they hold, each checked as one volume and packed as one zip."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from iris_engine.errors import IrisInputError
from iris_engine.io.dicom_series import DicomScan, DicomSeries, is_dicom_file
from iris_engine.io.readers import read_dicom_series, scan_dicom
from iris_engine.io.volume import Volume


@dataclass
class SeriesUpload:
    """A series ready to store: its volume and the file that holds it (the upload itself, or a zip of its files)."""

    series: DicomSeries
    volume: Volume
    source: Path


@dataclass
class DicomUpload:
    """What a DICOM upload holds: series that form volumes, series refused (with why), files that are not DICOM."""

    ready: list[SeriesUpload]
    refused: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def found(self) -> int:
        return len(self.ready) + len(self.refused)

    def summary(self) -> str:
        """'Found 2 DICOM series: ... Skipped 1 file that is not a DICOM image: notes.txt.'"""
        text = f"Found {self.found} DICOM series"
        if self.refused:
            text += "; not loaded: " + "; ".join(f"'{name}' ({reason})" for name, reason in self.refused)
        if self.skipped:
            names = ", ".join(name for name, _ in self.skipped[:5]) + (" ..." if len(self.skipped) > 5 else "")
            text += f". Skipped {len(self.skipped)} file{'s' if len(self.skipped) > 1 else ''} that " \
                    f"{'are' if len(self.skipped) > 1 else 'is'} not a DICOM image: {names}"
        return text + "."


def is_dicom_upload(paths: list[Path]) -> bool:
    """Several files, a zip, or one file that is DICOM by content (any name)."""
    return len(paths) > 1 or paths[0].name.lower().endswith(".zip") or is_dicom_file(paths[0])


def read_dicom_upload(paths: list[Path], work: Path, max_bytes: int, max_voxels: int) -> DicomUpload:
    """Group the uploaded files into series; each series is read, checked and packed into `work` (nothing stored)."""
    scan = scan_dicom(paths, max_bytes=max_bytes, headers_only=True)
    if not scan.series:
        listed = ", ".join(name for name, _ in scan.skipped[:5])
        raise IrisInputError(f"no DICOM images found in the upload ({listed})")
    upload = DicomUpload([], skipped=scan.skipped)
    for series in scan.series:
        try:
            volume = _checked_volume(series, max_bytes, max_voxels)
        except IrisInputError as error:
            upload.refused.append((series.name, str(error).removeprefix(f"{series.name}: ")))
            continue
        upload.ready.append(SeriesUpload(series, volume, _series_file(series, scan, paths, work)))
    if not upload.ready:
        reasons = "; ".join(f"{reason}" if len(upload.refused) == 1 else f"'{name}': {reason}"
                            for name, reason in upload.refused)
        raise IrisInputError(reasons if len(upload.refused) == 1 else f"none of the {upload.found} DICOM series "
                             f"can be loaded: {reasons}")
    return upload


def _checked_volume(series: DicomSeries, max_bytes: int, max_voxels: int) -> Volume:
    """The series' volume, its size checked from the headers before any pixel data is decoded."""
    try:
        first = series.datasets[0]
        voxels = int(first.get("Rows", 0) or 0) * int(first.get("Columns", 0) or 0) * len(series.datasets)
    except (TypeError, ValueError):  # a malformed size: the volume builder refuses it with its own reason
        voxels = 0
    if voxels > max_voxels:
        raise IrisInputError(f"{series.name}: {voxels} voxels is over this studio's limit of {max_voxels} voxels")
    volume = read_dicom_series(series, series.name, max_bytes)
    check_case_volume(volume, series.name, max_voxels)
    return volume


def check_case_volume(volume: Volume, name: str, max_voxels: int) -> None:
    """Refuse a volume over the studio's voxel limit, or a constant one (nothing to segment)."""
    if volume.array.size > max_voxels:
        raise IrisInputError(f"{name}: {volume.array.size} voxels is over this studio's limit of {max_voxels} voxels")
    if volume.array.min() == volume.array.max():
        raise IrisInputError(f"{name}: the image is constant (every voxel is {float(volume.array.flat[0]):g}); "
                             "there is nothing to segment")


def _series_file(series: DicomSeries, scan: DicomScan, paths: list[Path], work: Path) -> Path:
    """The upload itself when it is exactly this series (one file, or a zip of nothing else), else a zip of it."""
    if len(paths) == 1 and len(scan.series) == 1 and not scan.skipped:
        return paths[0]
    target = work / f"{len(list(work.iterdir())):03d}" / f"{series.stem}.zip"
    target.parent.mkdir(parents=True)
    with zipfile.ZipFile(target, "w") as archive:
        for index, (path, member) in enumerate(series.sources):
            name = f"{index:05d}_{Path(member or path.name).name}"
            if member:
                with zipfile.ZipFile(path) as source:
                    archive.writestr(name, source.read(member))
            else:
                archive.write(path, name)
    return target
