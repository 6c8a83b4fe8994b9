"""Checkpoints from strangers: a pickle that runs code, a tampered or truncated file are refused with a clear
message by the app (start-up and weight switching) and by the CLI, with no side effect."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from app.services import UNTRAINED_VERSION, Services
from iris_engine import cli
from iris_engine.checkpoint import load_checkpoint
from iris_engine.config import CHECKPOINT_FORMAT_VERSION
from iris_engine.errors import CheckpointError
from storage.files import BlobStore, writer_is_dead
from tests.reliability.conftest import make_services, snapshot


class Payload:
    """Unpickling this runs code: it writes the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return exec, (f"open({str(self.marker)!r}, 'w').write('owned')",)


def malicious(folder: Path) -> tuple[Path, Path]:
    marker = folder / "OWNED"
    path = folder / "evil.pt"
    torch.save({"format_version": CHECKPOINT_FORMAT_VERSION, "model_config": {}, "hook": Payload(marker)}, path)
    return path, marker


def tampered(good: Path, folder: Path) -> Path:
    payload = torch.load(good, weights_only=True)
    name = next(iter(payload["state_dict"]))
    payload["state_dict"][name] = payload["state_dict"][name] + 0.5
    path = folder / "tampered.pt"
    torch.save(payload, path)
    return path


def truncated(good: Path, folder: Path) -> Path:
    path = folder / "truncated.pt"
    path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return path


def test_malicious_pickle_is_not_executed(tmp_path: Path) -> None:
    path, marker = malicious(tmp_path)
    with pytest.raises(CheckpointError, match="not a loadable IRIS checkpoint \\(corrupt or unsafe\\)"):
        load_checkpoint(path)
    assert not marker.exists()


BAD = {"malicious": "corrupt or unsafe", "tampered": "failed its integrity check", "truncated": "corrupt or unsafe"}


def bad_checkpoint(kind: str, good: Path, folder: Path) -> tuple[Path, Path]:
    marker = folder / "OWNED"
    if kind == "malicious":
        return malicious(folder)
    return (tampered if kind == "tampered" else truncated)(good, folder), marker


@pytest.mark.parametrize("kind", list(BAD))
def test_app_start_refuses_bad_weights(kind: str, tmp_path: Path, tiny_checkpoint: Path) -> None:
    path, marker = bad_checkpoint(kind, tiny_checkpoint, tmp_path)
    services = make_services(tmp_path / "data", path)
    try:
        assert services.untrained and services.model_version == UNTRAINED_VERSION
        assert BAD[kind] in services.warning and services.warning.startswith("UNTRAINED MODEL")
        assert not marker.exists()
    finally:
        services.close()


@pytest.mark.parametrize("kind", list(BAD))
def test_weight_switch_refuses_bad_weights(kind: str, tmp_path: Path, tiny_checkpoint: Path,
                                           module_services: Services) -> None:
    path, marker = bad_checkpoint(kind, tiny_checkpoint, tmp_path)
    before = snapshot(module_services)
    try:
        module_services.load_weights(path)
        assert module_services.untrained and BAD[kind] in module_services.warning
        assert snapshot(module_services) == before and not marker.exists()
    finally:
        module_services.load_weights(tiny_checkpoint)
    assert not module_services.untrained and module_services.warning == ""


@pytest.mark.parametrize("kind", list(BAD))
def test_cli_refuses_bad_weights(kind: str, tmp_path: Path, tiny_checkpoint: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    path, marker = bad_checkpoint(kind, tiny_checkpoint, tmp_path)
    image = tmp_path / "img.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((16, 16, 4), dtype=np.float32), np.eye(4)), str(image))
    mask = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(np.pad(np.ones((8, 8, 4), np.uint8), ((4, 4), (4, 4), (0, 0))), np.eye(4)), str(mask))
    code = cli.main(["segment", "--support", str(image), str(mask), "--input", str(image), "--weights", str(path),
                     "--output", str(tmp_path / "out"), "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE and f"iris segment: error: {path.name}" in err and BAD[kind] in err, err
    assert "Traceback" not in err and not marker.exists() and not (tmp_path / "out").exists()


def test_cli_export_refuses_malicious_weights_in_a_fresh_process(tmp_path: Path) -> None:
    path, marker = malicious(tmp_path)
    result = subprocess.run(["nice", "-n", "19", sys.executable, "-m", "iris_engine", "export", "--weights", str(path),
                             "--output", str(tmp_path / "m.onnx")], capture_output=True, text=True, timeout=300)
    assert result.returncode == cli.EXIT_USAGE and "corrupt or unsafe" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and not marker.exists() and not (tmp_path / "m.onnx").exists()


def test_partials_of_dead_writers_are_recognised(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store = BlobStore(tmp_path / "blobs")
    (store.tmp / f"{dead.pid}-a.partial").write_bytes(b"x")
    (store.tmp / f"{os.getpid()}-b.partial").write_bytes(b"x")
    (store.tmp / "legacy.partial").write_bytes(b"x")
    assert writer_is_dead(f"{dead.pid}-a.partial") and not writer_is_dead(f"{os.getpid()}-b.partial")
    assert store.clean_temp(older_than_s=3600) == 1
    assert sorted(p.name for p in store.tmp.iterdir()) == [f"{os.getpid()}-b.partial", "legacy.partial"]
