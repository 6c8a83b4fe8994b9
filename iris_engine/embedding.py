"""`TaskEmbedding`: the compact, serialisable description of a segmentation task."""

from __future__ import annotations

import io
import pickle
from dataclasses import asdict, dataclass

import torch

from iris_engine.correspondence import CorrespondenceConfig, SupportPixels
from iris_engine.errors import IrisInputError


@dataclass
class TaskEmbedding:
    """Task tokens per class (K, m + 1, C), the class names and the model version they came from; supports read
    at the fine input scale also keep sampled pixel features for the correspondence vote (`correspondence.py`)
    and per-class logit offsets calibrated on the supports (`calibration.py`)."""

    tokens: torch.Tensor
    class_names: list[str]
    model_version: str = ""
    support_pixels: SupportPixels | None = None
    logit_offsets: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.tokens.ndim != 3:
            raise IrisInputError(f"task tokens must be (K, T, C), got {tuple(self.tokens.shape)}")
        if len(self.class_names) != self.tokens.shape[0]:
            raise IrisInputError(
                f"{len(self.class_names)} class names for {self.tokens.shape[0]} task embeddings"
            )
        if self.logit_offsets is not None and tuple(self.logit_offsets.shape) != (self.tokens.shape[0],):
            shape = tuple(self.logit_offsets.shape)
            raise IrisInputError(f"logit offsets must be ({self.tokens.shape[0]},), got {shape}")

    @property
    def num_classes(self) -> int:
        return self.tokens.shape[0]

    def thresholds(self) -> list[float] | None:
        """Per-class thresholds calibrated on the supports (`calibration.py`), or None where not calibrated."""
        return None if self.logit_offsets is None else torch.sigmoid(self.logit_offsets.float()).tolist()

    def to(self, device: torch.device | str) -> TaskEmbedding:
        pixels = None if self.support_pixels is None else self.support_pixels.to(device)
        offsets = None if self.logit_offsets is None else self.logit_offsets.to(device)
        return TaskEmbedding(self.tokens.to(device), list(self.class_names), self.model_version, pixels, offsets)

    def select(self, class_names: list[str]) -> TaskEmbedding:
        """The embeddings of a subset of classes, in the given order."""
        missing = [name for name in class_names if name not in self.class_names]
        if missing:
            raise IrisInputError(f"classes not in this task embedding: {missing}")
        index = [self.class_names.index(name) for name in class_names]
        pixels = None if self.support_pixels is None else self.support_pixels.select(index)
        offsets = None if self.logit_offsets is None else self.logit_offsets[index]
        return TaskEmbedding(self.tokens[index], list(class_names), self.model_version, pixels, offsets)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        payload = {"tokens": self.tokens.detach().cpu(), "class_names": self.class_names,
                   "model_version": self.model_version}
        if self.support_pixels is not None:
            payload["support_pixels"] = {"foreground": self.support_pixels.foreground.cpu(),
                                         "background": self.support_pixels.background.cpu(),
                                         "config": asdict(self.support_pixels.config)}
        if self.logit_offsets is not None:
            payload["logit_offsets"] = self.logit_offsets.detach().cpu()
        torch.save(payload, buffer)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> TaskEmbedding:
        try:
            payload = torch.load(io.BytesIO(data), weights_only=True)
            pixels = payload.get("support_pixels")
            support = None if pixels is None else SupportPixels(
                pixels["foreground"], pixels["background"], CorrespondenceConfig(**pixels["config"]))
            return cls(payload["tokens"], list(payload["class_names"]), str(payload["model_version"]), support,
                       payload.get("logit_offsets"))
        except (KeyError, TypeError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as error:
            raise IrisInputError(f"not a valid task embedding: {error}") from error
