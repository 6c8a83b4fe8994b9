"""Every repository operation, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timezone
from pathlib import Path

import numpy as np
import pytest

from storage import Database, NotFoundError, Storage, StorageError
from storage.records import CaseMetadata


@pytest.fixture
def store(db: Database) -> Storage:
    return Storage(db)


def _meta(name: str = "ct1", shape: tuple[int, ...] = (4, 8, 8)) -> CaseMetadata:
    return CaseMetadata(
        name=name,
        source_filename=f"{name}.nii.gz",
        shape=shape,
        modality="CT",
        spacing=(2.5, 0.7, 0.7),
        affine=((1.0, 0.0, 0.0, 0.0), (0.0, 1.0, 0.0, 0.0), (0.0, 0.0, 1.0, 0.0), (0.0, 0.0, 0.0, 1.0)),
        orientation="RAS",
    )


def _mask(seed: int = 0, shape: tuple[int, ...] = (4, 8, 8)) -> np.ndarray:
    return np.random.default_rng(seed).random(shape) > 0.5


def _case(store: Storage, name: str = "ct1", content: bytes | None = None) -> int:
    return store.cases.add_case(content or name.encode() * 10, _meta(name)).id


def test_classes_get_or_create_get_list_and_colour(store: Storage) -> None:
    liver = store.classes.get_or_create("liver", "#AA0000")
    assert (liver.name, liver.color) == ("liver", "#aa0000")
    assert store.classes.get_or_create("liver", "#00ff00") == liver  # existing colour kept
    lung = store.classes.get_or_create("left lung")
    assert lung.color.startswith("#") and len(lung.color) == 7
    assert [c.name for c in store.classes.list()] == ["left lung", "liver"]
    assert store.classes.set_color("liver", "#123456").color == "#123456"
    assert store.classes.get("liver").color == "#123456"
    assert liver.created_at.tzinfo == timezone.utc
    with pytest.raises(NotFoundError):
        store.classes.get("spleen")
    with pytest.raises(StorageError, match="colour"):
        store.classes.get_or_create("spleen", "red")
    with pytest.raises(StorageError, match="empty"):
        store.classes.get_or_create("  ")
    assert len(store.classes.list()) == 2


def test_cases_add_from_bytes_and_path_get_list(store: Storage, tmp_path: Path) -> None:
    record = store.cases.add_case(b"volume-bytes", _meta())
    assert record.shape == (4, 8, 8) and record.spacing == (2.5, 0.7, 0.7) and record.orientation == "RAS"
    assert record.affine is not None and record.affine[3] == (0.0, 0.0, 0.0, 1.0)
    assert record.file_path.read_bytes() == b"volume-bytes" and record.size_bytes == 12
    assert store.db.blobs.verify(record.sha256)
    assert record.file_path == store.db.blobs.root / record.sha256[:2] / record.sha256[2:4] / record.sha256
    source = tmp_path / "scan.nii.gz"
    source.write_bytes(b"volume-bytes")
    again = store.cases.add_case(source, _meta("copy"))
    assert again.sha256 == record.sha256 and again.id != record.id  # same content stored once
    assert store.cases.get(record.id) == record
    assert [c.name for c in store.cases.list()] == ["ct1", "copy"]
    with pytest.raises(NotFoundError):
        store.cases.get(999)
    with pytest.raises(StorageError, match="shape"):
        store.cases.add_case(b"x", _meta(shape=(0, 4)))


def test_case_delete_cascades_and_reaps_only_unshared_blobs(store: Storage) -> None:
    first = _case(store, "a")
    second = store.cases.add_case(b"shared", _meta("b")).id
    store.cases.add_case(b"shared", _meta("c"))
    ann = store.annotations.add(first, "liver", _mask(1), [0], "ana")
    pred = store.predictions.add(first, "liver", _mask(2), "one-shot", "v1")
    store.corrections.accept(first, "liver", _mask(3), "ana", prediction_id=pred.id)
    store.annotations.add(second, "liver", _mask(1), [1], "ana")  # same mask bytes as `ann`
    case_path = store.cases.get(first).file_path
    store.cases.delete(first)
    with pytest.raises(NotFoundError):
        store.cases.get(first)
    assert store.annotations.list_for_case(first) == []
    assert store.predictions.list_for_case(first) == [] and store.corrections.list_for_case(first) == []
    assert not case_path.exists()
    assert store.db.blobs.exists(ann.mask_sha256)  # still used by the other case
    store.cases.delete(second)
    assert store.db.blobs.exists(store.cases.list()[0].sha256)  # shared file still used by "c"
    assert store.maintenance.missing_blobs() == []
    with pytest.raises(NotFoundError):
        store.cases.delete(first)


def test_annotations_add_list_get_load_delete(store: Storage) -> None:
    case_id = _case(store)
    labels = np.zeros((4, 8, 8), np.uint8)
    labels[1, 2:5, 2:5] = 3
    ann = store.annotations.add(case_id, "liver", labels, [1, 2], "ana", color="#ff8800")
    assert (ann.class_name, ann.slice_indices, ann.author) == ("liver", (1, 2), "ana")
    assert store.classes.get("liver").color == "#ff8800"
    mask = store.annotations.load_mask(ann.id)
    assert mask.dtype == np.uint8 and np.array_equal(mask, labels)
    other = store.annotations.add(case_id, "spleen", _mask(), [0], "ben")
    assert [a.id for a in store.annotations.list_for_case(case_id)] == [ann.id, other.id]
    assert [a.id for a in store.annotations.list_for_case(case_id, "spleen")] == [other.id]
    assert store.annotations.get(other.id) == other
    store.annotations.delete(ann.id)
    assert [a.id for a in store.annotations.list_for_case(case_id)] == [other.id]
    assert not store.db.blobs.exists(ann.mask_sha256)
    with pytest.raises(NotFoundError):
        store.annotations.get(ann.id)


def test_annotation_rejects_bad_input_without_rows(store: Storage) -> None:
    case_id = _case(store)
    with pytest.raises(StorageError, match="slice"):
        store.annotations.add(case_id, "liver", _mask(), [4], "ana")
    with pytest.raises(NotFoundError):
        store.annotations.add(999, "liver", _mask(), [0], "ana")
    with pytest.raises(StorageError, match="dtype"):
        store.annotations.add(case_id, "liver", np.zeros((4, 4), np.float32), [0], "ana")
    assert store.annotations.list_for_case(case_id) == []
    assert store.classes.list() == []  # the class created inside the failed unit of work rolled back
    assert list(store.db.blobs.iter_blobs()) == [store.cases.get(case_id).sha256]  # failed masks removed


def test_predictions_add_get_list_load(store: Storage) -> None:
    case_id = _case(store)
    pred = store.predictions.add(case_id, "liver", _mask(5), "memory-bank", "v2", {"threshold": 0.4})
    assert (pred.strategy, pred.model_version, pred.params) == ("memory-bank", "v2", {"threshold": 0.4})
    assert store.predictions.get(pred.id) == pred
    assert np.array_equal(store.predictions.load_mask(pred.id), _mask(5))
    assert store.predictions.list_for_case(case_id) == [pred]
    with pytest.raises(NotFoundError):
        store.predictions.add(999, "liver", _mask(), "one-shot", "v1")


def test_corrections_accept_reject_undo_and_feed(store: Storage) -> None:
    case_id = _case(store)
    pred = store.predictions.add(case_id, "liver", _mask(1), "one-shot", "v1")
    edited = store.corrections.accept(case_id, "liver", _mask(2), "ana", prediction_id=pred.id)
    assert (edited.status, edited.strategy, edited.model_version) == ("accepted", "one-shot", "v1")
    assert np.array_equal(store.corrections.load_mask(edited.id), _mask(2))
    manual = store.corrections.accept(case_id, "liver", _mask(3), "ana", model_version="v2")
    other = store.corrections.accept(case_id, "lung", _mask(4), "ben")
    pred2 = store.predictions.add(case_id, "liver", _mask(6), "tuning", "v1")
    rejected = store.corrections.reject(pred2.id, "ana")
    assert rejected.status == "rejected" and rejected.mask_sha256 == pred2.mask_sha256
    assert [c.id for c in store.corrections.feed()] == [edited.id, manual.id, other.id]
    assert [c.id for c in store.corrections.feed("v1")] == [edited.id]
    undone = store.corrections.undo_last(case_id, "liver")
    assert undone is not None and undone.id == manual.id and undone.status == "undone"
    assert store.corrections.undo_last(case_id).id == other.id  # newest of any class
    assert store.corrections.undo_last(case_id, "liver").id == edited.id
    assert store.corrections.undo_last(case_id) is None
    assert store.corrections.feed() == []
    assert [c.id for c in store.corrections.list_for_case(case_id, "rejected")] == [rejected.id]
    assert len(store.corrections.list_for_case(case_id)) == 4
    with pytest.raises(StorageError, match="status"):
        store.corrections.list_for_case(case_id, "maybe")


def test_correction_for_a_prediction_of_another_case_is_refused(store: Storage) -> None:
    a, b = _case(store, "a"), _case(store, "b")
    pred = store.predictions.add(a, "liver", _mask(), "one-shot", "v1")
    with pytest.raises(StorageError, match="not for case"):
        store.corrections.accept(b, "liver", _mask(), "ana", prediction_id=pred.id)
    with pytest.raises(NotFoundError):
        store.corrections.accept(a, "liver", _mask(), "ana", prediction_id=999)
    assert store.corrections.feed() == []


def test_prototypes_upsert_keeps_history(store: Storage) -> None:
    assert store.prototypes.get("liver", "v1") is None
    first = store.prototypes.upsert("liver", "v1", b"\x01" * 16)
    assert (first.update_count, first.embedding) == (1, b"\x01" * 16)
    second = store.prototypes.upsert("liver", "v1", b"\x02" * 16)
    third = store.prototypes.upsert("liver", "v1", b"\x03" * 16, update_count=10, reason="reset")
    assert second.id == first.id and second.update_count == 2 and third.update_count == 10
    assert third.updated_at >= first.updated_at
    history = store.prototypes.history("liver")
    assert [(h.embedding, h.update_count) for h in history] == [(b"\x01" * 16, 1), (b"\x02" * 16, 2)]
    assert [h.reason for h in history] == ["ema-update", "reset"]
    store.prototypes.upsert("liver", "v2", b"\x09" * 16)
    assert store.prototypes.get("liver", "v2").update_count == 1
    assert len(store.prototypes.history("liver", "v2")) == 0 and len(store.prototypes.history("liver", "v1")) == 2
    assert store.prototypes.get("liver", "v1") == third
    assert [p.model_version for p in store.prototypes.list()] == ["v1", "v2"]
    assert [p.model_version for p in store.prototypes.list("v2")] == ["v2"]
    with pytest.raises(StorageError, match="embedding"):
        store.prototypes.upsert("liver", "v1", b"")


def test_models_register_activate(store: Storage, tmp_path: Path) -> None:
    assert store.models.active() is None and store.models.list() == []
    ckpt_a, ckpt_b = tmp_path / "a.pt", tmp_path / "b.pt"
    ckpt_a.write_bytes(b"weights-a")
    ckpt_b.write_bytes(b"weights-b")
    a = store.models.register(ckpt_a)
    b = store.models.register(ckpt_b, name="fine-tuned")
    assert a.name == "a" and b.name == "fine-tuned" and a.path.read_bytes() == b"weights-a"
    assert store.models.register(ckpt_a, name="again") == a
    assert store.models.activate(a.id).is_active
    assert store.models.active() == store.models.get(a.id)
    store.models.activate(b.id)
    assert store.models.active().id == b.id and not store.models.get(a.id).is_active
    assert [m.id for m in store.models.list()] == [a.id, b.id]
    with pytest.raises(NotFoundError):
        store.models.activate(999)
    with pytest.raises(StorageError, match="does not exist"):
        store.models.register(tmp_path / "missing.pt")


def test_training_run_lifecycle(store: Storage, tmp_path: Path) -> None:
    cases = [_case(store, "a"), _case(store, "b")]
    run = store.runs.create("ft-liver", {"lr": 1e-4, "steps": 10}, cases)
    assert (run.status, run.progress, run.case_ids, run.metrics) == ("queued", 0.0, tuple(cases), {})
    with pytest.raises(StorageError, match="not running"):
        store.runs.update_progress(run.id, 0.5)
    running = store.runs.update_status(run.id, "running")
    assert running.started_at is not None and running.finished_at is None
    store.runs.update_progress(run.id, 0.5, {"loss": 0.9})
    assert store.runs.update_progress(run.id, 0.6, {"dice": 0.7}).metrics == {"loss": 0.9, "dice": 0.7}
    with pytest.raises(StorageError, match="progress"):
        store.runs.update_progress(run.id, 1.5)
    assert store.runs.set_log_path(run.id, "logs/run1.txt").log_path == "logs/run1.txt"
    ckpt = tmp_path / "ft.pt"
    ckpt.write_bytes(b"checkpoint")
    done = store.runs.complete(run.id, ckpt, {"dice": 0.8})
    assert (done.status, done.progress, done.metrics["dice"]) == ("succeeded", 1.0, 0.8)
    assert done.checkpoint_path is not None and done.checkpoint_path.read_bytes() == b"checkpoint"
    assert store.models.get(done.model_version_id).name == "ft-liver"
    assert done.finished_at >= done.started_at
    with pytest.raises(StorageError, match="cannot go"):
        store.runs.update_status(run.id, "running")
    with pytest.raises(StorageError, match="not running"):
        store.runs.complete(run.id, ckpt)
    assert store.runs.get(run.id) == done


def test_training_run_failures_cancel_interrupt_and_listing(store: Storage) -> None:
    case_id = _case(store)
    with pytest.raises(NotFoundError, match="unknown cases"):
        store.runs.create("bad", {}, [case_id, 42])
    failed = store.runs.create("f", {}, [case_id])
    store.runs.update_status(failed.id, "running")
    assert store.runs.update_status(failed.id, "failed", error="CUDA OOM").error == "CUDA OOM"
    assert store.runs.update_status(failed.id, "queued").status == "queued"  # retry
    cancelled = store.runs.create("c", {}, [case_id])
    assert store.runs.update_status(cancelled.id, "cancelled").finished_at is not None
    live = store.runs.create("l", {}, [case_id])
    store.runs.update_status(live.id, "running")
    assert store.runs.mark_interrupted_runs() == [live.id]
    assert store.runs.get(live.id).status == "interrupted"
    assert store.runs.mark_interrupted_runs() == []
    assert [r.id for r in store.runs.list()] == [failed.id, cancelled.id, live.id]
    assert [r.id for r in store.runs.list("cancelled")] == [cancelled.id]
    with pytest.raises(StorageError, match="unknown run status"):
        store.runs.update_status(live.id, "exploded")
    with pytest.raises(NotFoundError):
        store.runs.get(999)


def test_maintenance_counts_and_storage_open(store: Storage, db_url: str, tmp_path: Path) -> None:
    case_id = _case(store)
    store.annotations.add(case_id, "liver", _mask(), [0], "ana")
    run = store.runs.create("r", {}, [case_id])
    store.runs.update_status(run.id, "running")
    counts = store.maintenance.row_counts()
    assert counts["cases"] == 1 and counts["annotations"] == 1 and counts["training_runs"] == 1
    assert store.maintenance.missing_blobs() == []
    assert store.maintenance.cleanup_orphans().blobs_removed == []
    store.db.close()
    reopened = Storage.open(db_url, tmp_path / "data")
    try:
        assert reopened.runs.get(run.id).status == "interrupted"
        assert reopened.annotations.list_for_case(case_id)[0].class_name == "liver"
    finally:
        reopened.close()
