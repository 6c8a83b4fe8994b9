"""SIGKILL the studio mid-save and mid-training; on restart nothing accepted is lost, the run is interrupted,
the worker is gone, and no partial files or dangling blob references remain."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from app.services import Services
from tests.processes import ROOT
from tests.reliability.conftest import make_services

CRASH_POINT_S = 600  # a studio at nice 19 beside other load can take minutes to get there; passing runs never wait
STUDIO = r'''
import json, sys, time
from pathlib import Path
import numpy as np
from app import handlers as h, training
from app.config import AppConfig
from app.services import build_services
from storage.files import BlobStore

data_dir, weights, image, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
services = build_services(AppConfig(data_dir=data_dir, weights=weights), with_demo=False)
session = h.Session()
h.load_case(services, session, [image])
value = h.editor_value(services, session, 2, "MR / auto")
layer = np.zeros((*value["background"].shape[:2], 4), dtype=np.uint8)
layer[20:60, 20:60, 3] = 255
h.add_support(services, session, {**value, "layers": [layer]}, "organ", 2)
if mode == "save":
    h.run_segmentation(services, session, "One-shot")
    session.result.masks[0][:] = False  # the corrected mask: a box, whatever the untrained-ish model said
    session.result.masks[0][6:16, 8:18, :] = True
    print(h.accept(services, session), flush=True)
    (data_dir / "accepted.json").write_text(json.dumps([c.id for c in
        services.storage.corrections.list_for_case(session.case_id, status="accepted")]))

    class Stalled:  # a disk that stops after the first chunk of the next file
        def __init__(self, data):
            self.data, self.sent = data, False
        def read(self, n=-1):
            if self.sent:
                (data_dir / "saving").write_text("partial file open")
                time.sleep(600)
            self.sent = True
            return self.data[: len(self.data) // 2]

    BlobStore.put_bytes = lambda self, data: self.put_stream(Stalled(data))
    session.result.masks[0][:] = False
    session.result.masks[0][4:10, 4:10, :] = True
    h.accept(services, session)
else:
    first = session.case_id
    h.load_case(services, session, [image])  # a second patient: episodes take support and query from two
    h.add_support(services, session, {**value, "layers": [layer]}, "organ", 2)
    run = training.start_training(services, [first, session.case_id], 2000)
    job = services.jobs._jobs[run.id]
    (data_dir / "worker.json").write_text(json.dumps({"pid": job.process.pid, "run": run.id,
                                                      "out": str(job.out_dir)}))
    while True:
        time.sleep(1)
'''


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_for(condition: Callable[[], bool], process: subprocess.Popen[bytes], log: Path, timeout: float,
             worker: tuple[int, Path] | None = None) -> None:
    """Poll until `condition` holds; fail at once (with the log) if the studio, or its training worker
    (pid, worker log), exits first, and after `timeout` s (generous: a loaded 2-core CI machine, studio at nice 19)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, log.read_text(errors="replace")[-3000:]
        if worker is not None:
            assert alive(worker[0]) or condition(), \
                f"the training worker exited before training:\n{worker[1].read_text(errors='replace')[-3000:]}"
        assert time.monotonic() < deadline, \
            f"the studio never reached the crash point in {timeout:.0f} s:\n{log.read_text(errors='replace')[-3000:]}"
        time.sleep(0.2)


def start_studio(tmp_path: Path, weights: Path, mode: str) -> tuple[subprocess.Popen[bytes], Path, Path]:
    image = np.random.default_rng(0).random((24, 24, 5), dtype=np.float32)
    image[6:16, 8:18, :] += 2.0
    path = tmp_path / "case.nii.gz"
    nib.save(nib.Nifti1Image(image, np.eye(4)), str(path))
    data_dir, log = tmp_path / "data", tmp_path / "studio.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out:
        process = subprocess.Popen(["nice", "-n", "19", sys.executable, "-c", STUDIO, str(data_dir), str(weights),
                                    str(path), mode], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    return process, data_dir, log


def kill(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGKILL)
    assert process.wait(30) == -signal.SIGKILL


def partials(data_dir: Path) -> list[Path]:
    return list(data_dir.rglob("*.partial"))


@pytest.fixture
def restarted() -> list[Services]:
    opened: list[Services] = []
    yield opened
    for services in opened:
        services.close()


def test_kill_during_save(tmp_path: Path, tiny_checkpoint: Path, restarted: list[Services]) -> None:
    process, data_dir, log = start_studio(tmp_path, tiny_checkpoint, "save")
    try:
        wait_for(lambda: (data_dir / "saving").exists(), process, log, timeout=CRASH_POINT_S)
        assert partials(data_dir), "the second save should be half-written when the studio dies"
    finally:
        kill(process)
    accepted = json.loads((data_dir / "accepted.json").read_text())
    # the first accept must have folded the corrected box into a prototype before the crash (an all-slice mask
    # would leave none: prototype_tokens drops slices a mask fills completely)
    assert "prototype updated" in log.read_text(errors="replace"), log.read_text(errors="replace")[-3000:]

    services = make_services(data_dir, tiny_checkpoint)  # the studio's own start-up, seconds after the crash
    restarted.append(services)
    storage = services.storage
    case = storage.cases.list()[0]
    assert [c.id for c in storage.corrections.list_for_case(case.id, status="accepted")] == accepted
    mask = storage.corrections.load_mask(accepted[0])
    assert mask[6:16, 8:18, :].all()
    assert storage.prototypes.get("organ", services.model_version) is not None
    assert "organ" in services.segmenter.memory_bank.class_names
    assert partials(data_dir) == [] and storage.maintenance.missing_blobs() == []


def test_kill_during_training(tmp_path: Path, tiny_checkpoint: Path, restarted: list[Services]) -> None:
    process, data_dir, log = start_studio(tmp_path, tiny_checkpoint, "train")
    info: dict[str, object] = {}
    try:
        wait_for(lambda: (data_dir / "worker.json").exists(), process, log, timeout=CRASH_POINT_S)
        info = json.loads((data_dir / "worker.json").read_text())
        out = Path(str(info["out"]))
        wait_for(lambda: (out / "train_log.jsonl").exists() and (out / "train_log.jsonl").stat().st_size > 0,
                 process, log, timeout=CRASH_POINT_S, worker=(int(info["pid"]), out / "worker.log"))  # type: ignore[call-overload]
    finally:
        kill(process)
    worker = int(info["pid"])  # type: ignore[call-overload]
    deadline = time.monotonic() + 15
    while alive(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    try:
        assert not alive(worker), "the training worker outlived the studio"
    finally:
        if alive(worker):
            os.kill(worker, signal.SIGKILL)
    # what a checkpoint save (temp file + rename) cut short by the kill would leave
    (out / "tmpcut.partial").write_bytes(b"half a checkpoint")

    services = make_services(data_dir, tiny_checkpoint)
    restarted.append(services)
    run = services.storage.runs.get(int(info["run"]))  # type: ignore[call-overload]
    assert run.status == "interrupted" and "stopped" in (run.error or "")
    assert services.storage.annotations.list_for_case(services.storage.cases.list()[0].id)
    assert partials(data_dir) == [] and services.storage.maintenance.missing_blobs() == []
    assert not (out / "final.pt").exists()
