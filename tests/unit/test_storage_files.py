"""BlobStore (content addressing, atomic writes, temp cleanup) and the mask codec."""

from __future__ import annotations

import hashlib
import io
import zlib
from pathlib import Path

import numpy as np
import pytest

from storage.errors import StorageError
from storage.files import BlobStore, file_sha256
from storage.masks import decode_mask, encode_mask


def test_put_bytes_is_content_addressed_and_idempotent(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    sha, rel = store.put_bytes(b"hello")
    assert sha == hashlib.sha256(b"hello").hexdigest()
    assert rel == f"{sha[:2]}/{sha[2:4]}/{sha}" and store.path_for(sha) == store.root / rel
    assert store.read_bytes(sha) == b"hello" and store.verify(sha) and store.exists(sha)
    assert store.put_bytes(b"hello") == (sha, rel)
    assert list(store.iter_blobs()) == [sha]
    assert list(store.tmp.iterdir()) == []


def test_put_file_and_stream_with_expected_checksum(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    source = tmp_path / "big.bin"
    source.write_bytes(bytes(range(256)) * 10_000)
    sha, _ = store.put_file(source)
    assert sha == file_sha256(source) and store.path_for(sha).read_bytes() == source.read_bytes()
    with pytest.raises(StorageError, match="checksum mismatch"):
        store.put_stream(io.BytesIO(b"other"), expected_sha256=sha.replace(sha[0], "0" if sha[0] != "0" else "1"))
    assert list(store.tmp.iterdir()) == []  # the failed write left no temp file


def test_verify_detects_tampering_and_missing(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    sha, _ = store.put_bytes(b"data")
    store.path_for(sha).write_bytes(b"tampered")
    assert not store.verify(sha)
    store.delete(sha)
    assert not store.verify(sha) and not store.exists(sha)
    with pytest.raises(StorageError, match="missing"):
        store.read_bytes(sha)


@pytest.mark.parametrize("bad", ["../../etc/passwd", "ABC", "g" * 64, "a" * 63])
def test_path_for_refuses_non_digests(tmp_path: Path, bad: str) -> None:
    with pytest.raises(StorageError, match="SHA-256"):
        BlobStore(tmp_path).path_for(bad)


def test_clean_temp_respects_age(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    (store.tmp / "x.partial").write_bytes(b"half")
    assert store.clean_temp(older_than_s=3600) == 0
    assert store.clean_temp() == 1 and list(store.tmp.iterdir()) == []


@pytest.mark.parametrize("mask", [np.eye(5, dtype=bool), np.arange(24, dtype=np.int16).reshape(2, 3, 4)])
def test_mask_codec_round_trip(mask: np.ndarray) -> None:
    data = encode_mask(mask)
    decoded = decode_mask(data)
    assert decoded.dtype == mask.dtype and np.array_equal(decoded, mask)
    assert np.load(io.BytesIO(zlib.decompress(data)), allow_pickle=False).shape == mask.shape


@pytest.mark.parametrize("bad", [np.zeros((3, 3), np.float32), np.zeros(5, bool), np.zeros((0, 3), bool), [[1, 0]]])
def test_mask_codec_refuses_non_masks(bad: object) -> None:
    with pytest.raises(StorageError):
        encode_mask(bad)  # type: ignore[arg-type]


def test_decode_refuses_corrupt_or_pickled_data() -> None:
    with pytest.raises(StorageError, match="corrupt"):
        decode_mask(b"not zlib")
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(StorageError, match="corrupt"):
        decode_mask(zlib.compress(buffer.getvalue()))
