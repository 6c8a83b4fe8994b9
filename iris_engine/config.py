"""Configuration dataclasses, one per concern. Saved inside checkpoints with a format version."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

CHECKPOINT_FORMAT_VERSION = 1


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of IrisModel; everything needed to rebuild it from a checkpoint."""

    spatial_dims: int = 2
    in_channels: int = 1
    image_size: int = 128
    encoder_channels: tuple[int, ...] = (16, 32, 64, 128)
    decoder_channels: int = 16
    num_query_tokens: int = 10
    num_heads: int = 4
    task_encoder_layers: int = 2
    decoder_layers: int = 2

    @property
    def embed_dim(self) -> int:
        return self.encoder_channels[-1]

    @property
    def num_task_tokens(self) -> int:
        return self.num_query_tokens + 1

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown ModelConfig fields: {sorted(unknown)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)


@dataclass(frozen=True)
class PreprocessConfig:
    """How raw intensities become model input (the same for training slices and inference).

    CT in Hounsfield units is clipped to the paper's window; everything else to a percentile window
    (0.5-99.5, the window the shipped model was trained with; the paper's 2-98 is a config change away).
    """

    ct_window: tuple[float, float] = (-990.0, 500.0)
    percentile_window: tuple[float, float] = (0.5, 99.5)


@dataclass(frozen=True)
class InferenceConfig:
    """Defaults of the inference strategies."""

    threshold: float = 0.5
    memory_momentum: float = 0.999
    tuning_steps: int = 20
    tuning_lr: float = 1e-2
    batch_size: int = 8
    device: str = "cpu"


@dataclass
class TrainConfig:
    """Episodic training recipe (scaled down from the paper for a 2-core CPU)."""

    iterations: int = 3000
    batch_size: int = 8
    supports_per_episode: int = 1
    queries_per_episode: int = 1
    max_classes_per_episode: int = 3
    lr: float = 2e-3
    weight_decay: float = 1e-5
    warmup_iterations: int = 200
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    synthetic_fraction: float = 0.3
    seed: int = 0
    checkpoint_every: int = 250
    log_every: int = 25
    memory_momentum: float = 0.999
    num_threads: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
