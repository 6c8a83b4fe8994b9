"""Content-addressed blob store on disk with atomic (temp file + rename) writes."""

from __future__ import annotations

import hashlib
import io
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from storage.errors import StorageError

_SHA256 = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20
PARTIAL_SUFFIX = ".partial"


def is_sha256(value: str) -> bool:
    return bool(_SHA256.fullmatch(value))


class BlobStore:
    """Files named by their SHA-256 under root/ab/cd/<sha>; partial writes live in root/tmp."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.tmp = self.root / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)

    def relpath(self, sha256: str) -> str:
        if not is_sha256(sha256):
            raise StorageError(f"not a SHA-256 hex digest: {sha256!r}")
        return f"{sha256[:2]}/{sha256[2:4]}/{sha256}"

    def path_for(self, sha256: str) -> Path:
        return self.root / self.relpath(sha256)

    def exists(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()

    def put_bytes(self, data: bytes) -> tuple[str, str]:
        """Store data; returns (sha256, relpath). Idempotent for identical content."""
        return self.put_stream(io.BytesIO(data))

    def put_file(self, path: Path | str) -> tuple[str, str]:
        with open(path, "rb") as src:
            return self.put_stream(src)

    def put_stream(self, src: BinaryIO, expected_sha256: str | None = None) -> tuple[str, str]:
        """Copy a stream into the store through a temp file, fsync it, then rename it into place."""
        tmp = self.tmp / f"{os.getpid()}-{uuid.uuid4().hex}{PARTIAL_SUFFIX}"
        digest = hashlib.sha256()
        try:
            with open(tmp, "wb") as out:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            sha = digest.hexdigest()
            if expected_sha256 is not None and sha != expected_sha256:
                raise StorageError(f"checksum mismatch: expected {expected_sha256}, got {sha}")
            dest = self.path_for(sha)
            if dest.is_file():
                os.utime(dest)  # refresh the grace period of cleanup for a blob being re-referenced
            else:
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return sha, self.relpath(sha)

    def read_bytes(self, sha256: str) -> bytes:
        path = self.path_for(sha256)
        if not path.is_file():
            raise StorageError(f"blob {sha256} is missing from {self.root}")
        return path.read_bytes()

    def verify(self, sha256: str) -> bool:
        """True if the blob exists and its content still hashes to its name."""
        path = self.path_for(sha256)
        if not path.is_file():
            return False
        return file_sha256(path) == sha256

    def delete(self, sha256: str) -> None:
        self.path_for(sha256).unlink(missing_ok=True)

    def iter_blobs(self) -> Iterator[str]:
        for path in self.root.glob("??/??/*"):
            if path.is_file() and is_sha256(path.name):
                yield path.name

    def age_seconds(self, sha256: str) -> float:
        return time.time() - self.path_for(sha256).stat().st_mtime

    def clean_temp(self, older_than_s: float = 0.0) -> int:
        """Remove partial files left by interrupted writers; returns how many were removed.

        Files older than older_than_s go, and so, whatever their age, do those whose writer process (its pid
        leads the name) is no longer alive on this machine.
        """
        removed = 0
        now = time.time()
        for path in self.tmp.glob(f"*{PARTIAL_SUFFIX}"):
            try:
                if now - path.stat().st_mtime >= older_than_s or writer_is_dead(path.name):
                    path.unlink()
                    removed += 1
            except FileNotFoundError:  # renamed into place by its writer meanwhile
                continue
        return removed


def writer_is_dead(name: str) -> bool:
    """True if a partial file's name starts with the pid of a process that no longer exists (not ours)."""
    head = name.split("-", 1)[0]
    if not head.isdigit() or int(head) == os.getpid():
        return False
    try:
        os.kill(int(head), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError, OSError):
        return False
    return False


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as src:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
