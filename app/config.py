"""`AppConfig`: where the studio keeps its data, which weights it loads and how it listens."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

SHIPPED_WEIGHTS = Path(__file__).resolve().parent.parent / "assets" / "weights" / "iris2d.pt"


def _env_int(name: str, default: int, scale: int = 1) -> int:
    """A positive integer from the environment (times `scale`), else the default."""
    value = os.environ.get(name)
    if not value:
        return default
    try:
        number = int(float(value) * scale)
    except ValueError as error:
        raise ValueError(f"${name} must be a number, got {value!r}") from error
    if number <= 0:
        raise ValueError(f"${name} must be positive, got {value!r}")
    return number


def default_upload_limit() -> int:
    """$IRIS_MAX_UPLOAD_MB (MiB), else 1 GiB."""
    return _env_int("IRIS_MAX_UPLOAD_MB", 1024**3, 1024**2)


def default_max_voxels() -> int:
    """$IRIS_MAX_VOXELS, else 64 Mi voxels."""
    return _env_int("IRIS_MAX_VOXELS", 64 * 1024**2)


def default_data_dir() -> Path:
    """$IRIS_DATA_DIR, else ~/.iris_studio."""
    return Path(os.environ.get("IRIS_DATA_DIR") or Path.home() / ".iris_studio")


@dataclass
class AppConfig:
    """Settings of one studio process; `weights=None` means the active registered model, else the shipped one."""

    data_dir: Path = field(default_factory=default_data_dir)
    db_url: str | None = None
    weights: Path | None = None
    device: str = "cpu"
    host: str = "127.0.0.1"
    port: int = 7860
    upload_limit_bytes: int = field(default_factory=default_upload_limit)
    max_voxels: int = field(default_factory=default_max_voxels)
    ema_momentum: float = 0.9
    author: str = "studio-user"
    train_iterations: int = 200

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).expanduser()
        if self.weights is None and os.environ.get("IRIS_WEIGHTS"):
            self.weights = Path(os.environ["IRIS_WEIGHTS"])
