"""Training runs in a separate process: export curated slices, start, poll the JSON log, cancel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from storage import Storage
from storage.records import TrainingRunRecord

DATASET = "studio"
LOG_FILE = "train_log.jsonl"
FINAL_FILE = "final.pt"
WORKER_LOG = "worker.log"


@dataclass
class Job:
    """A running worker process and its run folder."""

    run_id: int
    process: subprocess.Popen[bytes]
    out_dir: Path
    iterations: int


def export_slices(root: Path, slices: Iterable[tuple[str, np.ndarray, np.ndarray]], class_names: list[str]) -> int:
    """Write (case id, uint8 image, label map) slices as an MSD-layout 2D dataset; returns the count."""
    folder = root / DATASET
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    training = []
    for case_id, image, labels in slices:
        Image.fromarray(image).save(folder / "imagesTr" / f"{case_id}.png")
        Image.fromarray(labels.astype(np.uint8)).save(folder / "labelsTr" / f"{case_id}.png")
        training.append({"image": f"./imagesTr/{case_id}.png", "label": f"./labelsTr/{case_id}.png"})
    labels = {"0": "background", **{str(i): n for i, n in enumerate(class_names, start=1)}}
    meta = {"name": DATASET, "modality": {"0": "other"}, "labels": labels, "training": training}
    (folder / "dataset.json").write_text(json.dumps(meta, indent=1))
    return len(training)


def read_log(out_dir: Path) -> list[dict[str, float]]:
    """Records of the trainer's JSON-lines log (a half-written last line is skipped)."""
    path = out_dir / LOG_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def clean_run_partials(runs_dir: Path) -> int:
    """Remove half-written files (checkpoint saves are temp + rename) left in run folders by a dead worker."""
    removed = 0
    for path in runs_dir.glob("*/**/*.partial") if runs_dir.is_dir() else []:
        path.unlink(missing_ok=True)
        removed += 1
    return removed


def _tail(path: Path, lines: int = 8) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.is_file() else ""


class TrainingJobs:
    """The worker processes this app started, by run id."""

    def __init__(self) -> None:
        self._jobs: dict[int, Job] = {}
        self._lock = threading.Lock()

    def start(self, storage: Storage, run: TrainingRunRecord, out_dir: Path, init: Path | None,
              iterations: int) -> TrainingRunRecord:
        """Launch `python -m app.train_worker` on the exported data in `out_dir`; the run becomes running."""
        command = [sys.executable, "-m", "app.train_worker", "--out", str(out_dir),
                   "--data-root", str(out_dir / "data"), "--iterations", str(iterations),
                   "--parent-pid", str(os.getpid())]
        if init is not None:
            command += ["--init", str(init)]
        log = (out_dir / WORKER_LOG).open("wb")
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).parent.parent)
        log.close()
        with self._lock:
            self._jobs[run.id] = Job(run.id, process, out_dir, iterations)
        storage.runs.set_log_path(run.id, str(out_dir / LOG_FILE))
        return storage.runs.update_status(run.id, "running")

    def is_running(self, run_id: int) -> bool:
        with self._lock:
            job = self._jobs.get(run_id)
        return job is not None and job.process.poll() is None

    def poll(self, storage: Storage, run_id: int) -> tuple[TrainingRunRecord, list[dict[str, float]]]:
        """Update the stored progress from the log; record success or failure when the process ended."""
        with self._lock:
            job = self._jobs.get(run_id)
        run = storage.runs.get(run_id)
        if job is None:
            return run, read_log(Path(run.log_path).parent) if run.log_path else []
        records = read_log(job.out_dir)
        code = job.process.poll()
        if run.status == "running" and records:
            last = records[-1]
            run = storage.runs.update_progress(run_id, min(1.0, last["iteration"] / max(1, job.iterations)),
                                               {"loss": last["loss"], "iteration": last["iteration"]})
        if code is None or run.status != "running":
            return run, records
        with self._lock:
            self._jobs.pop(run_id, None)
        final = job.out_dir / FINAL_FILE
        if code == 0 and final.is_file():
            summary = job.out_dir / "summary.json"
            metrics = json.loads(summary.read_text()) if summary.is_file() else {}
            run = storage.runs.complete(run_id, final, {k: v for k, v in metrics.items() if k != "checkpoint"})
        else:
            run = storage.runs.update_status(run_id, "failed", f"worker exited with {code}: "
                                             f"{_tail(job.out_dir / WORKER_LOG)}")
        return run, records

    def cancel(self, storage: Storage, run_id: int) -> TrainingRunRecord:
        """Terminate the worker (kill after 10 s) and mark the run cancelled."""
        with self._lock:
            job = self._jobs.pop(run_id, None)
        if job is not None and job.process.poll() is None:
            job.process.terminate()
            try:
                job.process.wait(10)
            except subprocess.TimeoutExpired:
                job.process.kill()
                job.process.wait()
        run = storage.runs.get(run_id)
        if run.status in ("queued", "running"):
            run = storage.runs.update_status(run_id, "cancelled", "cancelled by the user")
        return run

    def cancel_all(self, storage: Storage) -> None:
        with self._lock:
            ids = list(self._jobs)
        for run_id in ids:
            self.cancel(storage, run_id)
