"""A fuzz corpus of bad uploads, generated on the fly (nothing downloaded): each case has an id and a category."""

from __future__ import annotations

import gzip
import io
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

Maker = Callable[[Path], list[Path]]
SENTINEL = "PWNED"  # a file a shell-injected name would create in the working folder


@dataclass(frozen=True)
class BadInput:
    """One corpus entry: `make(folder)` writes the upload's file(s); `match` must occur in the error message."""

    id: str
    category: str
    make: Maker
    match: str


# ---------------------------------------------------------------- valid building blocks

def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def good_png() -> bytes:
    return png_bytes((np.arange(32 * 32).reshape(32, 32) % 251).astype(np.uint8))


def nifti_bytes(array: np.ndarray, gz: bool = False) -> bytes:
    image = nib.Nifti1Image(array, np.eye(4))
    raw = image.to_bytes()
    return gzip.compress(raw, compresslevel=1) if gz else raw


def good_nifti(gz: bool = False) -> bytes:
    return nifti_bytes(np.random.default_rng(0).random((16, 16, 8), dtype=np.float32), gz)


def dicom_bytes(rows: int = 8, cols: int = 8, series: str | None = None, z: float = 0.0,
                pixels: bytes | None = None) -> bytes:
    """A minimal single-slice CT DICOM file."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), series or generate_uid()
    ds.Modality, ds.PatientID = "CT", "P1"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0.0, 0.0, z]
    ds.PixelSpacing = [1.0, 1.0]
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels if pixels is not None else np.arange(rows * cols, dtype=np.uint16).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def zip_bytes(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def zip_bomb(uncompressed: int) -> bytes:
    """A zip whose one member inflates to `uncompressed` bytes of zeros (written in chunks)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive, archive.open("bomb.dcm", "w",
                                                                                     force_zip64=True) as member:
        chunk = b"\0" * (1 << 22)
        for _ in range(uncompressed // len(chunk)):
            member.write(chunk)
    return buffer.getvalue()


def nifti_header_claiming(shape: tuple[int, ...]) -> bytes:
    """A .nii whose header claims a huge volume but carries only a few bytes of data."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32)
    header["vox_offset"] = 352
    return header.binaryblock + b"\0" * 4 + b"\0" * 64


# ---------------------------------------------------------------- corpus

def _one(name: str, data: bytes | Callable[[], bytes]) -> Maker:
    def make(folder: Path) -> list[Path]:
        path = folder / name
        path.write_bytes(data() if callable(data) else data)
        return [path]
    return make


def _many(files: dict[str, bytes | Callable[[], bytes]]) -> Maker:
    def make(folder: Path) -> list[Path]:
        paths = []
        for name, data in files.items():
            path = folder / name
            path.write_bytes(data() if callable(data) else data)
            paths.append(path)
        return paths
    return make


def _sparse(name: str, size: int) -> Maker:
    def make(folder: Path) -> list[Path]:
        path = folder / name
        with path.open("wb") as f:
            f.truncate(size)
        return [path]
    return make


def _truncate(data: Callable[[], bytes], fraction: float) -> Callable[[], bytes]:
    return lambda: (lambda b: b[: int(len(b) * fraction)])(data())


def _flip_bytes(data: Callable[[], bytes], start: int, count: int = 64) -> Callable[[], bytes]:
    def corrupt() -> bytes:
        raw = bytearray(data())
        raw[start:start + count] = bytes((b ^ 0xA5) for b in raw[start:start + count])
        return bytes(raw)
    return corrupt


def _float(shape: tuple[int, ...], fill: float | None = None) -> np.ndarray:
    array = np.random.default_rng(1).random(shape, dtype=np.float32)
    if fill is not None:
        array.flat[:: max(1, array.size // 7)] = fill
    return array


GB2 = 2 * 1024**3
C = "constant"


def corpus() -> list[BadInput]:
    """The corpus; `match` is a regular expression the user-facing message must contain."""
    b = BadInput
    cases = [
        # PNG / JPEG / TIFF
        b("png-truncated-half", "png", _one("t.png", _truncate(good_png, 0.5)), "corrupt|unreadable"),
        b("png-truncated-header", "png", _one("t.png", _truncate(good_png, 0.02)), "corrupt|unreadable"),
        b("png-corrupt-idat", "png", _one("c.png", _flip_bytes(good_png, 60, 200)), "corrupt|unreadable"),
        b("png-random-bytes", "png", _one("r.png", np.random.default_rng(2).bytes(4096)), "corrupt|unreadable"),
        b("png-empty-file", "png", _one("e.png", b""), "empty"),
        b("png-1d-row", "png", _one("row.png", png_bytes(np.arange(64, dtype=np.uint8)[None, :])), "1D"),
        b("png-1x1", "png", _one("dot.png", png_bytes(np.full((1, 1), 7, np.uint8))), "1D"),
        b("png-constant", C, _one("flat.png", png_bytes(np.full((32, 32), 9, np.uint8))), "constant"),
        b("jpeg-truncated", "png", _one("t.jpg", _truncate(lambda: _jpeg(), 0.3)), "corrupt|unreadable"),
        b("tiff-garbage", "png", _one("g.tif", b"II*\0" + b"\xff" * 500), "corrupt|unreadable"),
        b("png-named-jpg-text", "png", _one("notes.jpg", b"just some text, not an image"), "corrupt|unreadable"),
        # NIfTI
        b("nifti-truncated-data", "nifti", _one("t.nii", _truncate(good_nifti, 0.6)), "truncated|corrupt"),
        b("nifti-truncated-header", "nifti", _one("h.nii", _truncate(good_nifti, 0.1)), "NIfTI"),
        b("nifti-gz-truncated", "nifti", _one("t.nii.gz", _truncate(lambda: good_nifti(True), 0.5)),
          "truncated|corrupt|NIfTI"),
        b("nifti-gz-not-gzip", "nifti", _one("x.nii.gz", b"\x1f\x8b" + b"\0" * 200), "NIfTI|corrupt"),
        b("nifti-bad-magic", "nifti", _one("m.nii", _flip_bytes(good_nifti, 344, 4)), "NIfTI"),
        b("nifti-random-bytes", "nifti", _one("r.nii", np.random.default_rng(3).bytes(2048)), "NIfTI"),
        b("nifti-1d", "dims", _one("line.nii", nifti_bytes(_float((50,)))), "1D"),
        b("nifti-4d", "dims", _one("time.nii", nifti_bytes(_float((8, 8, 4, 3)))), "4D|dimensions"),
        b("nifti-5d", "dims", _one("five.nii.gz", nifti_bytes(_float((6, 6, 4, 2, 3)), True)), "5D|dimensions"),
        b("nifti-nan", "nonfinite", _one("nan.nii", nifti_bytes(_float((12, 12, 4), np.nan))), "NaN"),
        b("nifti-inf", "nonfinite", _one("inf.nii", nifti_bytes(_float((12, 12, 4), np.inf))), "infinite"),
        b("nifti-neg-inf", "nonfinite", _one("ninf.nii.gz", nifti_bytes(_float((12, 12, 4), -np.inf), True)),
          "infinite"),
        b("nifti-all-nan", "nonfinite", _one("allnan.nii", nifti_bytes(np.full((8, 8, 3), np.nan, np.float32))),
          "NaN"),
        b("nifti-constant-zero", C, _one("zero.nii", nifti_bytes(np.zeros((16, 16, 4), np.float32))), "constant"),
        b("nifti-constant-ones", C, _one("ones.nii.gz", nifti_bytes(np.ones((16, 16, 4), np.int16), True)),
          "constant"),
        b("nifti-header-claims-huge", "size", _one("huge.nii", nifti_header_claiming((4096, 4096, 4096))),
          "voxels|limit"),
        # DICOM
        b("dicom-truncated", "dicom", _one("t.dcm", _truncate(dicom_bytes, 0.7)), "DICOM"),
        b("dicom-truncated-preamble", "dicom", _one("p.dcm", _truncate(dicom_bytes, 0.05)), "DICOM"),
        b("dicom-random-bytes", "dicom", _one("r.dcm", np.random.default_rng(4).bytes(3000)), "DICOM"),
        b("dicom-magic-then-garbage", "dicom", _one("noext", b"\0" * 128 + b"DICM" + b"\xff" * 300), "DICOM"),
        b("dicom-short-pixeldata", "dicom", _one("s.dcm", lambda: dicom_bytes(pixels=b"\1\2\3\4")), "DICOM"),
        b("dicom-1-row", "dims", _one("row.dcm", lambda: dicom_bytes(rows=1, cols=16)), "1D"),
        b("dicom-constant", C, _one("flat.dcm", lambda: dicom_bytes(pixels=np.full(64, 5, np.uint16).tobytes())),
          "constant"),
        b("dicom-series-one-corrupt", "dicom",
          _many({"a.dcm": lambda: dicom_bytes(series="1.2.3", z=0.0),
                 "b.dcm": _truncate(lambda: dicom_bytes(series="1.2.3", z=1.0), 0.8)}),
          "DICOM|position|series"),
        # NumPy
        b("npy-1d", "dims", _one("v.npy", npy_bytes(_float((40,)))), "1D"),
        b("npy-4d", "dims", _one("v4.npy", npy_bytes(_float((5, 5, 4, 3)))), "4 dimensions"),
        b("npy-5d", "dims", _one("v5.npy", npy_bytes(_float((3, 4, 5, 2, 2)))), "5 dimensions"),
        b("npy-nan", "nonfinite", _one("nan.npy", npy_bytes(_float((10, 10), np.nan))), "NaN"),
        b("npy-inf", "nonfinite", _one("inf.npy", npy_bytes(_float((10, 10, 3), np.inf))), "infinite"),
        b("npy-empty-array", "dims", _one("empty.npy", npy_bytes(np.zeros((0, 8), np.float32))), "empty"),
        b("npy-object-pickle", "npy", _one("obj.npy", npy_bytes(np.array([{"a": 1}, None], dtype=object))),
          "NumPy|pickle"),
        b("npy-strings", "npy", _one("s.npy", npy_bytes(np.array([["a", "b"], ["c", "d"]]))), "data type"),
        b("npy-complex", "npy", _one("z.npy", npy_bytes(np.ones((4, 4), np.complex64))), "data type"),
        b("npy-truncated", "npy", _one("t.npy", _truncate(lambda: npy_bytes(_float((20, 20))), 0.5)), "NumPy"),
        b("npy-constant", C, _one("flat.npy", npy_bytes(np.full((12, 12, 3), 3.5, np.float32))), "constant"),
        b("npz-no-arrays", "npy", _one("none.npz", zip_bytes({})), "no arrays|NumPy"),
        # zips
        b("zip-slip-dotdot", "zip", _one("slip.zip", lambda: zip_bytes({"../../evil.dcm": dicom_bytes()})), "unsafe"),
        b("zip-slip-absolute", "zip", _one("abs.zip", lambda: zip_bytes({"/etc/evil.dcm": dicom_bytes()})), "unsafe"),
        b("zip-slip-windows", "zip", _one("win.zip", lambda: zip_bytes({"C:\\evil.dcm": dicom_bytes()})), "unsafe"),
        b("zip-slip-backslash", "zip", _one("bs.zip", lambda: zip_bytes({"a\\..\\..\\evil.dcm": dicom_bytes()})),
          "unsafe"),
        b("zip-bomb", "zip", _one("bomb.zip", lambda: zip_bomb(96 * 1024**2)), "over .*limit"),
        b("zip-no-dicom", "zip", _one("text.zip", zip_bytes({"readme.txt": b"hello"})), "no DICOM"),
        b("zip-truncated", "zip", _one("t.zip", _truncate(lambda: zip_bytes({"a.dcm": dicom_bytes()}), 0.5)),
          "corrupt|zip"),
        b("zip-not-a-zip", "zip", _one("fake.zip", b"PK\x03\x04" + b"\0" * 100), "corrupt|zip"),
        # names with shell metacharacters (bad content, so they must be refused without running anything)
        b("name-subshell", "names", _one(f"$(touch {SENTINEL}).png", b"not a png"), "corrupt|unreadable"),
        b("name-backticks", "names", _one(f"`touch {SENTINEL}`.nii", b"garbage"), "NIfTI"),
        b("name-semicolon-pipe", "names", _one(f"a;touch {SENTINEL}|cat.dcm", b"garbage"), "DICOM"),
        b("name-ampersand-quote", "names", _one("x' && touch PWNED; echo '.npy", b"garbage"), "NumPy"),
        b("name-newline", "names", _one("line\nbreak.png", b"garbage"), "corrupt|unreadable"),
        # size and type
        b("upload-2gb-sparse-nifti", "size", _sparse("huge.nii", GB2), "over .*limit"),
        b("upload-2gb-sparse-in-series", "size",
          lambda folder: _many({"a.dcm": lambda: dicom_bytes()})(folder) + _sparse("b.dcm", GB2)(folder),
          "over .*limit"),
        b("unknown-extension", "type", _one("report.docx", b"PK\x03\x04 not really"), "unknown file type"),
        b("empty-nifti", "type", _one("e.nii.gz", b""), "empty"),
    ]
    return cases


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) % 255).astype(np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


