"""DICOM recognised by content, whatever the file name, and grouped into series: one series, one volume.

A file is DICOM when it carries the "DICM" marker after the 128-byte preamble, or when it starts like a dataset
written without preamble (group 0002 or 0008 first) and pydicom parses it into something that names an image.
Instances are grouped by Series Instance UID; when that is blank, by study, frame of reference and geometry.
"""

from __future__ import annotations

import re
import struct
import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from iris_engine.errors import IrisInputError

PREAMBLE = 128
MARKER = b"DICM"
HEAD_BYTES = PREAMBLE + len(MARKER)
RAW_START_GROUPS = (0x0002, 0x0008)
RAW_START_MAX_ELEMENT = 0x00FF
IDENTIFYING_TAGS = ("SOPClassUID", "Modality", "Rows")
GEOMETRY_DECIMALS = 3
DUPLICATE_POSITION = 1e-4  # mm; slices this close are duplicates, refused by the volume builder
UNEVEN_SPACING = 0.2  # largest allowed spread of slice steps, relative to the median step
NAME_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]+")
MAX_STEM = 60
DicomSource = tuple[Path, str]  # (file, or zip archive and member name; '' for a plain file)


def has_marker(head: bytes) -> bool:
    """True when the bytes hold the 'DICM' marker after the 128-byte preamble."""
    return len(head) >= HEAD_BYTES and head[PREAMBLE:HEAD_BYTES] == MARKER


def starts_like_dataset(head: bytes) -> bool:
    """True when the bytes begin like a dataset written without preamble (first tag in group 0002 or 0008)."""
    if len(head) < 8:
        return False
    for order in ("<", ">"):
        group, element = struct.unpack(f"{order}HH", head[:4])
        if group in RAW_START_GROUPS and element <= RAW_START_MAX_ELEMENT:
            return True
    return False


def _head(source: Path | BinaryIO) -> bytes:
    if isinstance(source, Path):
        with source.open("rb") as f:
            return f.read(HEAD_BYTES)
    start = source.tell()
    head = source.read(HEAD_BYTES)
    source.seek(start)
    return head


def read_dataset(source: Path | BinaryIO, headers_only: bool = False) -> Dataset | None:
    """The dataset when the content is DICOM, else None.

    A marked file that does not parse raises pydicom's error (the caller calls it corrupt); an unmarked file
    that does not parse, or parses into nothing that names an image, is simply not DICOM.
    """
    head = _head(source)
    marked = has_marker(head)
    if not marked and not starts_like_dataset(head):
        return None
    try:
        with warnings.catch_warnings():
            if not marked:  # a guess: pydicom's complaints about a file that is not DICOM after all are noise
                warnings.simplefilter("ignore")
            ds = pydicom.dcmread(source, force=not marked, stop_before_pixels=headers_only)
    except Exception:
        if marked:
            raise
        return None
    if not marked and not any(_text(ds, tag) for tag in IDENTIFYING_TAGS):
        return None
    if not marked and "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta.TransferSyntaxUID = _transfer_syntax(*ds.original_encoding)
    return ds


def _transfer_syntax(implicit_vr: bool | None, little_endian: bool | None) -> str:
    """The uncompressed transfer syntax a dataset without file meta was found to be written in."""
    if implicit_vr:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little_endian is not False else ExplicitVRBigEndian


def is_dicom_file(path: Path) -> bool:
    """True when the file is DICOM by content (marker, or a dataset pydicom parses without one)."""
    try:
        head = _head(path)
        if has_marker(head):
            return True
        return starts_like_dataset(head) and read_dataset(path, headers_only=True) is not None
    except OSError:
        return False


