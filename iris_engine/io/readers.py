"""Read images (NIfTI, DICOM series/file/zip, PNG/JPEG/TIFF, NumPy) into `Volume`s and masks into label maps.

Array layouts: 2D images are (H, W), rows first, as Pillow gives them. NIfTI keeps the file's voxel order
and affine. DICOM series are laid out like dcm2niix writes them: (columns, rows flipped, slices sorted
along the slice normal), with an RAS affine, so a mask written with that affine lines up with NIfTI
conversions of the same series.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path, PurePosixPath

import nibabel as nib
import numpy as np
import pydicom
from PIL import Image

from iris_engine.errors import IrisInputError
from iris_engine.io.dicom_series import DicomScan, DicomSeries, DicomSource, group_series, is_dicom_file, read_dataset
from iris_engine.io.limits import DEFAULT_LIMITS
from iris_engine.io.volume import MODALITIES, Volume

DEFAULT_MAX_BYTES = 2 * 1024**3
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
PILLOW_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
NUMPY_SUFFIXES = (".npy", ".npz")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".dicom")
GREY_MODES = ("1", "L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)
DICOM_MODALITIES = {"CT": "CT", "MR": "MR"}
ZIP_CHUNK = 1024**2
ZIP_RATIO_FLOOR = 16 * 1024**2  # archives inflating to less than this are never refused for their ratio


def read_image(path: str | Path, modality: str | None = None, max_bytes: int = DEFAULT_MAX_BYTES,
               max_voxels: int | None = None) -> Volume:
    """Read an image or volume file (or a DICOM folder/zip) into a validated float32 `Volume`.

    `max_voxels` is checked against the header (NIfTI, NumPy, image size) before the data is decoded.
    """
    p = Path(path)
    if modality is not None and modality not in MODALITIES:
        raise IrisInputError(f"{p}: unknown modality {modality!r}; expected one of {MODALITIES}")
    try:
        volume = _read_volume(p, max_bytes, max_voxels)
    except IrisInputError:
        raise
    except (ValueError, TypeError, OverflowError) as exc:  # a header value that does not parse ('1A' as a number)
        raise IrisInputError(f"{p}: malformed value in the file's header ({_describe(exc)})") from exc
    _validate_array(volume.array, p)
    _check_geometry(volume, p)
    if modality is not None:
        volume.modality = modality
    return volume


def _read_volume(p: Path, max_bytes: int, max_voxels: int | None) -> Volume:
    """Read a file, folder or zip by its kind; headers are checked against `max_voxels` before decoding."""
    if p.is_dir():
        volume = _read_dicom_folder(p, max_bytes)
    else:
        kind = _file_kind(p, max_bytes)
        if max_voxels is not None:
            _check_voxels(_header_shape(p, kind), max_voxels, p)
        if kind == "nifti":
            volume = _read_nifti(p)
        elif kind == "pillow":
            volume = Volume(_pillow_to_grey(_open_pillow(p), p), modality="photo", source=str(p))
        elif kind == "numpy":
            array = _squeeze(_load_numpy(p), p)
            _check_dtype(array, p)
            volume = Volume(array.astype(np.float32), source=str(p))
        elif kind == "zip":
            volume = _read_dicom_zip(p, max_bytes)
        else:
            volume = _volume_from_dicom([_dcmread(p, p)], str(p))
    return volume


def _check_geometry(volume: Volume, p: Path) -> None:
    """Refuse a singular or non-finite affine, and 2D images too elongated to squeeze into the model's square."""
    linear = np.asarray(volume.affine, dtype=np.float64)[:3, :3]
    if not np.isfinite(linear).all() or abs(np.linalg.det(linear)) < 1e-12:
        raise IrisInputError(f"{p}: the voxel-to-world matrix (affine) is singular, so the image has no usable "
                             "orientation; fix the header (NIfTI sform/qform, DICOM orientation and spacing)")
    if volume.ndim == 2:
        ratio = max(volume.shape) / min(volume.shape)
        if ratio > DEFAULT_LIMITS.max_aspect_ratio:
            raise IrisInputError(f"{p}: a {volume.shape[0]}x{volume.shape[1]} image is {ratio:.0f} times longer "
                                 f"than wide (at most {DEFAULT_LIMITS.max_aspect_ratio:g}, as the model sees it "
                                 "squeezed to a square); crop it to the region of interest")


