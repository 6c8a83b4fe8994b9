"""What `iris segment --input` expands to: image files, and DICOM series found by content in folders and zips."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from iris_engine.errors import IrisInputError
from iris_engine.io.dicom_series import DicomSeries, is_dicom_file
from iris_engine.io.readers import read_dicom_series, read_image, scan_dicom
from iris_engine.io.volume import Volume

BESIDE_SERIES = "not a DICOM file (found beside DICOM series)"


@dataclass(eq=False)
class InputItem:
    """One input: a file, or one DICOM series with the folder or zip it was found in (`path`).

    `name` is shown in the summary and names the output; an item with a `skip_reason` is listed, never read.
    """

    path: Path
    name: str
    series: DicomSeries | None = None
    skip_reason: str = ""

    def __str__(self) -> str:
        return str(self.path) if self.series is None else f"{self.path} [{self.series.name}]"

    def read(self) -> Volume:
        if self.skip_reason:
            raise IrisInputError(f"{self}: {self.skip_reason}")
        if self.series is not None:
            return read_dicom_series(self.series, str(self))
        return read_image(self.path)


def discover_inputs(paths: Sequence[Path]) -> list[InputItem]:
    """Expand --input paths: a file is itself (a zip with several series, one item per series); a folder is walked.

    In a folder, DICOM files (by content, any name, nested folders too) are grouped into series, one item each;
    other files are items of their own, except beside DICOM files, where they are listed as skipped.
    """
    items: list[InputItem] = []
    for path in paths:
        if not path.exists():
            raise IrisInputError(f"--input {path} does not exist")
        if path.is_dir():
            items.extend(_folder_items(path))
        elif path.name.lower().endswith(".zip"):
            items.extend(_zip_items(path))
        else:
            items.append(InputItem(path, path.name))
    return items


def _folder_items(root: Path) -> list[InputItem]:
    files: list[InputItem] = []
    dicom: list[Path] = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        visible = [Path(folder) / n for n in sorted(names) if not n.startswith(".")]
        found = [p for p in visible if is_dicom_file(p)]
        dicom.extend(found)
        reason = BESIDE_SERIES if found else ""
        files.extend(InputItem(p, p.relative_to(root).as_posix(), skip_reason=reason)
                     for p in visible if p not in found)
    return files + _series_items(root, dicom)


def _series_items(root: Path, files: list[Path]) -> list[InputItem]:
    """One item per series among DICOM files; DICOM files that are no image (DICOMDIR) or are corrupt are listed."""
    if not files:
        return []
    scan = scan_dicom(files, headers_only=True, skip_corrupt=True)
    skipped = [InputItem(root / name, name, skip_reason=reason) for name, reason in scan.skipped]
    single = len(scan.series) == 1
    stem = root.name[: -len(".zip")] if root.name.lower().endswith(".zip") else root.name
    names = [stem if single else f"{stem}_{series.stem}" for series in scan.series]
    names = [name if names.count(name) == 1 else f"{name}_{k + 1}" for k, name in enumerate(names)]
    return skipped + [InputItem(root, name, series) for name, series in zip(names, scan.series, strict=True)]


def _zip_items(path: Path) -> list[InputItem]:
    """A zip of one series (or not DICOM at all) stays one file; a zip of several series gives one item each."""
    try:
        scan = scan_dicom(path, headers_only=True)
    except IrisInputError:
        return [InputItem(path, path.name)]  # read again when segmented, and reported with its reason then
    if len(scan.series) <= 1:
        return [InputItem(path, path.name)]
    return _series_items(path, [path])
