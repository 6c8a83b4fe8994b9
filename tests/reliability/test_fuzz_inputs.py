"""Fuzz corpus through the app's upload and support handlers and `iris segment`: readable errors, nothing changed."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from app import handlers as h
from app.editor_canvas import CANVAS
from app.handlers import HandlerError, Session
from app.services import Services
from app.ui import EXPECTED
from iris_engine import cli
from iris_engine.errors import IrisInputError
from tests.reliability.conftest import UPLOAD_LIMIT, snapshot
from tests.reliability.corpus import SENTINEL, BadInput, corpus

CORPUS = corpus()
CLI_CATEGORIES = ("png", "nifti", "dicom", "dims", "nonfinite", "zip", "names", "size")
CLI_SUBSET = [c for c in CORPUS if c.category in CLI_CATEGORIES and "series" not in c.id][::3]
UGLY = re.compile(r"Traceback|KeyError|IndexError|numpy\.|Unexpected error")


def check_message(error: BaseException, pattern: str) -> str:
    message = str(error)
    assert isinstance(error, EXPECTED), f"{type(error).__name__} is not a user-facing error: {message}"
    assert message.strip() and not UGLY.search(message), message
    assert re.search(pattern, message, re.IGNORECASE), f"{pattern!r} not in {message!r}"
    return message


def test_corpus_is_large_and_named() -> None:
    ids = [c.id for c in CORPUS]
    assert len(set(ids)) == len(ids) and len(ids) + len(MASK_CASES) + len(CLI_MASK_CASES) >= 50


@pytest.mark.parametrize("case", CORPUS, ids=[c.id for c in CORPUS])
def test_upload_is_refused_and_changes_nothing(case: BadInput, module_services: Services, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    paths = case.make(tmp_path)
    before = snapshot(module_services)
    with pytest.raises(Exception) as caught:  # noqa: PT011 - the type is checked below
        h.load_case(module_services, Session(), [str(p) for p in paths])
    message = check_message(caught.value, case.match)
    assert snapshot(module_services) == before
    assert not (tmp_path / SENTINEL).exists() and not Path(SENTINEL).exists()
    if case.category == "size":
        assert str(UPLOAD_LIMIT) in message or "limit" in message


def test_upload_with_nothing_chosen(module_services: Services) -> None:
    with pytest.raises(HandlerError, match="choose a file"):
        h.load_case(module_services, Session(), [])


# ---------------------------------------------------------------- support masks (app): painted editor values

def _layer(shape: tuple[int, ...], value: int) -> np.ndarray:
    return np.full(shape, value, dtype=np.uint8)


MASK_CASES: dict[str, tuple[object, str]] = {
    "mask-none": (None, "nothing painted"),
    "mask-no-layers": ({"background": None, "layers": []}, "nothing painted"),
    "mask-empty-layer": ({"layers": [_layer((CANVAS, CANVAS, 4), 0)]}, "nothing painted"),
    "mask-all-ones": ({"layers": [_layer((CANVAS, CANVAS, 4), 255)]}, "whole slice"),
    "mask-wrong-canvas-size": ({"layers": [_layer((64, 64, 4), 255)]}, "expected 512x512"),
    "mask-1d-layer": ({"layers": [_layer((64,), 255)]}, "painted layer"),
    "mask-4d-layer": ({"layers": [_layer((2, 8, 8, 4), 255)]}, "painted layer"),
    "mask-nan-layer": ({"layers": [np.full((16, 16, 4), np.nan)]}, "painted layer"),
    "mask-empty-array": ({"layers": [np.zeros((0, 0, 4), np.uint8)]}, "painted layer"),
    "mask-not-an-array": ({"layers": ["hello"]}, "painted layer"),
}


@pytest.fixture(scope="module")
def opened(module_services: Services, tmp_path_factory: pytest.TempPathFactory) -> Session:
    image = np.random.default_rng(5).random((24, 24, 5), dtype=np.float32)
    path = tmp_path_factory.mktemp("ok") / "ok.nii.gz"
    nib.save(nib.Nifti1Image(image, np.eye(4)), str(path))
    session = Session()
    h.load_case(module_services, session, [str(path)])
    return session


@pytest.mark.parametrize("key", list(MASK_CASES))
def test_support_mask_is_refused_and_changes_nothing(key: str, module_services: Services, opened: Session) -> None:
    value, pattern = MASK_CASES[key]
    before = snapshot(module_services)
    with pytest.raises(Exception) as caught:  # noqa: PT011
        h.add_support(module_services, opened, value, "liver", 2)
    check_message(caught.value, pattern)
    assert snapshot(module_services) == before and opened.supports == []


def test_support_mask_needs_a_class_name(module_services: Services, opened: Session) -> None:
    with pytest.raises(HandlerError, match="name the class"):
        h.add_support(module_services, opened, {"layers": [_layer((64, 64, 4), 255)]}, "  ", 2)


# ---------------------------------------------------------------- `iris segment`

@pytest.fixture(scope="module")
def good_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("pair")
    image = np.random.default_rng(6).random((24, 24, 5), dtype=np.float32)
    mask = np.zeros(image.shape, dtype=np.uint8)
    mask[6:16, 8:18, :] = 1
    nib.save(nib.Nifti1Image(image, np.eye(4)), str(folder / "img.nii.gz"))
    nib.save(nib.Nifti1Image(mask, np.eye(4)), str(folder / "mask.nii.gz"))
    return folder / "img.nii.gz", folder / "mask.nii.gz"


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.mark.parametrize("case", CLI_SUBSET, ids=[c.id for c in CLI_SUBSET])
def test_cli_segment_skips_bad_input_clearly(case: BadInput, tiny_checkpoint: Path, good_pair: tuple[Path, Path],
                                             tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    inputs = case.make(tmp_path)
    image, mask = good_pair
    argv = ["segment", "--support", str(image), str(mask), "--weights", str(tiny_checkpoint), "--quiet",
            "--output", str(tmp_path / "out"), "--device", "cpu"]
    for path in inputs[:1]:
        argv += ["--input", str(path)]
    code, text = run_cli(argv, capsys)
    assert code != 0 and "skipped" in text and not UGLY.search(text), text
    assert not list((tmp_path / "out").glob("*_seg*")) and not (tmp_path / SENTINEL).exists()


def _mask_file(folder: Path, name: str, array: np.ndarray) -> Path:
    path = folder / name
    if name.endswith(".npy"):
        np.save(path, array)
    else:
        nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))
    return path


CLI_MASK_CASES: dict[str, tuple[np.ndarray, str]] = {
    "climask-empty": (np.zeros((24, 24, 5), np.uint8), "empty"),
    "climask-all-ones": (np.ones((24, 24, 5), np.uint8), "whole image|every voxel"),
    "climask-other-shape": (np.ones((20, 24, 5), np.uint8), "does not match"),
    "climask-2d-for-3d": (np.ones((24, 24), np.uint8), "does not match"),
    "climask-nan": (np.full((24, 24, 5), np.nan, np.float32), "NaN"),
    "climask-negative": (np.full((24, 24, 5), -1, np.int16), "negative"),
    "climask-fractional": (np.full((24, 24, 5), 0.5, np.float32), "non-integer"),
}


@pytest.mark.parametrize("key", list(CLI_MASK_CASES))
def test_cli_support_mask_is_refused(key: str, tiny_checkpoint: Path, good_pair: tuple[Path, Path], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    array, pattern = CLI_MASK_CASES[key]
    image, _ = good_pair
    mask = _mask_file(tmp_path, f"{key}.nii.gz", array)
    code, text = run_cli(["segment", "--support", str(image), str(mask), "--input", str(image), "--quiet",
                          "--weights", str(tiny_checkpoint), "--output", str(tmp_path / "out"), "--device", "cpu"],
                         capsys)
    assert code == cli.EXIT_USAGE and "error:" in text and not UGLY.search(text), text
    assert re.search(pattern, text, re.IGNORECASE), text
    assert not (tmp_path / "out").exists()


def test_iris_input_error_is_a_value_error() -> None:
    assert issubclass(IrisInputError, ValueError)


@pytest.mark.parametrize("case", [c for c in CORPUS if c.category in ("zip", "size")][:4], ids=lambda c: c.id)
def test_ui_shows_the_message_not_a_traceback(case: BadInput, module_services: Services, tmp_path: Path) -> None:
    """Through the UI wrapper the same message reaches the browser as a gr.Error, never 'Unexpected error'."""
    import gradio as gr

    from app.ui import guard

    paths = case.make(tmp_path)
    with pytest.raises(gr.Error) as caught:
        guard(h.load_case)(module_services, Session(), [str(p) for p in paths])
    assert re.search(case.match, caught.value.message, re.IGNORECASE) and not UGLY.search(caught.value.message)