def _describe(exc: BaseException) -> str:
    """An exception's message, or its type's name when the message is empty (MemoryError())."""
    return str(exc) or type(exc).__name__


def read_mask(
    path: str | Path, reference: Volume | None = None, max_bytes: int = DEFAULT_MAX_BYTES,
    max_classes: int = DEFAULT_LIMITS.max_classes,
) -> np.ndarray:
    """Read a label map (NIfTI, PNG/TIFF, NumPy) as int32 values as stored; shape must match `reference`.

    More distinct values than `max_classes` plus background are refused: every class costs a full-size channel.
    """
    p = Path(path)
    kind = _file_kind(p, max_bytes)
    if kind == "nifti":
        raw = _squeeze_trailing(_nifti_data(_load_nifti(p), p), p)
    elif kind == "pillow":
        raw = _pillow_to_labels(_open_pillow(p), p)
    elif kind == "numpy":
        raw = _squeeze(_load_numpy(p), p)
    else:
        raise IrisInputError(f"{p}: masks must be NIfTI, PNG/TIFF or NumPy files, not {kind}")
    _validate_array(raw, p)
    if raw.dtype.kind == "f" and not np.array_equal(raw, np.round(raw)):
        raise IrisInputError(f"{p}: mask has non-integer values; expected a label map")
    if raw.min() < 0:
        raise IrisInputError(f"{p}: mask has negative labels")
    if raw.max() > np.iinfo(np.int32).max:
        raise IrisInputError(f"{p}: mask labels too large")
    distinct = np.unique(raw).size
    if distinct > max_classes + 1:
        raise IrisInputError(f"{p}: mask has {distinct} distinct values ({distinct - 1} classes); at most {max_classes}"
                             " classes are supported (is it a greyscale image rather than a label map?)")
    mask = raw.astype(np.int32)
    if reference is not None and mask.shape != reference.shape:
        raise IrisInputError(f"{p}: mask shape {mask.shape} does not match image shape {reference.shape}")
    return mask


def _file_kind(p: Path, max_bytes: int) -> str:
    """Check existence and size, and classify a file by extension or DICOM magic bytes."""
    if not p.is_file():
        raise IrisInputError(f"{p}: file not found")
    size = p.stat().st_size
    if size == 0:
        raise IrisInputError(f"{p}: file is empty")
    if size > max_bytes:
        raise IrisInputError(f"{p}: file is {size} bytes, over the limit of {max_bytes}")
    name = p.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(PILLOW_SUFFIXES):
        return "pillow"
    if name.endswith(NUMPY_SUFFIXES):
        return "numpy"
    if name.endswith(".zip"):
        return "zip"
    if name.endswith(DICOM_SUFFIXES) or is_dicom_file(p):
        return "dicom"
    raise IrisInputError(
        f"{p}: unknown file type {p.suffix!r} (expected NIfTI, DICOM, PNG/JPEG/TIFF, NumPy, zip)"
    )


def _header_shape(p: Path, kind: str) -> tuple[int, ...] | None:
    """The data shape a file announces before its data is decoded (None: unknown without decoding)."""
    try:
        if kind == "nifti":
            return tuple(int(n) for n in _load_nifti(p).shape)
        if kind == "pillow":
            with Image.open(p) as img:
                return (img.height, img.width)
        if kind == "numpy" and p.name.lower().endswith(".npy"):
            with p.open("rb") as f:
                version = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, _, _ = read_header(f)
                return tuple(int(n) for n in shape)
    except IrisInputError:
        raise
    except Exception:  # noqa: BLE001 - unreadable headers are reported by the full read with its own message
        return None
    return None


