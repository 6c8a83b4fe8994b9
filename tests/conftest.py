"""Shared test setup: single-threaded, seeded torch so CPU tests are fast and reproducible."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _deterministic_torch():
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency of the engine
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)
