"""MemoryBank: class embeddings keyed by class name, EMA-updated, retrievable without a support.

A thin class (vessels, ribs: thinner than `InferenceConfig.fine_scale_thickness` on the model grid) also keeps a
fine entry, computed from supports read at twice the model's input size, so that retrieval can segment it at
that size as one-shot does (`iris_engine.input_scale`).
"""

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
from iris_engine.input_scale import FINE_SCALE


def _checked(class_name: str, tokens: torch.Tensor) -> torch.Tensor:
    if tokens.ndim != 2:
        raise IrisInputError(f"memory bank entries are (T, C), got {tuple(tokens.shape)}")
    if not torch.isfinite(tokens).all():
        raise IrisInputError(f"embedding for '{class_name}' contains NaN or Inf")
    return tokens.detach().float().cpu()


def _ema(previous: torch.Tensor | None, class_name: str, tokens: torch.Tensor, momentum: float) -> torch.Tensor:
    """The EMA of a stored entry (None: none yet, the tokens as they are) with new tokens."""
    if previous is None:
        return tokens.clone()
    if previous.shape != tokens.shape:
        raise IrisInputError(
            f"embedding shape {tuple(tokens.shape)} differs from stored {tuple(previous.shape)} for '{class_name}'"
        )
    return momentum * previous + (1.0 - momentum) * tokens


class MemoryBank:
    """Stores one (T, C) embedding per class, and a fine one for thin classes; `update` is an exponential
    moving average."""

    def __init__(self, momentum: float = 0.999):
        if not 0.0 <= momentum < 1.0:
            raise IrisInputError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum
        self._embeddings: dict[str, torch.Tensor] = {}
        self._fine: dict[str, torch.Tensor] = {}
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

    def has_fine(self, class_name: str) -> bool:
        """Whether the class keeps a fine entry (it is thin: retrieved at twice the input size)."""
        return class_name in self._fine

    def update(self, class_name: str, tokens: torch.Tensor, momentum: float | None = None,
               fine_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """EMA update (new = m * old + (1 - m) * tokens); the first update stores tokens as they are.
        `fine_tokens` (the same support read at twice the input size) update the fine entry alike."""
        tokens = _checked(class_name, tokens)
        fine = None if fine_tokens is None else _checked(class_name, fine_tokens)
        m = self.momentum if momentum is None else momentum
        updated = _ema(self._embeddings.get(class_name), class_name, tokens, m)
        if fine is not None:
            self._fine[class_name] = _ema(self._fine.get(class_name), class_name, fine, m)
        self._embeddings[class_name] = updated
        self._counts[class_name] = self._counts.get(class_name, 0) + 1
        return updated

    def update_from_embedding(self, embedding: TaskEmbedding, momentum: float | None = None) -> None:
        for name, tokens in zip(embedding.class_names, embedding.tokens, strict=True):
            self.update(name, tokens, momentum)

    def input_scale(self, class_names: list[str] | str) -> int:
        """FINE_SCALE where every class keeps a fine entry (as one-shot: all thin), else 1."""
        names = [class_names] if isinstance(class_names, str) else list(class_names)
        return FINE_SCALE if names and all(n in self._fine for n in names) else 1

    def get(self, class_names: list[str] | str, model_version: str = "", scale: int = 1) -> TaskEmbedding:
        """Retrieval by name; `scale` FINE_SCALE takes the fine entries (for queries read at that size)."""
        names = [class_names] if isinstance(class_names, str) else list(class_names)
        missing = [name for name in names if name not in self._embeddings]
        if missing:
            known = ", ".join(self.class_names) or "none"
            raise IrisInputError(f"no memory-bank entry for {missing}; stored classes: {known}")
        if scale not in (1, FINE_SCALE):
            raise IrisInputError(f"memory-bank entries exist at 1x and {FINE_SCALE}x the input size, not {scale}x")
        store = self._fine if scale == FINE_SCALE else self._embeddings
        coarse = [name for name in names if name not in store]
        if coarse:
            raise IrisInputError(f"no fine memory-bank entry for {coarse} (not thin); retrieve them at 1x")
        return TaskEmbedding(torch.stack([store[n] for n in names]), names, model_version)

    def nearest(self, tokens: torch.Tensor, top_k: int = 1) -> list[tuple[str, float]]:
        """Retrieval by cosine similarity of flattened (T, C) embeddings: [(class, similarity)]."""
        if not self._embeddings:
            raise IrisInputError("the memory bank is empty")
        names = self.class_names
        stored = torch.stack([self._embeddings[n].flatten() for n in names])
        similarity = F.cosine_similarity(stored, tokens.detach().float().cpu().flatten()[None], dim=1)
        order = similarity.argsort(descending=True)[:top_k]
        return [(names[i], float(similarity[i])) for i in order]

    def entry_bytes(self, class_name: str, model_version: str = "") -> bytes:
        """One class's entries as stored per prototype: a one-class `TaskEmbedding` blob, plus its fine tokens."""
        if class_name not in self._embeddings:
            raise IrisInputError(f"no memory-bank entry for '{class_name}'")
        payload = {"tokens": self._embeddings[class_name][None],
                   "class_names": [class_name], "model_version": model_version}
        if class_name in self._fine:
            payload["fine_tokens"] = self._fine[class_name][None]
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        return buffer.getvalue()

    def set_entry(self, class_name: str, data: bytes, count: int) -> None:
        """Replace a class's entries with an `entry_bytes` (or plain one-class `TaskEmbedding`) blob."""
        try:
            payload = torch.load(io.BytesIO(data), weights_only=True)
            tokens = _checked(class_name, payload["tokens"][0])
            fine = payload.get("fine_tokens")
            fine = None if fine is None else _checked(class_name, fine[0])
        except (KeyError, IndexError, TypeError, AttributeError, RuntimeError, EOFError, ValueError,
                pickle.UnpicklingError) as error:
            raise IrisInputError(f"not a valid memory-bank entry: {error}") from error
        self._embeddings[class_name] = tokens
        if fine is None:
            self._fine.pop(class_name, None)
        else:
            self._fine[class_name] = fine
        self._counts[class_name] = count

    def remove(self, class_name: str) -> None:
        """Drop a class's entries."""
        for store in (self._embeddings, self._fine, self._counts):
            store.pop(class_name, None)

    def state_dict(self) -> dict[str, object]:
        return {"momentum": self.momentum, "embeddings": dict(self._embeddings), "counts": dict(self._counts),
                "fine_embeddings": dict(self._fine)}

    @classmethod
    def from_state_dict(cls, state: dict[str, object]) -> MemoryBank:
        bank = cls(float(state["momentum"]))  # type: ignore[arg-type]
        bank._embeddings = {k: v.float() for k, v in dict(state["embeddings"]).items()}  # type: ignore[arg-type]
        bank._counts = {k: int(v) for k, v in dict(state["counts"]).items()}  # type: ignore[arg-type]
        fine = dict(state.get("fine_embeddings", {}))  # type: ignore[call-overload]
        bank._fine = {k: v.float() for k, v in fine.items() if k in bank._embeddings}
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
