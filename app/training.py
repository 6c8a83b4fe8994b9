"""Training-tab handlers: curated cases, launching/polling/cancelling a fine-tuning run, switching weights."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from app import display
from app.handlers import HandlerError
from app.jobs import export_slices
from app.services import Services
from iris_engine.preprocess import to_canonical
from storage.records import TrainingRunRecord

MAX_SLICES_PER_CASE = 48


def curated_cases(services: Services) -> list[tuple[str, int]]:
    """(label, id) of cases with accepted corrections or annotations."""
    choices = []
    for case in services.storage.cases.list():
        accepted = len(services.storage.corrections.list_for_case(case.id, status="accepted"))
        annotated = len(services.storage.annotations.list_for_case(case.id))
        if accepted or annotated:
            choices.append((f"{case.id}: {case.name} ({accepted} accepted, {annotated} annotations)", case.id))
    return choices


def case_slices(services: Services, case_id: int, names: list[str]) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Labelled axial slices of a case: all slices of accepted masks (newest per class), annotated slices only."""
    volume = services.case_volume(case_id)
    canon, transform = to_canonical(volume)
    labels = np.zeros(canon.shape, dtype=np.uint8)
    known = np.zeros(canon.shape[2] if canon.ndim == 3 else 1, dtype=bool)
    newest = {c.class_name: c for c in services.storage.corrections.list_for_case(case_id, status="accepted")}
    for name, correction in newest.items():
        mask = transform.apply(services.storage.corrections.load_mask(correction.id).astype(bool))
        labels[mask] = names.index(name) + 1
        known[:] = True
    for annotation in services.storage.annotations.list_for_case(case_id):
        mask = transform.apply(services.storage.annotations.load_mask(annotation.id).astype(bool))
        labels[mask] = names.index(annotation.class_name) + 1
        known |= mask.reshape(-1, known.size).any(axis=0) if canon.ndim == 3 else mask.any()
    rows = np.flatnonzero(known & (labels.reshape(-1, known.size) > 0).any(axis=0)) if canon.ndim == 3 else [0]
    if len(rows) > MAX_SLICES_PER_CASE:
        rows = rows[np.linspace(0, len(rows) - 1, MAX_SLICES_PER_CASE).round().astype(int)]
    window = display.default_window(volume.modality)
    for z in rows:
        image = display.window_to_uint8(display.view_slice(canon.array, "axial", int(z)), window)
        yield f"case{case_id}_z{int(z):04d}", image, display.view_slice(labels, "axial", int(z))


def start_training(services: Services, case_ids: Sequence[int], iterations: int) -> TrainingRunRecord:
    """Export the curated cases and fine-tune the current weights on them in a worker process."""
    if not case_ids:
        raise HandlerError("pick at least one curated case")
    if any(services.jobs.is_running(r.id) for r in services.storage.runs.list(status="running")):
        raise HandlerError("a training run is already in progress; cancel it or wait")
    ids = [int(i) for i in case_ids]
    names = sorted({c.class_name for i in ids for c in services.storage.corrections.list_for_case(i, "accepted")}
                   | {a.class_name for i in ids for a in services.storage.annotations.list_for_case(i)})
    config = {"iterations": int(iterations), "init": str(services.weights_path or ""), "classes": names}
    run = services.storage.runs.create(f"studio-{time.strftime('%Y%m%d-%H%M%S')}", config, ids)
    out_dir = services.config.data_dir / "runs" / f"run{run.id:04d}"
    count = export_slices(out_dir / "data", (s for i in ids for s in case_slices(services, i, names)), names)
    if count < 2:  # episodes take support and query from different slices: one slice cannot train
        reason = "no labelled slices" if count == 0 else "only one labelled slice"
        services.storage.runs.update_status(run.id, "cancelled", f"{reason} in the chosen cases")
        raise HandlerError(f"the chosen cases have {reason}; training needs at least two (annotate another slice "
                           "or accept a mask)")
    return services.jobs.start(services.storage, run, out_dir, services.weights_path, int(iterations))


def poll_training(services: Services, run_id: int | None) -> tuple[str, list[list[Any]]]:
    """Status line and loss curve rows [iteration, loss] of a run."""
    if run_id is None:
        return "No training run yet.", []
    run, records = services.jobs.poll(services.storage, int(run_id))
    status = f"Run {run.id} ({run.name}): **{run.status}**, {run.progress:.0%}"
    if records:
        status += f", loss {records[-1]['loss']:.4f} at iteration {records[-1]['iteration']}"
    if run.error:
        status += f"\n\n```\n{run.error}\n```"
    return status, [[r["iteration"], r["loss"]] for r in records]


def latest_run_id(services: Services) -> int | None:
    runs = services.storage.runs.list()
    return runs[-1].id if runs else None


def cancel_training(services: Services, run_id: int | None) -> str:
    if run_id is None:
        raise HandlerError("no training run to cancel")
    run = services.jobs.cancel(services.storage, int(run_id))
    return f"Run {run.id} is {run.status}."


def activate_model(services: Services, run_id: int | None) -> str:
    """Register a succeeded run's checkpoint as the active model and switch the app to it."""
    if run_id is None:
        raise HandlerError("no training run selected")
    run = services.storage.runs.get(int(run_id))
    if run.status != "succeeded" or run.model_version_id is None:
        raise HandlerError(f"run {run.id} is {run.status}; only a succeeded run's weights can be used")
    model = services.storage.models.activate(run.model_version_id)
    services.load_weights(Path(model.path))
    if services.warning:
        raise HandlerError(services.warning)
    return f"Now using the weights of run {run.id} (model `{services.model_version}`)."