def _check_voxels(shape: tuple[int, ...] | None, max_voxels: int, p: Path) -> None:
    if shape is not None and int(np.prod(shape, dtype=np.float64)) > max_voxels:
        raise IrisInputError(f"{p.name}: {'x'.join(map(str, shape))} is {int(np.prod(shape, dtype=np.float64))} "
                             f"voxels, over the limit of {max_voxels} voxels")


def _check_dtype(array: np.ndarray, p: Path) -> None:
    if array.dtype.kind not in "biuf":
        raise IrisInputError(f"{p}: unsupported data type {array.dtype}; expected integer or real values")


def _has_dicom_magic(p: Path) -> bool:
    """True if the file has the 'DICM' marker after the 128-byte preamble."""
    with p.open("rb") as f:
        head = f.read(132)
    return len(head) == 132 and head[128:] == b"DICM"


def _validate_array(array: np.ndarray, p: Path) -> None:
    """Reject empty, non-numeric, non-finite, 1D or >3D arrays."""
    if array.size == 0:
        raise IrisInputError(f"{p}: image is empty (shape {array.shape})")
    if array.dtype.kind not in "biuf":
        raise IrisInputError(f"{p}: unsupported data type {array.dtype}")
    effective = sum(1 for s in array.shape if s > 1)
    if array.ndim < 2 or effective < 2:
        raise IrisInputError(f"{p}: data is 1D (shape {array.shape}); expected a 2D image or 3D volume")
    if array.ndim > 3:
        raise IrisInputError(f"{p}: data has {array.ndim} dimensions (shape {array.shape}); at most 3")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise IrisInputError(f"{p}: image contains NaN or infinite values")


def _squeeze(array: np.ndarray, p: Path) -> np.ndarray:
    """Drop all singleton axes (NumPy and Pillow data carry no geometry)."""
    if array.size == 0:
        raise IrisInputError(f"{p}: image is empty (shape {array.shape})")
    return np.squeeze(array)


def _squeeze_trailing(array: np.ndarray, p: Path) -> np.ndarray:
    """Drop singleton axes beyond the third (NIfTI 4D with one time point); other 4D data is rejected."""
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim > 3:
        raise IrisInputError(
            f"{p}: {array.ndim}D data (shape {array.shape}); only 2D/3D images are supported"
        )
    return array


def _load_nifti(p: Path) -> nib.Nifti1Image:
    """Load a NIfTI header, turning nibabel's errors into IrisInputError."""
    try:
        return nib.load(str(p))
    except Exception as exc:
        raise IrisInputError(f"{p}: not a readable NIfTI file ({exc})") from exc


def _nifti_data(img: nib.Nifti1Image, p: Path) -> np.ndarray:
    """Read the voxel data of a NIfTI image with scaling applied; corrupt/truncated files raise."""
    _check_nifti_size(img, p)
    try:
        return np.asanyarray(img.dataobj)
    except MemoryError as exc:
        raise IrisInputError(f"{p}: not enough memory for the {'x'.join(map(str, img.shape))} "
                             f"{img.get_data_dtype()} voxels its header announces") from exc
    except Exception as exc:
        raise IrisInputError(f"{p}: NIfTI data is truncated or corrupt ({_describe(exc)})") from exc


def _check_nifti_size(img: nib.Nifti1Image, p: Path) -> None:
    """An uncompressed .nii must hold the bytes its header announces (checked before they are allocated)."""
    if not p.name.lower().endswith(".nii"):
        return
    voxels = int(np.prod(img.shape, dtype=np.float64))
    needed = int(img.header.get_data_offset()) + voxels * img.get_data_dtype().itemsize
    size = p.stat().st_size
    if size < needed:
        raise IrisInputError(f"{p}: NIfTI data is truncated: the header announces {'x'.join(map(str, img.shape))} "
                             f"{img.get_data_dtype()} voxels ({needed} bytes) but the file holds {size} bytes")


def _read_nifti(p: Path) -> Volume:
    """Read a NIfTI image as float32 with its affine."""
    img = _load_nifti(p)
    data = _squeeze_trailing(_nifti_data(img, p), p)
    _validate_array(data, p)
    metadata = {
        "original_dtype": str(img.get_data_dtype()),
        "zooms": tuple(float(z) for z in img.header.get_zooms()),
    }
    return Volume(
        data.astype(np.float32),
        affine=np.asarray(img.affine, dtype=np.float64),
        source=str(p),
        metadata=metadata,
    )


