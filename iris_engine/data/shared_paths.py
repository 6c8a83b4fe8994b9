"""Where the shared, read-only labelled data lives (never copied into the project)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def shared_data_dir() -> Path | None:
    """Return $IRIS_SHARED_DATA, else <repo root>/../shared/data if it exists, else None."""
    env = os.environ.get("IRIS_SHARED_DATA")
    if env:
        path = Path(env).expanduser()
        return path if path.is_dir() else None
    default = REPO_ROOT.parent / "shared" / "data"
    return default if default.is_dir() else None
