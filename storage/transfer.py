"""Export and import a whole project (classes, cases, annotation masks, prototypes) as a zip."""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
import zipfile
import zlib
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from storage.database import Database
from storage.errors import ArchiveError
from storage.files import is_sha256
from storage.records import ImportReport, ProjectSnapshot
from storage.repositories import Maintenance, ProjectRepository

FORMAT = "iris-studio-project"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 64 << 20
DEFAULT_MAX_ENTRY_BYTES = 8 << 30
DEFAULT_MAX_TOTAL_BYTES = 64 << 30
_BLOB_ENTRY = re.compile(r"blobs/([0-9a-f]{64})")
_COLOR = re.compile(r"#[0-9a-f]{6}")
_CHUNK = 1 << 20
ANNOTATION_KEYS = {"class_name", "slice_indices", "mask_sha256", "author", "created_at"}


def export_project(db: Database, path: Path | str) -> Path:
    """Write the project to a zip (through a temp file renamed into place); returns its path."""
    path = Path(path)
    snapshot = ProjectRepository(db).snapshot()
    embeddings = {hashlib.sha256(p["embedding"]).hexdigest(): p["embedding"] for p in snapshot.prototypes}
    shas = sorted(snapshot.blob_shas())
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "exported_at": datetime.now(timezone.utc).isoformat(),
        "classes": snapshot.classes,
        "cases": snapshot.cases,
        "prototypes": [
            {k: v for k, v in p.items() if k != "embedding"}
            | {"embedding_sha256": hashlib.sha256(p["embedding"]).hexdigest()}
            for p in snapshot.prototypes
        ],
        "blobs": {sha: db.blobs.path_for(sha).stat().st_size for sha in shas}
        | {sha: len(data) for sha, data in embeddings.items()},
    }
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(MANIFEST, json.dumps(manifest, indent=1, sort_keys=True, default=_isoformat))
            for sha in shas:
                archive.write(db.blobs.path_for(sha), f"blobs/{sha}")
            for sha, data in embeddings.items():
                archive.writestr(f"blobs/{sha}", data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def import_project(
    db: Database,
    path: Path | str,
    max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
) -> ImportReport:
    """Validate the whole archive, then add its blobs and rows; a bad archive changes nothing."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError) as exc:
        raise ArchiveError(f"cannot read project archive {path}: {exc}") from exc
    with archive:
        try:
            snapshot = _validate(archive, max_entry_bytes, max_total_bytes)
        except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError, zlib.error) as exc:
            raise ArchiveError(f"corrupt project archive {path}: {exc}") from exc
        before = set(db.blobs.iter_blobs())
        try:
            for sha in sorted(snapshot.blob_shas()):
                with archive.open(f"blobs/{sha}") as src:
                    db.blobs.put_stream(src, expected_sha256=sha)
            return ProjectRepository(db).import_snapshot(snapshot)
        except BaseException:
            Maintenance(db).reap(snapshot.blob_shas() - before)
            raise


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ArchiveError(message)


def _check_names(archive: zipfile.ZipFile, max_entry_bytes: int, max_total_bytes: int) -> None:
    names = [info.filename for info in archive.infolist()]
    _require(len(names) == len(set(names)), "archive has duplicate entry names")
    for info in archive.infolist():
        name = info.filename
        pure = PurePosixPath(name)
        _require(not pure.is_absolute() and not re.match(r"[A-Za-z]:", name), f"absolute entry name {name!r}")
        _require("\\" not in name and ".." not in pure.parts, f"path traversal in entry name {name!r}")
        _require(name == MANIFEST or bool(_BLOB_ENTRY.fullmatch(name)), f"unexpected entry {name!r}")
        _require(info.file_size <= max_entry_bytes, f"entry {name!r} is {info.file_size} bytes, over the limit")
    total = sum(info.file_size for info in archive.infolist())
    _require(total <= max_total_bytes, f"archive expands to {total} bytes, over the limit")
    _require(MANIFEST in names, "archive has no manifest.json")


def _read_limited(archive: zipfile.ZipFile, name: str, limit: int) -> tuple[str, int, bytes | None]:
    """Stream an entry; returns (sha256, size, content if small). Refuses more bytes than limit."""
    digest, size, parts = hashlib.sha256(), 0, []
    with archive.open(name) as src:
        while chunk := src.read(_CHUNK):
            size += len(chunk)
            _require(size <= limit, f"entry {name!r} is larger than the limit")
            digest.update(chunk)
            if size <= MAX_MANIFEST_BYTES:
                parts.append(chunk)
    return digest.hexdigest(), size, b"".join(parts) if size <= MAX_MANIFEST_BYTES else None


def _validate(archive: zipfile.ZipFile, max_entry_bytes: int, max_total_bytes: int) -> ProjectSnapshot:
    _check_names(archive, max_entry_bytes, max_total_bytes)
    _, _, raw = _read_limited(archive, MANIFEST, min(max_entry_bytes, MAX_MANIFEST_BYTES))
    try:
        manifest = json.loads(raw or b"")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArchiveError(f"manifest.json is not valid JSON: {exc}") from exc
    _require(isinstance(manifest, dict), "manifest.json must hold an object")
    _require(manifest.get("format") == FORMAT, f"not an IRIS Studio project (format {manifest.get('format')!r})")
    version = manifest.get("version")
    _require(version == FORMAT_VERSION, f"manifest version {version!r} is not supported (expected {FORMAT_VERSION})")

    blobs = manifest.get("blobs")
    _require(isinstance(blobs, dict), "manifest 'blobs' must be an object")
    for sha, size in blobs.items():
        _require(is_sha256(sha) and _is_int(size) and size >= 0, f"bad blob entry {sha!r}: {size!r}")
    entries = {m.group(1) for n in archive.namelist() if (m := _BLOB_ENTRY.fullmatch(n))}
    _require(not (missing := sorted(set(blobs) - entries)), f"archive is missing blob files {missing}")
    _require(not (extra := sorted(entries - set(blobs))), f"archive has blob files not in the manifest {extra}")

    classes = _check_classes(manifest.get("classes"))
    cases = _check_cases(manifest.get("cases"), classes, set(blobs))
    prototypes = _check_prototypes(manifest.get("prototypes"), classes, set(blobs))

    embeddings: dict[str, bytes] = {}
    wanted = {p["embedding_sha256"] for p in prototypes}
    for sha, size in blobs.items():
        actual, actual_size, content = _read_limited(archive, f"blobs/{sha}", max_entry_bytes)
        _require(actual == sha, f"blob {sha} has the wrong checksum ({actual})")
        _require(actual_size == size, f"blob {sha} is {actual_size} bytes, manifest says {size}")
        if sha in wanted:
            _require(content is not None, f"prototype embedding {sha} is too large")
            embeddings[sha] = content or b""
    snapshot_prototypes = [
        {k: v for k, v in p.items() if k != "embedding_sha256"} | {"embedding": embeddings[p["embedding_sha256"]]}
        for p in prototypes
    ]
    snapshot = ProjectSnapshot(
        classes=[{"name": n, "color": c} for n, c in classes.items()], cases=cases, prototypes=snapshot_prototypes
    )
    _require(snapshot.blob_shas() | wanted == set(blobs), "manifest lists blobs that nothing refers to")
    return snapshot


def _isoformat(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot put {type(value).__name__} in a manifest")


def _timestamp(value: Any, where: str) -> datetime:
    """A timezone-aware ISO-8601 timestamp from the manifest."""
    try:
        parsed = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        parsed = None
    _require(parsed is not None and parsed.tzinfo is not None, f"{where}: bad timestamp {value!r}")
    return parsed  # type: ignore[return-value]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_str(value: Any, max_len: int = 1000) -> bool:
    return isinstance(value, str) and 0 < len(value) <= max_len


def _check_classes(items: Any) -> dict[str, str]:
    _require(isinstance(items, list), "manifest 'classes' must be a list")
    classes: dict[str, str] = {}
    for item in items:
        _require(isinstance(item, dict) and set(item) == {"name", "color"}, f"bad class entry {item!r}")
        _require(_is_str(item["name"], 200) and item["name"] not in classes, f"bad class name {item['name']!r}")
        _require(isinstance(item["color"], str) and bool(_COLOR.fullmatch(item["color"])), f"bad colour {item!r}")
        classes[item["name"]] = item["color"]
    return classes


def _numbers(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)


def _check_cases(items: Any, classes: dict[str, str], blobs: set[str]) -> list[dict[str, Any]]:
    _require(isinstance(items, list), "manifest 'cases' must be a list")
    keys = {
        *("name", "source_filename", "modality", "shape", "spacing", "affine", "orientation", "sha256"),
        *("created_at", "annotations"),
    }
    for case in items:
        _require(isinstance(case, dict) and set(case) == keys, f"bad case entry keys {sorted(case)}")
        name = case["name"]
        _require(_is_str(name, 500) and _is_str(case["source_filename"]), f"bad case names in {name!r}")
        _require(case["modality"] is None or _is_str(case["modality"], 50), f"case {name!r}: bad modality")
        _require(case["orientation"] is None or _is_str(case["orientation"], 10), f"case {name!r}: bad orientation")
        shape = case["shape"]
        _require(_numbers(shape) and 2 <= len(shape) <= 4, f"case {name!r}: bad shape {shape!r}")
        _require(all(_is_int(n) and n > 0 for n in shape), f"case {name!r}: bad shape {shape!r}")
        _require(case["spacing"] is None or _numbers(case["spacing"]), f"case {name!r}: bad spacing")
        affine = case["affine"]
        _require(affine is None or (isinstance(affine, list) and all(map(_numbers, affine))), f"case {name!r}: affine")
        _require(case["sha256"] in blobs, f"case {name!r}: file {case['sha256']!r} not in the archive")
        _require(isinstance(case["annotations"], list), f"case {name!r}: 'annotations' must be a list")
        depth = shape[0] if len(shape) == 3 else 1
        for ann in case["annotations"]:
            _require(
                isinstance(ann, dict) and set(ann) == ANNOTATION_KEYS,
                f"case {name!r}: bad annotation entry",
            )
            _require(ann["class_name"] in classes, f"case {name!r}: unknown class {ann['class_name']!r}")
            slices = ann["slice_indices"]
            _require(
                isinstance(slices, list) and all(_is_int(i) and 0 <= i < depth for i in slices),
                f"case {name!r}: bad slice indices {slices!r}",
            )
            _require(ann["mask_sha256"] in blobs, f"case {name!r}: mask {ann['mask_sha256']!r} not in the archive")
            _require(_is_str(ann["author"], 200), f"case {name!r}: bad author")
            ann["created_at"] = _timestamp(ann["created_at"], f"case {name!r}: annotation")
        case["created_at"] = _timestamp(case["created_at"], f"case {name!r}")
    return items


def _check_prototypes(items: Any, classes: dict[str, str], blobs: set[str]) -> list[dict[str, Any]]:
    _require(isinstance(items, list), "manifest 'prototypes' must be a list")
    seen = set()
    for p in items:
        keys = {"class_name", "model_version", "update_count", "embedding_sha256"}
        _require(isinstance(p, dict) and set(p) == keys, "bad prototype entry")
        _require(p["class_name"] in classes, f"prototype for unknown class {p['class_name']!r}")
        _require(_is_str(p["model_version"], 200), f"bad prototype model version {p['model_version']!r}")
        _require(_is_int(p["update_count"]) and p["update_count"] >= 0, "bad prototype update count")
        _require(p["embedding_sha256"] in blobs, "prototype embedding not in the archive")
        key = (p["class_name"], p["model_version"])
        _require(key not in seen, f"duplicate prototype {key}")
        seen.add(key)
    return items
