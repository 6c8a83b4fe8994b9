"""import_project refuses bad archives and leaves the database and blob store untouched."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from storage import ArchiveError, Database, Storage
from storage.records import CaseMetadata
from storage.transfer import export_project, import_project

Entries = dict[str, bytes]


@pytest.fixture(scope="module")
def good_archive(tmp_path_factory: pytest.TempPathFactory) -> Entries:
    root = tmp_path_factory.mktemp("source")
    store = Storage(Database(None, root))
    case_id = store.cases.add_case(b"ct-volume", CaseMetadata("ct", "ct.nii", (4, 8, 8))).id
    store.annotations.add(case_id, "liver", np.ones((4, 8, 8), bool), [3], "ana")
    store.prototypes.upsert("liver", "v1", b"\x05" * 16)
    path = export_project(store.db, root / "project.zip")
    store.close()
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _manifest(entries: Entries, change: Callable[[dict], None]) -> Entries:
    manifest = json.loads(entries["manifest.json"])
    change(manifest)
    return {**entries, "manifest.json": json.dumps(manifest).encode()}


def _first_blob(entries: Entries) -> str:
    return next(name for name in sorted(entries) if name.startswith("blobs/"))


def _case_blob(entries: Entries) -> str:
    return "blobs/" + json.loads(entries["manifest.json"])["cases"][0]["sha256"]


BAD: dict[str, tuple[Callable[[Entries], Entries], str]] = {
    "traversal": (lambda e: {**e, "../evil.txt": b"x"}, "path traversal"),
    "nested-traversal": (lambda e: {**e, "blobs/../../evil": b"x"}, "path traversal"),
    "absolute": (lambda e: {**e, "/etc/evil": b"x"}, "absolute"),
    "drive-letter": (lambda e: {**e, "C:/evil": b"x"}, "absolute"),
    "backslash": (lambda e: {**e, "blobs\\evil": b"x"}, "path traversal"),
    "unexpected-entry": (lambda e: {**e, "notes.txt": b"x"}, "unexpected entry"),
    "missing-manifest": (lambda e: {k: v for k, v in e.items() if k != "manifest.json"}, "no manifest"),
    "missing-file": (lambda e: {k: v for k, v in e.items() if k != _case_blob(e)}, "missing blob files"),
    "wrong-checksum": (lambda e: {**e, _case_blob(e): b"tampered"}, "wrong checksum"),
    "wrong-version": (lambda e: _manifest(e, lambda m: m.update(version=2)), "version 2 is not supported"),
    "wrong-format": (lambda e: _manifest(e, lambda m: m.update(format="other")), "not an IRIS Studio project"),
    "manifest-not-json": (lambda e: {**e, "manifest.json": b"{nope"}, "not valid JSON"),
    "size-mismatch": (
        lambda e: _manifest(e, lambda m: m["blobs"].update({_case_blob(e)[6:]: 1})),
        "manifest says 1",
    ),
    "unknown-class": (
        lambda e: _manifest(e, lambda m: m["cases"][0]["annotations"][0].update(class_name="spleen")),
        "unknown class",
    ),
    "slice-out-of-range": (
        lambda e: _manifest(e, lambda m: m["cases"][0]["annotations"][0].update(slice_indices=[4])),
        "bad slice indices",
    ),
    "bad-digest": (lambda e: _manifest(e, lambda m: m["cases"][0].update(sha256="../../x")), "not in the archive"),
    "naive-timestamp": (
        lambda e: _manifest(e, lambda m: m["cases"][0].update(created_at="2026-01-01T00:00:00")),
        "bad timestamp",
    ),
    "unlisted-blob": (lambda e: {**e, "blobs/" + "0" * 64: b""}, "not in the manifest"),
}


def _write(path: Path, entries: Entries) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(zipfile.ZipInfo(name), data)
    return path


def _state(db: Database) -> tuple[dict[str, int], set[str]]:
    files = {str(p.relative_to(db.data_dir)) for p in db.data_dir.rglob("*") if p.is_file() and p.suffix != ".db"}
    return Storage(db).maintenance.row_counts(), {f for f in files if not f.endswith(("-wal", "-shm"))}


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    """A project with work in it; every refusal test checks it is left exactly as it was."""
    db = Database(None, tmp_path_factory.mktemp("target"))
    store = Storage(db)
    case_id = store.cases.add_case(b"existing", CaseMetadata("mine", "mine.nii", (2, 4, 4))).id
    store.annotations.add(case_id, "kidney", np.zeros((2, 4, 4), bool), [0], "me")
    yield db
    db.close()


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_archive_is_refused_untouched(kind: str, good_archive: Entries, target: Database, tmp_path: Path) -> None:
    mutate, message = BAD[kind]
    archive = _write(tmp_path / f"{kind}.zip", mutate(good_archive))
    before = _state(target)
    with pytest.raises(ArchiveError, match=message):
        import_project(target, archive)
    assert _state(target) == before


def test_oversized_entry_is_refused(good_archive: Entries, target: Database, tmp_path: Path) -> None:
    archive = _write(tmp_path / "big.zip", {**good_archive, _case_blob(good_archive): b"\0" * 4096})
    before = _state(target)
    with pytest.raises(ArchiveError, match="over the limit"):
        import_project(target, archive, max_entry_bytes=1024)
    with pytest.raises(ArchiveError, match="over the limit"):
        import_project(target, archive, max_total_bytes=2048)
    assert _state(target) == before


def test_not_a_zip_and_duplicates_are_refused(good_archive: Entries, target: Database, tmp_path: Path) -> None:
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"definitely not a zip")
    before = _state(target)
    with pytest.raises(ArchiveError, match="cannot read"):
        import_project(target, junk)
    duplicated = _write(tmp_path / "dup.zip", good_archive)
    with zipfile.ZipFile(duplicated, "a") as archive, pytest.warns(UserWarning, match="Duplicate"):
        archive.writestr(_first_blob(good_archive), b"second copy")
    with pytest.raises(ArchiveError, match="duplicate"):
        import_project(target, duplicated)
    corrupt = _write(tmp_path / "crc.zip", good_archive)
    raw = bytearray(corrupt.read_bytes())
    at = raw.index(b"ct-volume")  # stored uncompressed: flip a byte of the case file's content
    raw[at] ^= 0xFF
    corrupt.write_bytes(bytes(raw))
    with pytest.raises(ArchiveError, match="corrupt project archive"):
        import_project(target, corrupt)
    assert _state(target) == before


def test_the_unmodified_archive_imports(good_archive: Entries, tmp_path: Path) -> None:
    db = Database(None, tmp_path / "fresh")
    report = import_project(db, _write(tmp_path / "good.zip", good_archive))
    assert report.cases_added == 1 and report.annotations_added == 1 and report.prototypes_written == 1
    db.close()
