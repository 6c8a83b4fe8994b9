"""Episode batches drawn in background worker processes, for an accelerator that one sampling core cannot feed.

Each worker holds a forked copy of one EpisodeSampler (its superpixels computed up front, shared copy-on-write)
with its own random streams, seeded by (seed, worker, batches served before this loader started): a resumed run
draws new episodes, though not the ones a single-process run would have drawn.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from iris_engine.data.episodes import EpisodeBatch, EpisodeSampler


class _EpisodeStream(IterableDataset):
    """Endless batches from a per-worker reseeded copy of the sampler."""

    def __init__(self, sampler: EpisodeSampler, batch_size: int, seed: int, offset: int):
        self.sampler, self.batch_size, self.seed, self.offset = sampler, batch_size, seed, offset

    def __iter__(self) -> Iterator[EpisodeBatch]:
        info = get_worker_info()
        worker = 0 if info is None else info.id
        self.sampler.rng = np.random.default_rng([self.seed, worker, self.offset])
        self.sampler.torch_gen = torch.Generator().manual_seed(int(self.sampler.rng.integers(2**62)))
        while True:
            yield self.sampler.sample_batch(self.batch_size)


class ParallelEpisodes:
    """An EpisodeSource whose batches come from `workers` processes (batch size fixed at construction)."""

    def __init__(self, sampler: EpisodeSampler, batch_size: int, workers: int, seed: int = 0):
        if workers < 1:
            raise ValueError("workers must be >= 1")
        sampler.superpixels.fill(sampler.pseudo_rows, workers)
        self.sampler, self.batch_size, self.workers, self.seed = sampler, batch_size, workers, seed
        self.served = 0
        self._batches: Iterator[EpisodeBatch] | None = None

    def sample_batch(self, batch_size: int) -> EpisodeBatch:
        if batch_size != self.batch_size:
            raise ValueError(f"this source draws batches of {self.batch_size}, not {batch_size}")
        if self._batches is None:
            stream = _EpisodeStream(self.sampler, batch_size, self.seed, self.served)
            self._batches = iter(DataLoader(stream, batch_size=None, num_workers=self.workers, prefetch_factor=4,
                                            persistent_workers=True, multiprocessing_context="fork"))
        self.served += 1
        return next(self._batches)

    def get_state(self) -> dict[str, Any]:
        return {"served": self.served}

    def set_state(self, state: dict[str, Any]) -> None:
        self.served = int(state.get("served", 0))
