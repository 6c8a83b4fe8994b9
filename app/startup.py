"""Start-up checks of a studio process: one studio per data folder, a patient local reachability check."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import IO

import httpx
from gradio import networking

LOCK_FILE = "studio.lock"
REACHABLE_WAIT_S = 180.0


class AlreadyRunning(RuntimeError):
    """Another studio process holds the data folder."""


def patient_url_ok(url: str, wait_s: float = REACHABLE_WAIT_S) -> bool:
    """Gradio's own check that the server answers on localhost, without its 3 s clock: on a busy machine the first
    answer can take longer, and Gradio then refuses to start ('localhost is not accessible')."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            if httpx.head(url, timeout=30, verify=False).status_code in (200, 401, 301, 302, 303, 307, 308):
                return True
        except (httpx.ConnectError, httpx.TimeoutException):
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)


def install_patient_url_check() -> None:
    networking.url_ok = patient_url_ok


def lock_data_dir(data_dir: Path) -> IO[str]:
    """Hold an exclusive lock on the data folder for this process's life (released when the process ends, even
    killed); raises AlreadyRunning when another studio holds it."""
    import fcntl

    data_dir.mkdir(parents=True, exist_ok=True)
    handle = (data_dir / LOCK_FILE).open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as error:
        handle.seek(0)
        owner = handle.read().strip() or "unknown"
        handle.close()
        raise AlreadyRunning(f"another IRIS Studio (process {owner}) is already using the data folder {data_dir}; "
                             "stop it first, or start this one with another --data-dir") from error
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle
