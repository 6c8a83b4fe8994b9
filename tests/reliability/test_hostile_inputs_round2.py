"""Reliability round two (issue 15): greyscale images as masks, singular affines, malformed DICOM numbers, a corrupt
database, zip bombs, NumPy headers, huge headers, elongated images, long names, empty runs, paths in messages and
one-line checkpoint refusals."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import threading
import tracemalloc
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from app import handlers as h
from app.handlers import Session
from app.services import Services
from iris_engine import cli
from iris_engine.errors import IrisInputError
from iris_engine.inference import IrisSegmenter, Support
from iris_engine.io.limits import DEFAULT_LIMITS
from iris_engine.io.readers import _header_shape, _zip_member_bytes, read_image
from iris_engine.io.volume import Volume
from storage.database import Database
from storage.errors import StorageError
from tests.processes import ROOT
from tests.reliability.conftest import snapshot
from tests.reliability.corpus import dicom_bytes, zip_bomb
from tests.reliability.test_checkpoint_safety import malicious

ENV = {**{k: v for k, v in os.environ.items() if not k.startswith("IRIS_")}, "GRADIO_ANALYTICS_ENABLED": "False"}
UGLY = re.compile(r"Traceback|KeyError|IndexError|OrientationError|numpy\.|Unexpected error")


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out + out.err


def save_png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


def picture(shape: tuple[int, int] = (32, 32)) -> np.ndarray:
    return (np.random.default_rng(1).random(shape) * 255).astype(np.uint8)


def square_mask(shape: tuple[int, int] = (32, 32), low: int = 0, high: int = 1, dtype: type = np.uint8) -> np.ndarray:
    mask = np.full(shape, low, dtype=dtype)
    mask[8:20, 10:22] = high
    return mask


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    """A good 2D support: image and 0/1 mask."""
    return save_png(tmp_path / "support.png", picture()), save_png(tmp_path / "support_mask.png", square_mask())


def segment_argv(weights: Path, support: tuple[Path, Path], inputs: list[Path], out: Path) -> list[str]:
    argv = ["segment", "--support", str(support[0]), str(support[1]), "--weights", str(weights), "--quiet",
            "--output", str(out), "--device", "cpu"]
    for path in inputs:
        argv += ["--input", str(path)]
    return argv


# ---------------------------------------------------------------- 1. greyscale images given as masks

def test_16bit_greyscale_mask_is_refused_before_anything_is_allocated(pair: tuple[Path, Path],
                                                                      tmp_path: Path) -> None:
    grey = (np.arange(256 * 256).reshape(256, 256) % 65000).astype(np.uint16)
    image = save_png(tmp_path / "big.png", picture((256, 256)))
    mask = save_png(tmp_path / "grey16.png", grey)
    with pytest.raises(IrisInputError, match=r"65000 distinct values.*at most 64 classes"):
        cli.read_supports([(str(image), str(mask))])


def test_256_level_mask_is_refused_by_iris_segment(tiny_checkpoint: Path, pair: tuple[Path, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    image = save_png(tmp_path / "img.png", picture((16, 16)))
    mask = save_png(tmp_path / "grey8.png", np.arange(256, dtype=np.uint8).reshape(16, 16))
    code, text = run_cli(segment_argv(tiny_checkpoint, (image, mask), [image], tmp_path / "out"), capsys)
    assert code == cli.EXIT_USAGE and "256 distinct values" in text and str(DEFAULT_LIMITS.max_classes) in text, text
    assert not UGLY.search(text) and not (tmp_path / "out").exists()


def test_max_classes_is_configurable(tmp_path: Path) -> None:
    image = save_png(tmp_path / "img.png", picture((16, 16)))
    mask = save_png(tmp_path / "three.png", (np.arange(256, dtype=np.uint8).reshape(16, 16) % 4))
    assert np.unique(cli.read_supports([(str(image), str(mask))], max_classes=3)[0].mask).tolist() == [0, 1, 2, 3]
    with pytest.raises(IrisInputError, match="at most 2 classes"):
        cli.read_supports([(str(image), str(mask))], max_classes=2)


@pytest.mark.parametrize(("low", "high", "dtype"), [(0, 1, np.uint8), (0, 255, np.uint8), (0, 65535, np.uint16),
                                                    (0, 2, np.uint8), (3, 9, np.uint8), (100, 40000, np.uint16)])
def test_mask_with_two_values_is_one_class(low: int, high: int, dtype: type, tmp_path: Path) -> None:
    image = save_png(tmp_path / "img.png", picture())
    mask = save_png(tmp_path / "two.png", square_mask(low=low, high=high, dtype=dtype))
    labels = cli.read_supports([(str(image), str(mask))])[0].mask
    assert np.unique(labels).tolist() == [0, 1] and labels.sum() == 12 * 12


def test_mask_labels_beyond_the_class_limit_are_refused(tmp_path: Path) -> None:
    image = save_png(tmp_path / "img.png", picture())
    mask = square_mask(high=1)
    mask[0, 0], mask[0, 1] = 100, 200
    with pytest.raises(IrisInputError, match="labels go up to 200"):
        cli.read_supports([(str(image), str(save_png(tmp_path / "m.png", mask)))])


def test_segmenter_refuses_more_classes_than_the_limit(tiny_checkpoint: Path) -> None:
    segmenter = IrisSegmenter.from_checkpoint(tiny_checkpoint)
    support = Support(Volume(picture().astype(np.float32)), square_mask())
    names = [f"c{k}" for k in range(DEFAULT_LIMITS.max_classes + 1)]
    with pytest.raises(IrisInputError, match="at most 64"):
        segmenter.encode([support], names)


# ---------------------------------------------------------------- 2. singular affine

def singular_nifti(path: Path) -> Path:
    header = nib.Nifti1Header()
    header.set_sform(np.diag([1.0, 1.0, 0.0, 1.0]), code=1)
    nib.save(nib.Nifti1Image(np.random.default_rng(2).random((16, 16, 4), dtype=np.float32), None, header), path)
    return path


def test_singular_affine_is_skipped_and_the_batch_goes_on(tiny_checkpoint: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "good.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(3).random((16, 16, 4), dtype=np.float32), np.eye(4)), image)
    mask = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(np.pad(np.ones((8, 8, 4), np.uint8), ((4, 4), (4, 4), (0, 0))), np.eye(4)), mask)
    bad = singular_nifti(tmp_path / "singular.nii.gz")
    code, text = run_cli(segment_argv(tiny_checkpoint, (image, mask), [bad, image], tmp_path / "out"), capsys)
    assert code == 0 and not UGLY.search(text), text
    assert re.search(r"singular\.nii\.gz\s+skipped.*singular", text), text
    assert (tmp_path / "out" / "good_seg.nii.gz").is_file() and not (tmp_path / "out" / "singular_seg.nii.gz").exists()


def test_singular_affine_upload_is_not_stored(module_services: Services, tmp_path: Path) -> None:
    bad = singular_nifti(tmp_path / "singular.nii.gz")
    before = snapshot(module_services)
    with pytest.raises(IrisInputError, match="singular"):
        h.load_case(module_services, Session(), [str(bad)])
    assert snapshot(module_services) == before


# ---------------------------------------------------------------- 3. malformed DICOM numbers

def dicom_with(keyword: str, path: Path) -> Path:
    """A DICOM slice whose `keyword` (a decimal/integer string) holds '1A'."""
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(rows=16, cols=16)))
    vr = pydicom.datadict.dictionary_VR(pydicom.datadict.tag_for_keyword(keyword))
    placeholder = {"IS": "97531", "DS": "97531.5"}[vr]
    setattr(ds, keyword, placeholder)
    buffer = io.BytesIO()
    ds.save_as(buffer)
    stored = placeholder.encode() + b" " * (len(placeholder) % 2)
    assert buffer.getvalue().count(stored) == 1
    path.write_bytes(buffer.getvalue().replace(stored, b"1A".ljust(len(stored))))
    return path


@pytest.mark.parametrize("keyword", ["NumberOfFrames", "RescaleSlope", "SliceThickness"])
def test_malformed_dicom_number_is_a_clear_error(keyword: str, tiny_checkpoint: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    image = dicom_with(keyword, tmp_path / "bad.dcm")
    mask = save_png(tmp_path / "mask.png", square_mask((16, 16)))
    code, text = run_cli(segment_argv(tiny_checkpoint, (image, mask), [image], tmp_path / "out"), capsys)
    assert code == cli.EXIT_USAGE and "malformed value" in text and "'1A'" in text and not UGLY.search(text), text


def test_malformed_dicom_number_upload_is_refused(module_services: Services, tmp_path: Path) -> None:
    image = dicom_with("RescaleSlope", tmp_path / "bad.dcm")
    before = snapshot(module_services)
    with pytest.raises(IrisInputError, match="malformed value"):
        h.load_case(module_services, Session(), [str(image)])
    assert snapshot(module_services) == before


# ---------------------------------------------------------------- 4. a corrupt database file

@pytest.mark.parametrize("content", [b"this is not a database at all" * 50,
                                     b"SQLite format 3\x00" + bytes(range(256)) * 20], ids=["garbage", "corrupt"])
def test_corrupt_database_is_named_and_left_untouched(content: bytes, tmp_path: Path) -> None:
    db = tmp_path / "studio.db"
    db.write_bytes(content)
    with pytest.raises(StorageError, match=re.escape(db.name)):
        Database(f"sqlite:///{db}", tmp_path / "data")
    assert db.read_bytes() == content


def test_run_app_with_a_corrupt_database_says_which_file(tmp_path: Path) -> None:
    db = tmp_path / "studio.db"
    content = b"\x00garbage" * 1000
    db.write_bytes(content)
    result = subprocess.run([sys.executable, str(ROOT / "run_app.py"), "--db-url", f"sqlite:///{db}", "--data-dir",
                             str(tmp_path / "data"), "--no-demo", "--port", "1"], capture_output=True, text=True,
                            timeout=600, cwd=ROOT, env=ENV)
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"{db} is not an SQLite database" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert db.read_bytes() == content and sorted(p.name for p in tmp_path.iterdir()) == ["data", "studio.db"]


# ---------------------------------------------------------------- 5. zip bomb

def test_zip_bomb_is_refused_before_it_is_inflated(tmp_path: Path) -> None:
    bomb = tmp_path / "series.zip"
    bomb.write_bytes(zip_bomb(48 * 1024**2))
    tracemalloc.start()
    try:
        with pytest.raises(IrisInputError, match="zip bomb"):
            read_image(bomb, max_bytes=64 * 1024**2)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024**2, f"{peak / 1024**2:.0f} MiB allocated while refusing the bomb"


def test_zip_members_are_inflated_in_chunks_up_to_the_limit(tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a.dcm", b"\0" * 5000)
    with zipfile.ZipFile(archive) as z:
        assert _zip_member_bytes(z, z.infolist()[0], 5000, archive) == b"\0" * 5000
        with pytest.raises(IrisInputError, match="inflates past the size limit"):
            _zip_member_bytes(z, z.infolist()[0], 4999, archive)


def test_ordinary_dicom_zip_is_still_read(tmp_path: Path) -> None:
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(3):
            z.writestr(f"{i}.dcm", dicom_bytes(rows=16, cols=16, series="1.2.3", z=float(i)))
    assert read_image(archive).shape == (16, 16, 3)


# ---------------------------------------------------------------- 6. NumPy header voxel limit

@pytest.mark.parametrize("version", [(1, 0), (2, 0)])
def test_npy_header_voxel_limit_works_on_this_numpy(version: tuple[int, int], tmp_path: Path) -> None:
    path = tmp_path / "claims.npy"
    header = {"descr": "<f4", "fortran_order": False, "shape": (2000, 2000, 64)}
    with path.open("wb") as f:
        np.lib.format.write_array_header_1_0(f, header) if version == (1, 0) else \
            np.lib.format.write_array_header_2_0(f, header)
        f.write(b"\0" * 64)
    assert _header_shape(path, "numpy") == (2000, 2000, 64)
    with pytest.raises(IrisInputError, match=r"2000x2000x64 is 256000000 voxels, over the limit of 1000000"):
        read_image(path, max_voxels=10**6)


# ---------------------------------------------------------------- 7. smaller ones

def test_header_claiming_huge_dimensions_gives_a_reason(tmp_path: Path) -> None:
    header = nib.Nifti1Header()
    header.set_data_shape((30000, 30000, 100))
    header.set_data_dtype(np.int16)
    header["vox_offset"] = 352
    path = tmp_path / "huge.nii"
    path.write_bytes(header.binaryblock + b"\0" * 68)
    with pytest.raises(IrisInputError) as caught:
        read_image(path)
    message = str(caught.value)
    assert "()" not in message and re.search(r"30000x30000x100 int16 voxels \(\d+ bytes\).*holds 416 bytes", message)


def test_extremely_elongated_image_is_refused(tmp_path: Path) -> None:
    strip = save_png(tmp_path / "strip.png", picture((20000, 4)))
    with pytest.raises(IrisInputError, match=r"20000x4 image is 5000 times longer than wide"):
        read_image(strip)
    assert read_image(save_png(tmp_path / "wide.png", picture((64, 1024)))).shape == (64, 1024)


@pytest.mark.parametrize("length", [240, 254])
def test_long_file_names_are_segmented(length: int, tiny_checkpoint: Path, pair: tuple[Path, Path], tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    image = save_png(tmp_path / ("n" * (length - 4) + ".png"), picture())
    code, text = run_cli(segment_argv(tiny_checkpoint, pair, [image], tmp_path / "out"), capsys)
    written = [p for p in (tmp_path / "out").iterdir() if p.name != "labels.json"]
    assert code == 0 and len(written) == 1 and len(written[0].name) <= 255, text
    assert written[0].name.endswith("_seg.png") and written[0].name.startswith("nnnn")


def test_nothing_is_written_when_every_input_is_refused(tiny_checkpoint: Path, pair: tuple[Path, Path],
                                                        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    code, text = run_cli(segment_argv(tiny_checkpoint, pair, [bad], tmp_path / "out"), capsys)
    assert code == cli.EXIT_ALL_FAILED and "skipped" in text and not (tmp_path / "out").exists(), text


def test_labels_json_is_written_when_something_succeeded(tiny_checkpoint: Path, pair: tuple[Path, Path],
                                                         tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, text = run_cli(segment_argv(tiny_checkpoint, pair, [pair[0]], tmp_path / "out"), capsys)
    assert code == 0 and (tmp_path / "out" / "labels.json").read_text().strip().startswith("{"), text


def test_refusal_messages_name_the_file_not_the_server_path(module_services: Services, tmp_path: Path) -> None:
    folder = tmp_path / "gradio" / "0123456789abcdef"
    folder.mkdir(parents=True)
    bad = folder / "scan.nii.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(IrisInputError) as caught:
        h.load_case(module_services, Session(), [str(bad)])
    message = str(caught.value)
    assert message.startswith("scan.nii.gz:") and str(tmp_path) not in message and "/tmp" not in message, message


def test_checkpoint_refusal_is_one_clear_line(tmp_path: Path, pair: tuple[Path, Path],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    weights, marker = malicious(tmp_path)
    code, text = run_cli(segment_argv(weights, pair, [pair[0]], tmp_path / "out"), capsys)
    lines = [line for line in text.splitlines() if line.strip()]
    assert code == cli.EXIT_USAGE and len(lines) == 1 and "evil.pt" in lines[0] and "exec" in lines[0], text
    assert "weights_only" not in text and not marker.exists()


# ---------------------------------------------------------------- 8. a running segmentation does not block viewers

def test_viewer_is_not_blocked_by_a_running_segmentation(module_services: Services, tmp_path: Path) -> None:
    """A segmentation paused mid-way (inside the model) must leave opening and rendering the case to others."""
    image = tmp_path / "case.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(7).random((24, 24, 5), dtype=np.float32), np.eye(4)), image)
    segmenting, viewing = Session(), Session()
    h.load_case(module_services, segmenting, [str(image)])
    mask = np.zeros((24, 24, 5), dtype=bool)
    mask[6:16, 8:18, 2] = True
    record = module_services.storage.annotations.add(segmenting.case_id, "blob", mask, [2], author="test")
    h.add_stored_support(module_services, segmenting, f"annotation:{record.id}")
    inside, release = threading.Event(), threading.Event()

    def paused(fraction: float, message: str) -> None:
        if fraction >= 0.2:  # the model is at work
            inside.set()
            release.wait(600)

    worker = threading.Thread(target=h.run_segmentation, args=(module_services, segmenting, "One-shot"),
                              kwargs={"progress": paused})
    worker.start()
    try:
        assert inside.wait(600), "the segmentation never reached the model"
        viewer = threading.Thread(target=lambda: (h.open_case(module_services, viewing, segmenting.case_id),
                                                  h.render_slice(module_services, viewing, "axial", 2, "MR / auto",
                                                                 0.5)))
        viewer.start()
        viewer.join(300)  # a liveness check: blocked viewers wait until the segmentation ends, here never
        assert not viewer.is_alive(), "opening and rendering the case waited for the running segmentation"
    finally:
        release.set()
        worker.join(600)
    assert segmenting.result is not None