def _open_pillow(p: Path) -> Image.Image:
    """Open and fully decode an image with Pillow; truncated or corrupt files raise IrisInputError."""
    try:
        img = Image.open(p)
        img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise IrisInputError(f"{p}: unreadable or corrupt image ({exc})") from exc
    return img


def _pillow_to_grey(img: Image.Image, p: Path) -> np.ndarray:
    """Grey values as float32 (H, W); colour images become luminance, 16-bit values are kept."""
    if img.mode in GREY_MODES:
        array = np.asarray(img).astype(np.float32)
    else:
        rgb = np.asarray(img.convert("RGB")).astype(np.float32)
        array = rgb @ LUMA_WEIGHTS
    return _squeeze(array, p)


def _pillow_to_labels(img: Image.Image, p: Path) -> np.ndarray:
    """Label values of a mask image; palette indices are labels, colour masks must be grey in disguise."""
    if img.mode in GREY_MODES or img.mode == "P":
        return _squeeze(np.asarray(img), p)
    rgb = np.asarray(img.convert("RGB"))
    if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
        raise IrisInputError(f"{p}: colour mask image; expected a grey or palette label map")
    return _squeeze(rgb[..., 0], p)


def _load_numpy(p: Path) -> np.ndarray:
    """Load .npy, or the 'image' (else first) array of an .npz, without pickles."""
    try:
        loaded = np.load(p, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                if not loaded.files:
                    raise IrisInputError(f"{p}: .npz archive holds no arrays")
                key = "image" if "image" in loaded.files else loaded.files[0]
                return np.asarray(loaded[key])
        return np.asarray(loaded)
    except IrisInputError:
        raise
    except Exception as exc:
        raise IrisInputError(f"{p}: unreadable NumPy file ({exc})") from exc


def _dcmread(source: Path | io.BytesIO, p: Path) -> pydicom.Dataset:
    """Read one DICOM dataset; non-DICOM or corrupt content raises IrisInputError."""
    try:
        ds = read_dataset(source)
    except Exception as exc:
        raise IrisInputError(f"{p}: not a readable DICOM file ({exc})") from exc
    if ds is None:
        raise IrisInputError(f"{p}: not a readable DICOM file (no DICOM marker and no dataset found)")
    return ds


def _read_dicom_folder(folder: Path, max_bytes: int) -> Volume:
    """Read the one DICOM series under a folder (nested folders walked, non-DICOM files ignored)."""
    return _one_series(scan_dicom(folder, max_bytes), folder, "folder")


def _one_series(scan: DicomScan, p: Path, container: str) -> Volume:
    """The volume of a scan that must hold exactly one series."""
    if not scan.series:
        raise IrisInputError(f"{p}: no DICOM files found in the {container}")
    if len(scan.series) > 1:
        names = ", ".join(f"'{s.name}'" for s in scan.series)
        raise IrisInputError(f"{p}: holds {len(scan.series)} DICOM series ({names}); give one series at a time "
                             "(`iris segment` and the studio's upload split them)")
    return read_dicom_series(scan.series[0], str(p))


def scan_dicom(paths: Path | Sequence[Path], max_bytes: int = DEFAULT_MAX_BYTES, headers_only: bool = False,
               skip_corrupt: bool = False) -> DicomScan:
    """The DICOM series, found by content, in folders (walked), zips and files; other files are listed as skipped.

    `headers_only` reads no pixel data: `read_dicom_series` then reads the series it is given in full.
    A corrupt DICOM file is refused, or with `skip_corrupt` listed as skipped with its reason.
    """
    found: list[tuple[DicomSource, pydicom.Dataset]] = []
    skipped: list[tuple[str, str]] = []
    for path in [paths] if isinstance(paths, Path) else paths:
        for source, name, content in _dicom_candidates(Path(path), max_bytes):
            try:
                ds = _try_dcmread(content, name, headers_only)
            except IrisInputError as error:
                if not skip_corrupt:
                    raise
                skipped.append((name, str(error).removeprefix(f"{name}: ")))
                continue
            if ds is None:
                skipped.append((name, "not a DICOM image"))
            else:
                found.append((source, ds))
    return DicomScan(group_series(found), skipped)


def read_dicom_series(series: DicomSeries, source: str, max_bytes: int = DEFAULT_MAX_BYTES) -> Volume:
    """One series as a validated `Volume` (read in full when it was scanned headers only), named by the series."""
    try:
        series.check_one_volume()
        datasets = series.datasets
        if not all("PixelData" in ds for ds in datasets):
            datasets = _reread_series(series, max_bytes)
        volume = _volume_from_dicom(datasets, source)
    except IrisInputError:
        raise
    except (ValueError, TypeError, OverflowError) as exc:  # a header value that does not parse ('1A' as a number)
        raise IrisInputError(f"{source}: malformed value in the file's header ({_describe(exc)})") from exc
    _validate_array(volume.array, Path(source))
    _check_geometry(volume, Path(source))
    volume.metadata["dicom_series_name"] = series.name
    return volume


def _dicom_candidates(path: Path, max_bytes: int) -> Iterator[tuple[DicomSource, str, Path | io.BytesIO]]:
    """(source, display name, readable content) for every visible file under a folder, in a zip, or a file."""
    if path.is_dir():
        files = sorted(f for f in path.rglob("*")
                       if f.is_file() and not any(part.startswith(".") for part in f.relative_to(path).parts))
        total = sum(f.stat().st_size for f in files)
        if total > max_bytes:
            raise IrisInputError(f"{path}: folder holds {total} bytes, over the limit of {max_bytes}")
        for f in files:
            yield (f, ""), f.relative_to(path).as_posix(), f
    elif path.name.lower().endswith(".zip"):
        for member, content in _zip_members(path, max_bytes):
            yield (path, member), member, io.BytesIO(content)
    else:
        yield (path, ""), path.name, path


def _reread_series(series: DicomSeries, max_bytes: int) -> list[pydicom.Dataset]:
    """The datasets of a header-scanned series, read again with their pixel data."""
    total = 0
    datasets = []
    for (path, member), name in zip(series.sources, _source_names(series), strict=True):
        content = io.BytesIO(_zip_member(path, member, max_bytes)) if member else path
        total += content.getbuffer().nbytes if isinstance(content, io.BytesIO) else path.stat().st_size
        if total > max_bytes:
            raise IrisInputError(f"series '{series.name}': over the limit of {max_bytes} bytes")
        ds = _try_dcmread(content, name)
        if ds is None:
            raise IrisInputError(f"{name}: no longer a DICOM image (changed while reading?)")
        datasets.append(ds)
    return datasets


def _source_names(series: DicomSeries) -> list[str]:
    return [member or path.name for path, member in series.sources]


def _try_dcmread(source: Path | io.BytesIO, name: str = "", headers_only: bool = False) -> pydicom.Dataset | None:
    """A DICOM dataset with pixel data (headers only: with image rows), or None for files that are not DICOM images.

    A file that carries the DICOM marker but cannot be parsed is corrupt: it is refused, not skipped.
    """
    try:
        ds = read_dataset(source, headers_only)
        if ds is None:
            return None
        if headers_only:
            return ds if "Rows" in ds else None
    except Exception as exc:
        marked = source.getvalue()[128:132] == b"DICM" if isinstance(source, io.BytesIO) else _has_dicom_magic(source)
        if marked:
            label = name or (source.name if isinstance(source, Path) else "member")
            raise IrisInputError(f"{label}: corrupt DICOM file in the series ({exc})") from exc
        return None
    if "PixelData" not in ds and "Rows" in ds:
        label = name or (source.name if isinstance(source, Path) else "member")
        raise IrisInputError(f"{label}: truncated DICOM image in the series (its pixel data is missing)")
    return ds if "PixelData" in ds else None


def _read_dicom_zip(p: Path, max_bytes: int) -> Volume:
    """Read the one DICOM series in a zip archive, refusing unsafe paths and oversized content."""
    return _one_series(scan_dicom(p, max_bytes), p, "zip archive")


def _zip_members(p: Path, max_bytes: int) -> Iterator[tuple[str, bytes]]:
    """(name, content) of every file in a zip, after the path and size guards; corrupt archives raise."""
    try:
        with zipfile.ZipFile(p) as archive:
            entries = [info for info in archive.infolist() if not info.is_dir()]
            _check_zip_entries(entries, p, max_bytes)
            remaining = max_bytes
            for info in entries:
                content = _zip_member_bytes(archive, info, remaining, p)
                remaining -= len(content)
                yield info.filename, content
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
        raise IrisInputError(f"{p}: unreadable or corrupt zip archive ({exc})") from exc


def _zip_member(p: Path, member: str, max_bytes: int) -> bytes:
    """One member of a zip, by name, under the same guards."""
    try:
        with zipfile.ZipFile(p) as archive:
            info = archive.getinfo(member)
            _check_zip_entries([info], p, max_bytes)
            return _zip_member_bytes(archive, info, max_bytes, p)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, KeyError) as exc:
        raise IrisInputError(f"{p}: unreadable or corrupt zip archive ({exc})") from exc


