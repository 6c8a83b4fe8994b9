"""Atomic file writes (temp file in the target folder + os.replace): a crash never leaves a half-written file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on a temp file in the target folder, then move it over `path` atomically."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(target.suffixes[-2:]) if target.name.lower().endswith(".nii.gz") else target.suffix
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".iris-partial-", suffix=suffix)  # fits any name
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target
