"""Shared fixtures of the reliability tests: a tiny checkpoint, app services, before/after snapshots, servers."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from app.config import AppConfig
from app.services import Services, build_services
from iris_engine.checkpoint import save_checkpoint
from iris_engine.config import ModelConfig
from iris_engine.model.iris import IrisModel
from tests.processes import free_port, start_studio, stop, wait_http

TINY = ModelConfig(encoder_channels=(8, 16, 32), image_size=64, decoder_channels=8, num_heads=2,
                   task_encoder_layers=1, decoder_layers=1)
UPLOAD_LIMIT = 64 * 1024**2
VOXEL_LIMIT = 8 * 1024**2
VOLATILE = ("-shm",)  # SQLite's shared-memory index changes on every read; it holds no data


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny model with fixed weights: what it predicts is the same in every run."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = IrisModel(TINY)
    return save_checkpoint(tmp_path_factory.mktemp("weights") / "tiny.pt", model)


def make_services(data_dir: Path, weights: Path, **overrides: object) -> Services:
    config = AppConfig(data_dir=data_dir, weights=weights, upload_limit_bytes=UPLOAD_LIMIT, max_voxels=VOXEL_LIMIT)
    for key, value in overrides.items():
        setattr(config, key, value)
    return build_services(config, with_demo=False)


@pytest.fixture(scope="module")
def module_services(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Iterator[Services]:
    services = make_services(tmp_path_factory.mktemp("studio") / "data", tiny_checkpoint)
    yield services
    services.close()


def tree_digest(root: Path) -> dict[str, str]:
    """SHA-256 of every file under root (relative path -> digest), volatile SQLite index files left out."""
    digests = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.name.endswith(VOLATILE):
            digests[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def snapshot(services: Services) -> tuple[dict[str, int], dict[str, str]]:
    return services.storage.maintenance.row_counts(), tree_digest(services.config.data_dir)


USER, PASSWORD = "clinician", "s3cret-pass"
SERVER_UPLOAD_MB = 1


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Iterator[tuple[str, Path]]:
    """run_app.py bound to 0.0.0.0 with a login, the demo case and a 1 MiB upload limit; spoken to on 127.0.0.1."""
    folder = tmp_path_factory.mktemp("server")
    port = free_port()
    log = folder / "server.log"
    process = start_studio(["--host", "0.0.0.0", "--port", str(port), "--auth", f"{USER}:{PASSWORD}", "--data-dir",
                         str(folder / "data"), "--weights", str(tiny_checkpoint), "--max-upload-mb",
                         str(SERVER_UPLOAD_MB)], log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/config", process, log)
        yield url, log
    finally:
        stop(process)