def _zip_member_bytes(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, p: Path) -> bytes:
    """The uncompressed bytes of one member, inflated in chunks and refused past `limit`, whatever its header says."""
    content = bytearray()
    with archive.open(info) as member:
        while chunk := member.read(ZIP_CHUNK):
            content += chunk
            if len(content) > limit:
                raise IrisInputError(f"{p}: zip member {info.filename!r} inflates past the size limit; refused")
    return bytes(content)


def _check_zip_entries(entries: Iterable[zipfile.ZipInfo], p: Path, max_bytes: int) -> None:
    """Zip-slip and zip-bomb guards: no absolute or '..' member paths, bounded uncompressed size."""
    total = 0
    for info in entries:
        name = info.filename.replace("\\", "/")
        if (
            name.startswith("/")
            or PurePosixPath(name).is_absolute()
            or ".." in PurePosixPath(name).parts
            or (len(name) > 1 and name[1] == ":")
        ):
            raise IrisInputError(f"{p}: zip entry {info.filename!r} has an unsafe path")
        total += info.file_size
        if total > max_bytes:
            raise IrisInputError(f"{p}: zip content is over the limit of {max_bytes} bytes uncompressed")
    if total > max(ZIP_RATIO_FLOOR, DEFAULT_LIMITS.max_zip_ratio * p.stat().st_size):
        raise IrisInputError(f"{p}: zip archive of {p.stat().st_size} bytes would inflate to {total} bytes, over "
                             f"{DEFAULT_LIMITS.max_zip_ratio:g} times its size: refused as a zip bomb")


