"""Helpers for tests that run the studio (or another server) in a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_studio(args: list[str], log: Path, env: dict[str, str] | None = None,
                 niceness: int | None = None) -> subprocess.Popen[bytes]:
    """run_app.py in a child process (without the caller's IRIS_AUTH / IRIS_WEIGHTS), output in `log`."""
    environment = {k: v for k, v in os.environ.items() if k not in ("IRIS_AUTH", "IRIS_WEIGHTS")}
    environment |= {"GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1", **(env or {})}
    prefix = [] if niceness is None else ["nice", "-n", str(niceness)]
    with log.open("wb") as out:
        return subprocess.Popen([*prefix, sys.executable, str(ROOT / "run_app.py"), *args], stdout=out,
                                stderr=subprocess.STDOUT, env=environment, cwd=ROOT)


def wait_http(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 240) -> None:
    """Until the URL answers at all (any HTTP status counts); fails with the server's own output when it dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=5)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            assert process.poll() is None, f"the studio died:\n{log.read_text(errors='replace')[-4000:]}"
            time.sleep(0.5)
    raise AssertionError(f"{url} never answered in {timeout} s:\n{log.read_text(errors='replace')[-4000:]}")


def stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate a child process, killing it if it does not exit within 20 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
