"""Configuration dataclasses, one per concern. Saved inside checkpoints with a format version."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from iris_engine.calibration import CalibrationConfig
from iris_engine.correspondence import CorrespondenceConfig
from iris_engine.errors import IrisInputError

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
    similarity_path: bool = False
    prior_size: int = 32
    histogram_bins: int = 32
    region_grid: int = 4
    fine_class_path: bool = False  # the class path continued to full size with the encoder's skips

    def __post_init__(self) -> None:
        if self.decoder_channels < 1:
            raise IrisInputError(f"decoder_channels (--decoder-channels) must be >= 1, got {self.decoder_channels}")

    @property
    def embed_dim(self) -> int:
        return self.encoder_channels[-1]

    @property
    def num_iris_tokens(self) -> int:
        """The IRIS task tokens: one foreground token plus the m learnable query tokens."""
        return self.num_query_tokens + 1

    @property
    def num_task_tokens(self) -> int:
        """All tokens of a class embedding: the IRIS tokens, then the support-context tokens (v2)."""
        return self.num_iris_tokens + (ContextLayout.of(self).num_tokens if self.similarity_path else 0)

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
class ContextLayout:
    """Where each part of the support context (v2) sits in a class embedding, after the IRIS tokens.

    Per class, C-dimensional tokens (zero-padded): the masked foreground and background prototypes of every
    encoder level, `regions` regional foreground prototypes at the bottleneck, one token of region weights,
    one token with the foreground and background intensity histograms, and the support mask at
    `prior_size` per axis, flattened over as many tokens as it needs.
    """

    start: int
    levels: int
    regions: int
    histogram_bins: int
    prior_size: int
    prior_tokens: int
    spatial_dims: int

    @classmethod
    def of(cls, config: ModelConfig) -> ContextLayout:
        dim = config.embed_dim
        regions = config.region_grid**config.spatial_dims
        if regions > dim or 2 * config.histogram_bins > dim:
            raise ValueError(f"region_grid and histogram_bins too large for embed_dim {dim}")
        prior_values = config.prior_size**config.spatial_dims
        return cls(
            start=config.num_iris_tokens,
            levels=len(config.encoder_channels),
            regions=regions,
            histogram_bins=config.histogram_bins,
            prior_size=config.prior_size,
            prior_tokens=-(-prior_values // dim),
            spatial_dims=config.spatial_dims,
        )

    @property
    def prototypes(self) -> slice:
        return slice(self.start, self.start + 2 * self.levels)

    @property
    def region_prototypes(self) -> slice:
        return slice(self.prototypes.stop, self.prototypes.stop + self.regions)

    @property
    def region_weights(self) -> int:
        return self.region_prototypes.stop

    @property
    def histogram(self) -> int:
        return self.region_weights + 1

    @property
    def prior(self) -> slice:
        return slice(self.histogram + 1, self.histogram + 1 + self.prior_tokens)

    @property
    def num_tokens(self) -> int:
        return self.prior.stop - self.start


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
    # queries read at twice the input size (a thin structure) on the CPU: one at a time, since at 256 px a batch of
    # 8 no longer stays in cache (2 cores, bf16: 0.074-0.083 s per slice at batch 1, 0.098-0.100 s at 8)
    fine_batch_size: int = 1
    device: str = "cpu"
    backend: str = "auto"  # query path: "eager" PyTorch, "bf16" PyTorch under bfloat16 autocast, "onnx" Runtime, or
    # "auto": bf16 on a CPU with native bfloat16 when `cpu_bf16`, else ONNX for CPU volumes (`onnx_runtime.py`)
    cpu_bf16: bool = True  # False keeps float32 on every CPU
    onnx_min_queries: int = 32
    fine_scale_thickness: float = 3.5  # model-grid pixels: thinner support structures run at 2x the input size; 0 off
    correspondence: CorrespondenceConfig = field(default_factory=CorrespondenceConfig)  # the vote at 2x
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)  # the support's threshold at 2x
    # a thin structure's volume: the 2x pass on every fine_volume_stride-th slice and the last, the slices between
    # filled linearly in z (training patients, SegTHOR oesophagus and trachea, 16 volumes: volume Dice 0.4705 at
    # stride 1, 0.4676 at 3, 0.4562 at 4; a 128^3 volume about 3x faster); 1: every slice
    fine_volume_stride: int = 3
    # ... or fewer, so that the slices read lie at most this far apart (validated: 2.0-2.5 mm slices at stride 3)
    fine_volume_max_gap_mm: float = 7.5

    def __post_init__(self) -> None:
        if min(self.batch_size, self.fine_batch_size, self.fine_volume_stride) < 1 or self.fine_volume_max_gap_mm <= 0:
            raise ValueError("batch_size, fine_batch_size and fine_volume_stride must be >= 1, "
                             "fine_volume_max_gap_mm > 0")


# what `TrainConfig.trainable` may train: the parameter-name prefixes of each part (every other weight is frozen)
TRAINABLE_PARTS: dict[str, tuple[str, ...]] = {
    "all": ("",),
    "fine_class_path": ("decoder.fine_up.", "decoder.fine_projection."),
}


@dataclass
class TrainConfig:
    """Episodic training recipe (scaled down from the paper for a 2-core CPU).

    v2 mix: synthetic and superpixel episodes (`superpixel_fraction`) plus real-label episodes, of which
    `same_volume_fraction` (3D sets) pair slices of one volume, `self_pair_fraction` query the support slice itself
    (augmented on its own) and `task_augment_prob` are task-augmented. `prior_dropout` of the episodes (v2) are
    segmented with the support-mask prior flattened to its mean, so that the support's features must be read.
    `trainable` "fine_class_path" trains only the decoder's full-size class path (`ModelConfig.fine_class_path`)
    with every other weight frozen: a warm start can then change its source's output only through that path.
    The v1 recipe is synthetic_fraction=0.3 with the other three at 0 and ModelConfig(similarity_path=False).
    `low_res_fraction` of the batches are averaged down to half the image size, so that one model serves
    both sizes (with `fine_thin_only`, the full-size ones on thin targets only).
    """

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
    synthetic_fraction: float = 0.1
    superpixel_fraction: float = 0.45
    same_volume_fraction: float = 0.35
    self_pair_fraction: float = 0.0
    task_augment_prob: float = 0.5
    prior_dropout: float = 0.0
    trainable: str = "all"
    low_res_fraction: float = 0.0
    # with low_res_fraction: the full-size batches train on thin targets only (each thicker class becomes its
    # boundary band), as the engine reads only thin supports at the fine input scale
    fine_thin_only: bool = False
    # on a CPU with native bfloat16, forward passes under bfloat16 autocast (weights and optimiser stay float32):
    # one thread, the shipped model, a batch of 8: 2.4-2.8 -> 1.5-1.6 s per step at 128 px, 12.7 -> 6.5-6.8 s at
    # 256 px (runs/s28/profile_bf16.py); CUDA always trains under bfloat16 autocast
    cpu_bf16: bool = True
    seed: int = 0
    checkpoint_every: int = 250
    log_every: int = 25
    memory_momentum: float = 0.999
    num_threads: int = 0
    model: ModelConfig = field(default_factory=lambda: ModelConfig(similarity_path=True, prior_size=64))

    def __post_init__(self) -> None:
        if not 0.0 <= self.prior_dropout <= 1.0 or (self.prior_dropout and not self.model.similarity_path):
            raise IrisInputError("prior_dropout (--prior-dropout) must lie in [0, 1] and needs the support context "
                                 "(not with --no-similarity-path)")
        if self.trainable not in TRAINABLE_PARTS or (self.trainable == "fine_class_path"
                                                     and not self.model.fine_class_path):
            raise IrisInputError(f"trainable (--train-only) must be one of {', '.join(TRAINABLE_PARTS)}; "
                                 "fine_class_path needs the model's full-size class path (--fine-class-path)")