def _dicom_pixels(ds: pydicom.Dataset, source: str) -> np.ndarray:
    """Decoded pixel data as float32 with RescaleSlope/Intercept applied."""
    try:
        pixels = ds.pixel_array
    except Exception as exc:
        raise IrisInputError(f"{source}: DICOM pixel data cannot be decoded ({exc})") from exc
    if int(ds.get("SamplesPerPixel", 1)) > 1:
        pixels = np.asarray(pixels, dtype=np.float32) @ LUMA_WEIGHTS
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    return (np.asarray(pixels, dtype=np.float32) * np.float32(slope) + np.float32(intercept)).astype(
        np.float32
    )


def _volume_from_dicom(datasets: list[pydicom.Dataset], source: str) -> Volume:
    """Build a Volume from the datasets of one series (one single-frame dataset gives a 2D image)."""
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets}
    if len(series) > 1:
        raise IrisInputError(f"{source}: holds {len(series)} DICOM series; give one series at a time")
    first = datasets[0]
    modality = DICOM_MODALITIES.get(str(first.get("Modality", "")), "unknown")
    metadata = {"dicom_datasets": datasets, "dicom_modality": str(first.get("Modality", ""))}
    if len(datasets) == 1 and int(first.get("NumberOfFrames", 1) or 1) == 1:
        image = _dicom_pixels(first, source)
        metadata["dicom_layout"] = "single"
        return Volume(
            image, affine=_single_slice_affine(first), modality=modality, source=source, metadata=metadata
        )
    if len(datasets) == 1:
        raise IrisInputError(f"{source}: multi-frame DICOM files are not supported; export a classic series")
    datasets = _sort_slices(datasets, source)
    metadata["dicom_datasets"] = datasets
    metadata["dicom_layout"] = "series"
    slices = [_dicom_pixels(ds, source) for ds in datasets]
    if len({s.shape for s in slices}) != 1 or slices[0].ndim != 2:
        raise IrisInputError(f"{source}: DICOM slices differ in size or are multi-frame")
    stack = np.stack(slices)  # (slices, rows, cols)
    array = np.ascontiguousarray(stack.transpose(2, 1, 0)[:, ::-1, :])
    return Volume(array, affine=_series_affine(datasets), modality=modality, source=source, metadata=metadata)


