"""Keep freed memory in the process for CPU-bound torch work.

glibc's malloc serves every block above 128 KiB (a few MiB once its threshold adapts) with a fresh `mmap` and returns
it to the kernel on free, so each training step or volume pass faults in the same pages again; on the virtual
machines this project runs on those faults took 13-50 % of a training process's CPU time. Raising the mmap and
trim thresholds makes freed blocks go back to the heap and be reused (`benchmarks/benchmark_allocator.py` measures
both side by side). The price is that the heap keeps up to `trim_threshold_bytes` of freed memory.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
OPT_OUT_VARIABLE = "IRIS_MALLOC_DEFAULTS"  # set to 1: leave glibc's allocator as it is


@dataclass(frozen=True)
class AllocatorConfig:
    """glibc malloc thresholds set by `keep_freed_memory` (`mallopt` takes a C int, so at most 2 GiB - 1)."""

    mmap_threshold_bytes: int = 1 << 30  # blocks below this come from the heap, reused after free
    trim_threshold_bytes: int = 1 << 30  # free memory at the heap's top kept up to this

    def __post_init__(self) -> None:
        for name in ("mmap_threshold_bytes", "trim_threshold_bytes"):
            if not 0 < getattr(self, name) < 2**31:
                raise ValueError(f"{name} must be in 1 .. 2**31 - 1 (a C int), got {getattr(self, name)}")


def keep_freed_memory(config: AllocatorConfig | None = None) -> bool:
    """Set the thresholds for this process; False (nothing changed) without glibc or when opted out."""
    config = config or AllocatorConfig()
    if os.environ.get(OPT_OUT_VARIABLE, "") not in ("", "0"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, TypeError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return (mallopt(M_MMAP_THRESHOLD, config.mmap_threshold_bytes) == 1
            and mallopt(M_TRIM_THRESHOLD, config.trim_threshold_bytes) == 1)
