"""Several worker threads writing through the repositories at once (SQLite WAL and PostgreSQL)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from storage import Database, Storage, repositories
from storage.records import CaseMetadata

THREADS = 6
ROUNDS = 8


def _run_all(workers: list[Callable[[], None]]) -> None:
    start = threading.Barrier(len(workers))

    def go(work: Callable[[], None]) -> None:
        start.wait()
        work()

    with ThreadPoolExecutor(len(workers)) as pool:
        for future in [pool.submit(go, w) for w in workers]:
            future.result()  # re-raises any error from a worker


def test_concurrent_writers(db: Database) -> None:
    store = Storage(db)
    case_id = store.cases.add_case(b"volume", CaseMetadata("ct", "ct.nii", (4, 8, 8))).id
    run_id = store.runs.create("r", {}, [case_id]).id
    store.runs.update_status(run_id, "running")

    def worker(n: int) -> Callable[[], None]:
        def work() -> None:
            for i in range(ROUNDS):
                mask = np.zeros((4, 8, 8), bool)
                mask[n % 4, i, :] = True
                store.annotations.add(case_id, f"class-{i % 3}", mask, [n % 4], f"user{n}")
                store.prototypes.upsert("liver", "v1", bytes([n, i]) * 8)
                store.runs.update_progress(run_id, (n * ROUNDS + i) / (THREADS * ROUNDS), {f"t{n}": i})

        return work

    _run_all([worker(n) for n in range(THREADS)])
    total = THREADS * ROUNDS
    assert len(store.annotations.list_for_case(case_id)) == total
    assert [c.name for c in store.classes.list()] == ["class-0", "class-1", "class-2", "liver"]
    assert store.prototypes.get("liver", "v1").update_count == total
    history = store.prototypes.history("liver", "v1")
    assert [h.update_count for h in history] == list(range(1, total))  # every previous value kept, in order
    assert store.runs.get(run_id).metrics == {f"t{n}": ROUNDS - 1 for n in range(THREADS)}
    assert store.maintenance.missing_blobs() == []


def test_reaping_blobs_while_others_reference_them(db: Database) -> None:
    """Deleting annotations and cleaning orphans concurrently never leaves a dangling reference."""
    store = Storage(db)
    case_id = store.cases.add_case(b"volume", CaseMetadata("ct", "ct.nii", (4, 8, 8))).id
    shared = np.ones((4, 8, 8), bool)  # every writer stores the very same blob

    def writer() -> None:
        for _ in range(ROUNDS):
            store.annotations.add(case_id, "liver", shared, [0], "w")

    def reaper() -> None:
        for _ in range(ROUNDS):
            store.annotations.delete(store.annotations.add(case_id, "liver", shared, [1], "r").id)
            store.maintenance.reap(set(db.blobs.iter_blobs()))  # unreferenced blobs, no grace
            store.maintenance.cleanup_orphans(older_than_s=60)

    _run_all([writer, writer, reaper, reaper])
    assert len(store.annotations.list_for_case(case_id)) == 2 * ROUNDS
    assert store.maintenance.missing_blobs() == []
    sha = store.annotations.list_for_case(case_id)[0].mask_sha256
    assert db.blobs.verify(sha)


def test_blob_reaped_between_write_and_commit_is_written_again(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """The race above, forced: a cleaner removes the fresh blob before the writer's transaction."""
    store = Storage(db)
    case_id = store.cases.add_case(b"volume", CaseMetadata("ct", "ct.nii", (4, 8, 8))).id
    real_put, puts = db.blobs.put_bytes, []

    def racing_put(data: bytes) -> tuple[str, str]:
        sha, relpath = real_put(data)
        if not puts:
            assert store.maintenance.reap({sha}) == [sha]  # nothing references it yet
        puts.append(sha)
        return sha, relpath

    monkeypatch.setattr(db.blobs, "put_bytes", racing_put)
    annotation = store.annotations.add(case_id, "liver", np.ones((4, 8, 8), bool), [0], "w")
    assert puts == [annotation.mask_sha256] * 2
    assert db.blobs.verify(annotation.mask_sha256) and store.maintenance.missing_blobs() == []


def test_a_writer_that_keeps_losing_the_race_writes_inside_the_guard(db: Database,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Reapers that win every optimistic try cannot make a write fail: the last try writes under the guard."""
    store = Storage(db)
    case_id = store.cases.add_case(b"volume", CaseMetadata("ct", "ct.nii", (4, 8, 8))).id
    real_put, puts = db.blobs.put_bytes, []

    def racing_put(data: bytes) -> tuple[str, str]:
        sha, relpath = real_put(data)
        if len(puts) < repositories._OPTIMISTIC_BLOB_WRITES:
            assert store.maintenance.reap({sha}) == [sha]
        puts.append(sha)
        return sha, relpath

    monkeypatch.setattr(db.blobs, "put_bytes", racing_put)
    annotation = store.annotations.add(case_id, "liver", np.ones((4, 8, 8), bool), [0], "w")
    assert puts == [annotation.mask_sha256] * (repositories._OPTIMISTIC_BLOB_WRITES + 1)
    assert db.blobs.verify(annotation.mask_sha256) and store.maintenance.missing_blobs() == []
