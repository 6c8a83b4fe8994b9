"""Shared fixtures of the app handler tests: a tiny random checkpoint and a studio over a temporary data folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import AppConfig
from app.services import build_services
from iris_engine.checkpoint import save_checkpoint
from iris_engine.config import ModelConfig
from iris_engine.model.iris import IrisModel

TINY_APP_MODEL = ModelConfig(encoder_channels=(8, 16, 32), image_size=64, decoder_channels=8, num_heads=2,
                             task_encoder_layers=1, decoder_layers=1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("w") / "tiny.pt", IrisModel(TINY_APP_MODEL))


@pytest.fixture
def services(tmp_path: Path, checkpoint: Path):
    s = build_services(AppConfig(data_dir=tmp_path / "data", weights=checkpoint), with_demo=False)
    yield s
    s.close()
