"""Configurable upload/volume limits with messages naming the limit; user-supplied names never escape the data dir."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from app import handlers as h
from app import services as services_module
from app.config import AppConfig
from app.handlers import Session
from app.services import Services, file_suffix
from iris_engine.errors import IrisInputError
from storage.records import CaseMetadata
from tests.processes import ROOT
from tests.reliability.conftest import make_services, snapshot
from tests.reliability.corpus import SENTINEL, good_png

GB2 = 2 * 1024**3


def _nifti(path: Path, shape: tuple[int, ...] = (16, 16, 8)) -> Path:
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random(shape, dtype=np.float32), np.eye(4)), str(path))
    return path


@pytest.fixture
def small_limits(tmp_path: Path, tiny_checkpoint: Path) -> Services:
    services = make_services(tmp_path / "data", tiny_checkpoint, upload_limit_bytes=5000, max_voxels=1000)
    yield services
    services.close()


def test_upload_limit_message_names_the_limit(small_limits: Services, tmp_path: Path) -> None:
    path = tmp_path / "big.npy"
    np.save(path, np.random.default_rng(0).random((40, 40), dtype=np.float32))
    with pytest.raises(IrisInputError, match=r"over this studio's limit of 5000 bytes"):
        h.load_case(small_limits, Session(), [str(path)])


def test_voxel_limit_message_names_the_limit(small_limits: Services, tmp_path: Path) -> None:
    path = _nifti(tmp_path / "vol.nii.gz", (12, 12, 8))  # 1152 voxels, a few hundred bytes compressed
    assert path.stat().st_size < 5000
    with pytest.raises(IrisInputError, match=r"1152 voxels, over the limit of 1000 voxels"):
        h.load_case(small_limits, Session(), [str(path)])


@pytest.mark.parametrize("count", [1, 3])
def test_2gb_upload_refused_before_reading(count: int, tmp_path: Path, tiny_checkpoint: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Default limits (1 GiB): a sparse 2 GiB file, alone or in a DICOM series, is refused from its size alone."""
    services = make_services(tmp_path / "data", tiny_checkpoint, upload_limit_bytes=AppConfig().upload_limit_bytes)
    try:
        paths = []
        for i in range(count):
            paths.append(tmp_path / f"slice{i}.dcm")
            with paths[-1].open("wb") as f:
                f.truncate(GB2 if i == count - 1 else 1000)

        def forbidden(*args: object, **kwargs: object) -> None:
            raise AssertionError("the upload was read although it is over the limit")

        monkeypatch.setattr(services_module, "read_image", forbidden)
        monkeypatch.setattr(services_module, "read_dicom_upload", forbidden)
        before = snapshot(services)
        with pytest.raises(IrisInputError, match=r"over this studio's limit of 1073741824 bytes \(1024 MiB\)"):
            h.load_case(services, Session(), [str(p) for p in paths])
        assert snapshot(services) == before
    finally:
        services.close()


def test_limits_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IRIS_MAX_UPLOAD_MB", "2")
    monkeypatch.setenv("IRIS_MAX_VOXELS", "12345")
    config = AppConfig()
    assert config.upload_limit_bytes == 2 * 1024**2 and config.max_voxels == 12345
    monkeypatch.setenv("IRIS_MAX_VOXELS", "-1")
    with pytest.raises(ValueError, match="IRIS_MAX_VOXELS must be positive"):
        AppConfig()


def test_run_app_documents_and_checks_limits(tmp_path: Path) -> None:
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    run = lambda *a: subprocess.run(["nice", "-n", "19", sys.executable, str(ROOT / "run_app.py"), *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert "--max-upload-mb" in run("--help").stdout and "--max-voxels" in run("--help").stdout
    refused = run("--max-voxels", "0", "--data-dir", str(tmp_path))
    assert refused.returncode == 2 and "must be positive" in refused.stderr


# ---------------------------------------------------------------- path safety

HOSTILE = ["../../etc/passwd", "/etc/passwd", "..\\..\\boot.ini", "a/../../b.nii.gz", "x;rm -rf ~.png",
           "$(touch PWNED).nii", "`id`.dcm", "a|b&c.png", "..", ".", "", "C:\\Windows\\x.png", "name\x00.png"]


@pytest.mark.parametrize("name", HOSTILE)
def test_file_suffix_never_carries_a_path(name: str) -> None:
    suffix = file_suffix(name)
    assert "/" not in suffix and "\\" not in suffix and ".." not in suffix.strip(".") and len(suffix) < 16


HOSTILE_VALID = ["$(touch PWNED);x.png", "a|b&c`id`.png", "..png", "-rf.png", "'; DROP TABLE cases; --.png"]


@pytest.mark.parametrize("name", HOSTILE_VALID)
def test_hostile_upload_name_is_stored_as_text(name: str, module_services: Services, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A valid image with shell/SQL metacharacters in its name is stored content-addressed; the name is only text."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / name
    path.write_bytes(good_png())
    session = Session()
    h.load_case(module_services, session, [str(path)])
    case = module_services.storage.cases.get(session.case_id)
    blobs = (module_services.config.data_dir / "blobs").resolve()
    assert case.source_filename == name and case.file_path.resolve().is_relative_to(blobs)
    assert case.file_path.name == case.sha256 and not (tmp_path / SENTINEL).exists()
    assert module_services.storage.maintenance.row_counts()["cases"] >= 1


@pytest.mark.parametrize("source", ["../../../../../tmp/evil.png", "/etc/passwd", "..\\..\\x.nii.gz"])
def test_stored_hostile_source_name_is_read_inside_a_temp_dir(source: str, module_services: Services,
                                                              tmp_path: Path) -> None:
    """Case file names come back from the DB (e.g. imported projects): reading a case never writes outside tmp."""
    image = tmp_path / "img.png"
    image.write_bytes(good_png())
    case = module_services.storage.cases.add_case(image, CaseMetadata("hostile", source, (32, 32)))
    written: list[Path] = []
    real_copy = services_module.shutil.copyfile

    def spy(src: str | Path, dst: str | Path) -> object:
        written.append(Path(dst).resolve())
        return real_copy(src, dst)

    module_services.forget_case(case.id)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(services_module.shutil, "copyfile", spy)
        try:
            module_services.case_volume(case.id)
        except IrisInputError:
            pass  # an unreadable suffix is fine; what matters is where the copy went
    assert written and all(p.parent.name.startswith("tmp") and p.name.startswith("case") for p in written)


def test_export_names_do_not_come_from_the_user(module_services: Services, tmp_path: Path) -> None:
    """Exports are named from the case id only, inside a fresh temp folder, whatever the class and case names."""
    path = _nifti(tmp_path / "$(touch PWNED)..nii.gz", (24, 24, 5))
    session = Session()
    h.load_case(module_services, session, [str(path)])
    value = h.editor_value(module_services, session, 2, "MR / auto")
    layer = np.zeros((*value["background"].shape[:2], 4), dtype=np.uint8)
    layer[100:300, 100:300, 3] = 255
    h.add_support(module_services, session, {**value, "layers": [layer]}, "../../evil", 2)
    h.run_segmentation(module_services, session, "One-shot")
    out = h.export_mask(module_services, session, "NIfTI")
    assert out.name == f"case{session.case_id}_mask.nii.gz" and out.parent.name.startswith("iris_export_")
    assert not (tmp_path / SENTINEL).exists()
