"""Mask (de)serialisation: .npy bytes compressed with zlib, never pickled."""

from __future__ import annotations

import io
import zlib

import numpy as np

from storage.errors import StorageError


def encode_mask(mask: np.ndarray) -> bytes:
    """Serialise a boolean or integer label array as zlib-compressed .npy bytes."""
    if not isinstance(mask, np.ndarray):
        raise StorageError(f"mask must be a numpy array, got {type(mask).__name__}")
    if mask.dtype != np.bool_ and not np.issubdtype(mask.dtype, np.integer):
        raise StorageError(f"mask must be boolean or integer, got dtype {mask.dtype}")
    if mask.ndim not in (2, 3) or 0 in mask.shape:
        raise StorageError(f"mask must be a non-empty 2-D or 3-D array, got shape {mask.shape}")
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(mask), allow_pickle=False)
    return zlib.compress(buffer.getvalue(), level=6)


def decode_mask(data: bytes) -> np.ndarray:
    try:
        return np.load(io.BytesIO(zlib.decompress(data)), allow_pickle=False)
    except (zlib.error, ValueError, OSError) as exc:
        raise StorageError(f"corrupt mask blob: {exc}") from exc
