"""A writer SIGKILLed mid-file-write or before committing leaves no row pointing to a missing file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from storage import Database, Storage
from storage.records import CaseMetadata

ROOT = Path(__file__).resolve().parents[2]

WRITER = """
import sys, time
from pathlib import Path
import numpy as np
from sqlalchemy import event
from sqlalchemy.orm import Session
from storage import Database, Storage
from storage.records import CaseMetadata

url, data_dir, mode, arg = sys.argv[1:5]
store = Storage(Database(url, data_dir))
if mode == "before-commit":
    @event.listens_for(Session, "before_commit")
    def _hang(session):
        Path(data_dir, "ready").write_text("rows flushed, blob in place, commit pending")
        time.sleep(60)
    store.annotations.add(int(arg), "liver", np.ones((4, 8, 8), bool), [1], "crash")
else:
    store.cases.add_case(Path(arg), CaseMetadata("big", "big.nii", (4, 8, 8)))
"""


def _start(url: str, data_dir: Path, mode: str, arg: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", WRITER, url, str(data_dir), mode, arg], env=env)


def _wait_for(condition: object, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert process.poll() is None, "writer exited early"
        assert time.monotonic() < deadline, "writer never reached the crash point"
        time.sleep(0.02)


def _kill(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL


def _files(data_dir: Path) -> set[str]:
    return {str(p.relative_to(data_dir)) for p in (data_dir / "blobs").rglob("*") if p.is_file()}


def test_writer_killed_before_commit(db_url: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    store = Storage(Database(db_url, data_dir))
    case_id = store.cases.add_case(b"volume", CaseMetadata("ct", "ct.nii", (4, 8, 8))).id
    kept = store.annotations.add(case_id, "lung", np.zeros((4, 8, 8), bool), [0], "ana")
    before = _files(data_dir)
    writer = _start(db_url, data_dir, "before-commit", str(case_id))
    _wait_for(lambda: (data_dir / "ready").exists(), writer)
    _kill(writer)
    store.close()

    reopened = Storage(Database(db_url, data_dir))
    try:
        assert reopened.maintenance.missing_blobs() == []
        assert [a.id for a in reopened.annotations.list_for_case(case_id)] == [kept.id]
        assert [c.name for c in reopened.classes.list()] == ["lung"]  # "liver" was never committed
        orphans = _files(data_dir) - before
        assert len(orphans) == 1  # the mask blob, renamed into place but never referenced
        report = reopened.maintenance.cleanup_orphans()
        assert report.temp_files_removed == 0 and len(report.blobs_removed) == 1
        assert _files(data_dir) == before
        assert np.array_equal(reopened.annotations.load_mask(kept.id), np.zeros((4, 8, 8), bool))
    finally:
        reopened.close()


def test_writer_killed_mid_file_write(db_url: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    store = Storage(Database(db_url, data_dir))
    before = _files(data_dir)
    fifo = tmp_path / "upload.fifo"
    os.mkfifo(fifo)
    writer = _start(db_url, data_dir, "mid-write", str(fifo))
    with open(fifo, "wb") as pipe:
        pipe.write(os.urandom(3 << 20))  # more than one chunk, and never the end of the file
        pipe.flush()
        partials = lambda: [p for p in (data_dir / "blobs" / "tmp").glob("*.partial") if p.stat().st_size]  # noqa: E731
        _wait_for(partials, writer)
        _kill(writer)
    store.close()

    reopened = Storage(Database(db_url, data_dir))
    try:
        assert reopened.cases.list() == [] and reopened.maintenance.missing_blobs() == []
        assert len(_files(data_dir) - before) == 1  # the partial temp file
        report = reopened.maintenance.cleanup_orphans()
        assert report.temp_files_removed == 1 and report.blobs_removed == []
        assert _files(data_dir) == before
    finally:
        reopened.close()
