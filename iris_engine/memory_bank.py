"""MemoryBank: class embeddings keyed by class name, EMA-updated, retrievable without a support."""

from __future__ import annotations

import io
import os
import pickle
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from iris_engine.embedding import TaskEmbedding
from iris_engine.errors import IrisInputError


class MemoryBank:
    """Stores one (T, C) embedding per class; `update` is an exponential moving average."""

    def __init__(self, momentum: float = 0.999):
        if not 0.0 <= momentum < 1.0:
            raise IrisInputError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum
        self._embeddings: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}

    def __contains__(self, class_name: str) -> bool:
        return class_name in self._embeddings

    def __len__(self) -> int:
        return len(self._embeddings)

    @property
    def class_names(self) -> list[str]:
        return sorted(self._embeddings)

    def count(self, class_name: str) -> int:
        return self._counts.get(class_name, 0)

    def update(self, class_name: str, tokens: torch.Tensor, momentum: float | None = None) -> torch.Tensor:
        """EMA update (new = m * old + (1 - m) * tokens); the first update stores tokens as they are."""
        if tokens.ndim != 2:
            raise IrisInputError(f"memory bank entries are (T, C), got {tuple(tokens.shape)}")
        if not torch.isfinite(tokens).all():
            raise IrisInputError(f"embedding for '{class_name}' contains NaN or Inf")
        tokens = tokens.detach().float().cpu()
        m = self.momentum if momentum is None else momentum
        previous = self._embeddings.get(class_name)
        if previous is None:
            updated = tokens.clone()
        elif previous.shape != tokens.shape:
            raise IrisInputError(
                f"embedding shape {tuple(tokens.shape)} differs from stored {tuple(previous.shape)} for '{class_name}'"
            )
        else:
            updated = m * previous + (1.0 - m) * tokens
        self._embeddings[class_name] = updated
        self._counts[class_name] = self._counts.get(class_name, 0) + 1
        return updated

    def update_from_embedding(self, embedding: TaskEmbedding, momentum: float | None = None) -> None:
        for name, tokens in zip(embedding.class_names, embedding.tokens, strict=True):
            self.update(name, tokens, momentum)

    def get(self, class_names: list[str] | str, model_version: str = "") -> TaskEmbedding:
        """Retrieval by name."""
        names = [class_names] if isinstance(class_names, str) else list(class_names)
        missing = [name for name in names if name not in self._embeddings]
        if missing:
            known = ", ".join(self.class_names) or "none"
            raise IrisInputError(f"no memory-bank entry for {missing}; stored classes: {known}")
        return TaskEmbedding(torch.stack([self._embeddings[n] for n in names]), names, model_version)

    def nearest(self, tokens: torch.Tensor, top_k: int = 1) -> list[tuple[str, float]]:
        """Retrieval by cosine similarity of flattened (T, C) embeddings: [(class, similarity)]."""
        if not self._embeddings:
            raise IrisInputError("the memory bank is empty")
        names = self.class_names
        stored = torch.stack([self._embeddings[n].flatten() for n in names])
        similarity = F.cosine_similarity(stored, tokens.detach().float().cpu().flatten()[None], dim=1)
        order = similarity.argsort(descending=True)[:top_k]
        return [(names[i], float(similarity[i])) for i in order]

    def state_dict(self) -> dict[str, object]:
        return {"momentum": self.momentum, "embeddings": dict(self._embeddings), "counts": dict(self._counts)}

    @classmethod
    def from_state_dict(cls, state: dict[str, object]) -> MemoryBank:
        bank = cls(float(state["momentum"]))  # type: ignore[arg-type]
        bank._embeddings = {k: v.float() for k, v in dict(state["embeddings"]).items()}  # type: ignore[arg-type]
        bank._counts = {k: int(v) for k, v in dict(state["counts"]).items()}  # type: ignore[arg-type]
        return bank

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        torch.save(self.state_dict(), buffer)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> MemoryBank:
        try:
            return cls.from_state_dict(torch.load(io.BytesIO(data), weights_only=True))
        except (KeyError, TypeError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as error:
            raise IrisInputError(f"not a valid memory bank: {error}") from error

    def save(self, path: str | Path) -> Path:
        """Atomic write: temp file in the same folder, then rename."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".partial")
        with os.fdopen(fd, "wb") as handle:
            handle.write(self.to_bytes())
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> MemoryBank:
        return cls.from_bytes(Path(path).read_bytes())