def _orientation(ds: pydicom.Dataset, source: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row direction cosine (along a row), column direction cosine and slice normal, in LPS."""
    if "ImageOrientationPatient" not in ds or "ImagePositionPatient" not in ds:
        raise IrisInputError(f"{source}: DICOM slice lacks ImageOrientationPatient/ImagePositionPatient")
    iop = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
    row_cos, col_cos = iop[:3], iop[3:]
    return row_cos, col_cos, np.cross(row_cos, col_cos)


def _pixel_spacing(ds: pydicom.Dataset) -> tuple[float, float]:
    """(row spacing, column spacing) in mm; 1 mm when the tags are missing."""
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing") or (1.0, 1.0)
    return float(spacing[0]), float(spacing[1])


def _sort_slices(datasets: list[pydicom.Dataset], source: str) -> list[pydicom.Dataset]:
    """Sort slices by ImagePositionPatient projected on the slice normal; duplicates are rejected."""
    _, _, normal = _orientation(datasets[0], source)
    keys = [float(np.asarray(ds.ImagePositionPatient, dtype=np.float64) @ normal) for ds in datasets]
    order = np.argsort(keys, kind="stable")
    sorted_keys = np.asarray(keys)[order]
    if np.any(np.diff(sorted_keys) < 1e-4):
        raise IrisInputError(f"{source}: DICOM series has several slices at the same position")
    return [datasets[i] for i in order]


def _series_affine(datasets: list[pydicom.Dataset]) -> np.ndarray:
    """RAS affine of the (cols, rows flipped, slices) layout, as dcm2niix/nibabel would give."""
    first, last = datasets[0], datasets[-1]
    row_cos, col_cos, _ = _orientation(first, "")
    dr, dc = _pixel_spacing(first)
    p0 = np.asarray(first.ImagePositionPatient, dtype=np.float64)
    pn = np.asarray(last.ImagePositionPatient, dtype=np.float64)
    n_rows = int(first.Rows)
    lps = np.eye(4)
    lps[:3, 0] = row_cos * dc
    lps[:3, 1] = -col_cos * dr
    lps[:3, 2] = (pn - p0) / (len(datasets) - 1)
    lps[:3, 3] = p0 + (n_rows - 1) * col_cos * dr
    return LPS_TO_RAS @ lps


def _single_slice_affine(ds: pydicom.Dataset) -> np.ndarray:
    """RAS affine of a (rows, cols) image; pixel spacing only when the slice has no patient geometry."""
    dr, dc = _pixel_spacing(ds)
    if "ImageOrientationPatient" not in ds or "ImagePositionPatient" not in ds:
        return np.diag([dr, dc, 1.0, 1.0])
    row_cos, col_cos, normal = _orientation(ds, "")
    lps = np.eye(4)
    lps[:3, 0] = col_cos * dr
    lps[:3, 1] = row_cos * dc
    lps[:3, 2] = normal * float(ds.get("SliceThickness", 1.0) or 1.0)
    lps[:3, 3] = np.asarray(ds.ImagePositionPatient, dtype=np.float64)
    return LPS_TO_RAS @ lps
