"""Project export/import round trip, into SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from storage import Database, Storage
from storage.records import CaseMetadata
from storage.transfer import export_project, import_project


def _populate(store: Storage) -> None:
    store.classes.get_or_create("liver", "#aa0000")
    store.classes.get_or_create("unused", "#00aa00")
    ct = store.cases.add_case(
        b"ct-volume", CaseMetadata("ct", "ct.nii.gz", (4, 8, 8), "CT", (2.0, 1.0, 1.0), orientation="LPS")
    ).id
    xray = store.cases.add_case(b"x-ray", CaseMetadata("cxr", "cxr.png", (16, 16), "XR")).id
    store.annotations.add(ct, "liver", np.eye(8, dtype=bool)[None].repeat(4, 0), [1, 2], "ana")
    store.annotations.add(xray, "left lung", np.arange(256, dtype=np.uint8).reshape(16, 16), [0], "ben")
    store.prototypes.upsert("liver", "v1", b"\x01" * 32)
    store.prototypes.upsert("liver", "v1", b"\x02" * 32)


def _content(store: Storage) -> dict[str, object]:
    """Everything the archive carries, without database ids."""
    cases = []
    for case in store.cases.list():
        annotations = [
            (a.class_name, a.slice_indices, a.author, a.created_at, store.annotations.load_mask(a.id).tobytes())
            for a in store.annotations.list_for_case(case.id)
        ]
        metadata = (case.name, case.shape, case.spacing, case.modality, case.created_at)
        cases.append((metadata, case.file_path.read_bytes(), annotations))
    return {
        "classes": [(c.name, c.color) for c in store.classes.list()],
        "cases": cases,
        "prototypes": [(p.class_name, p.model_version, p.embedding, p.update_count) for p in store.prototypes.list()],
    }


def test_export_import_round_trip(db: Database, tmp_path: Path) -> None:
    source = Storage(Database(None, tmp_path / "source"))
    _populate(source)
    archive = export_project(source.db, tmp_path / "project.zip")
    assert not list(tmp_path.glob("*.partial"))
    target = Storage(db)
    report = import_project(db, archive)
    assert (report.cases_added, report.annotations_added, report.classes_added, report.prototypes_written) == (
        2,
        2,
        3,
        1,
    )
    assert _content(target) == _content(source)
    assert target.maintenance.missing_blobs() == []
    assert all(db.blobs.verify(c.sha256) for c in target.cases.list())

    again = import_project(db, archive)  # importing twice adds nothing
    assert (again.cases_added, again.cases_reused, again.annotations_added, again.prototypes_written) == (0, 2, 0, 0)
    assert _content(target) == _content(source)
    source.close()


def test_round_trip_of_an_empty_project(db: Database, tmp_path: Path) -> None:
    archive = export_project(db, tmp_path / "empty.zip")
    report = import_project(db, archive)
    assert report.cases_added == 0 and Storage(db).maintenance.row_counts()["cases"] == 0