def _text(ds: Dataset, keyword: str) -> str:
    """A tag's value as stripped text; '' when absent or malformed."""
    try:
        value = ds.get(keyword, "")
    except Exception:  # noqa: BLE001 - a malformed value names nothing
        return ""
    if value is None:
        return ""
    if isinstance(value, list | tuple | pydicom.multival.MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _rounded(ds: Dataset, keyword: str) -> str:
    """A numeric multi-value tag rounded for comparison ('' when absent or malformed)."""
    try:
        values = np.asarray(ds.get(keyword) or [], dtype=np.float64)
    except Exception:  # noqa: BLE001 - malformed geometry groups with other malformed geometry
        return ""
    return ",".join(f"{v:.{GEOMETRY_DECIMALS}f}" for v in values.ravel())


def series_key(ds: Dataset) -> str:
    """Series Instance UID; when blank, study + frame of reference + modality + image geometry."""
    uid = _text(ds, "SeriesInstanceUID")
    if uid:
        return uid
    parts = [_text(ds, k) for k in ("StudyInstanceUID", "FrameOfReferenceUID", "Modality", "SeriesNumber",
                                    "Rows", "Columns")]
    parts += [_rounded(ds, "ImageOrientationPatient"), _rounded(ds, "PixelSpacing")]
    return "geometry:" + "|".join(parts)


def _slice_positions(datasets: list[Dataset]) -> np.ndarray:
    """Sorted positions along the slice normal (empty when the geometry is missing: refused later, with reasons)."""
    try:
        iop = np.asarray(datasets[0].ImageOrientationPatient, dtype=np.float64)
        normal = np.cross(iop[:3], iop[3:])
        return np.sort([float(np.asarray(ds.ImagePositionPatient, dtype=np.float64) @ normal) for ds in datasets])
    except Exception:  # noqa: BLE001 - the volume builder names the missing or malformed tag
        return np.zeros(0)


def _geometry(ds: Dataset) -> tuple[str, str, str]:
    return _text(ds, "Rows"), _text(ds, "Columns"), _rounded(ds, "ImageOrientationPatient")


@dataclass
class DicomSeries:
    """The instances of one series: where each was found and its dataset (headers only after a header scan)."""

    key: str
    datasets: list[Dataset] = field(default_factory=list)
    sources: list[DicomSource] = field(default_factory=list)
    name: str = ""

    @property
    def description(self) -> str:
        return _text(self.datasets[0], "SeriesDescription")

    @property
    def number(self) -> str:
        return _text(self.datasets[0], "SeriesNumber")

    @property
    def modality(self) -> str:
        return _text(self.datasets[0], "Modality")

    @property
    def stem(self) -> str:
        """The name as a safe file-name stem."""
        return NAME_CHARACTERS.sub("_", self.name).strip("._")[:MAX_STEM] or "series"

    def check_one_volume(self) -> None:
        """Refuse a series whose images differ in size or orientation (a tri-plane localizer is not a volume)."""
        geometries = {_geometry(ds) for ds in self.datasets}
        if len(geometries) > 1:
            raise IrisInputError(f"series '{self.name}': its {len(self.datasets)} images have {len(geometries)} "
                                 "different sizes or orientations (a localizer?); they do not form one volume")
        steps = np.diff(_slice_positions(self.datasets))
        spread = steps.max() - steps.min() if steps.size > 1 else 0.0
        if steps.size > 1 and steps.min() > DUPLICATE_POSITION and spread > UNEVEN_SPACING * np.median(steps) + 0.01:
            raise IrisInputError(f"series '{self.name}': slice spacing is uneven ({steps.min():.2f} to "
                                 f"{steps.max():.2f} mm; missing slices?); it does not form one regular volume")


@dataclass
class DicomScan:
    """What a folder, zip or set of files holds: its DICOM series, and the files that are not DICOM images."""

    series: list[DicomSeries]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        """'2 DICOM series (A, B); skipped 1 file that is not a DICOM image: notes.txt'."""
        text = f"{len(self.series)} DICOM series ({', '.join(s.name for s in self.series)})"
        if self.skipped:
            names = ", ".join(name for name, _ in self.skipped[:5]) + (" ..." if len(self.skipped) > 5 else "")
            plural = "s that are" if len(self.skipped) > 1 else " that is"
            text += f"; skipped {len(self.skipped)} file{plural} not a DICOM image: {names}"
        return text


def _series_name(series: DicomSeries) -> str:
    if series.description:
        return series.description
    if series.number:
        return f"series {series.number}"
    return "series " + series.key.rsplit(".", 1)[-1][-8:]


def _number_order(series: DicomSeries) -> tuple[float, str]:
    try:
        return float(series.number), series.name
    except ValueError:
        return float("inf"), series.name


def group_series(found: Iterable[tuple[DicomSource, Dataset]]) -> list[DicomSeries]:
    """Group (source, dataset) pairs into series, ordered by series number, each with a unique name."""
    groups: dict[str, DicomSeries] = {}
    for source, ds in found:
        series = groups.setdefault(series_key(ds), DicomSeries(series_key(ds)))
        series.datasets.append(ds)
        series.sources.append(source)
    ordered = list(groups.values())
    for series in ordered:
        series.name = _series_name(series)
    ordered.sort(key=_number_order)
    totals = Counter(series.name for series in ordered)
    seen: Counter[str] = Counter()
    for series in ordered:
        if totals[series.name] > 1:
            seen[series.name] += 1
            series.name = f"{series.name} ({seen[series.name]})"
    return ordered
