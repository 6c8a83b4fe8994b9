"""`IrisSegmenter`: the one inference path from Volumes to masks on the input grid (app, CLI, evaluation).

2D models process 3D volumes slice by slice (canonical orientation, axial slices); the task
embedding is computed once per support set and cached, then reused for every query slice.
"""

from __future__ import annotations

import hashlib
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from iris_engine import strategies
from iris_engine.checkpoint import (
    CLICK_REFINER_FILE,
    FINE_CLICK_REFINER_FILE,
    SEQUENTIAL_CLICK_REFINER_FILE,
    load_checkpoint,
    load_click_refiner,
)
from iris_engine.config import InferenceConfig, PreprocessConfig
from iris_engine.embedding import TaskEmbedding
from iris_engine.errors import IrisInputError
from iris_engine.input_scale import FINE_SCALE, choose_input_scale, fill_between, strided_slices, take_slices
from iris_engine.io.limits import DEFAULT_LIMITS
from iris_engine.io.volume import Volume
from iris_engine.memory_bank import MemoryBank
from iris_engine.model.click_refiner import ClickRefiner
from iris_engine.model.iris import IrisModel
from iris_engine.postprocess import PostprocessOptions, apply_postprocessing
from iris_engine.preprocess import (
    axial_spacing,
    mask_to_model_slices,
    model_output_to_volume_3d,
    model_slices_to_volume,
    to_canonical,
    volume_to_model_input_3d,
    volume_to_model_slices,
)
from iris_engine.propagation import PropagationConfig, PropagationResult, Propagator

if TYPE_CHECKING:
    from iris_engine.refinement import Click, ClickSeries, FeatureCache, RefineConfig

ProgressCallback = Callable[[float, str], None]
MAX_SUPPORT_SLICES = 16
CACHE_SIZE = 32


@dataclass
class Support:
    """A reference image/volume and its mask: a label map (values 1..K) or a (K, *shape) stack."""

    volume: Volume
    mask: np.ndarray


@dataclass
class VolumeSegmentation:
    """Per-class probabilities and masks (K, *input shape) on the query's own grid."""

    probabilities: np.ndarray
    masks: np.ndarray
    class_names: list[str]
    strategy: str
    model_version: str
    timings: dict[str, float] = field(default_factory=dict)
    loss_curve: list[float] = field(default_factory=list)
    embedding: TaskEmbedding | None = None
    input_scale: int = 1  # 2: segmented at twice the model's input size (a thin structure, `input_scale.py`)
    slice_stride: int = 1  # > 1: every slice_stride-th slice segmented, those between interpolated in z

    def label_map(self) -> np.ndarray:
        """Single label map (0 = background, k + 1 = class k; the most probable class where masks overlap)."""
        scores = np.where(self.masks, self.probabilities, 0.0)
        labels = scores.argmax(axis=0) + 1
        return np.where(self.masks.any(axis=0), labels, 0).astype(np.uint16)


def _class_stack(mask: np.ndarray, shape: tuple[int, ...], num_classes: int) -> np.ndarray:
    """(K, *shape) float mask from a label map or a stack; clear errors for shape and value problems."""
    mask = np.asarray(mask)
    if not np.isfinite(mask).all():
        raise IrisInputError("mask contains NaN or Inf values")
    if mask.shape == shape:
        if mask.min() < 0 or mask.max() > num_classes or not np.all(np.equal(np.mod(mask, 1), 0)):
            raise IrisInputError(f"label map values must be integers 0..{num_classes}")
        return np.stack([mask == k + 1 for k in range(num_classes)]).astype(np.float32)
    if mask.shape == (num_classes, *shape):
        return (mask > 0).astype(np.float32)
    raise IrisInputError(f"mask shape {mask.shape} does not match the image shape {shape} (or ({num_classes}, *shape))")


def matching_click_refiner(checkpoint: str | Path, model: IrisModel, name: str = CLICK_REFINER_FILE
                            ) -> ClickRefiner | None:
    """The click refiner file `name` beside a checkpoint when it was trained on that model version, else None
    (warned where it exists for another version)."""
    path = Path(checkpoint).with_name(name)
    if not path.is_file():
        return None
    loaded = load_click_refiner(path)
    if loaded.iris_model_version != model.version:
        warnings.warn(f"{path.name} was trained for model {loaded.iris_model_version}, not {model.version}: "
                      "click refinement uses the local edit", stacklevel=2)
        return None
    return loaded.refiner


class IrisSegmenter:
    """Model + memory bank + preprocessing, with an LRU cache of task embeddings."""

    def __init__(
        self,
        model: IrisModel,
        memory_bank: MemoryBank | None = None,
        config: InferenceConfig | None = None,
        preprocess: PreprocessConfig | None = None,
        click_refiner: ClickRefiner | None = None,
        fine_click_refiner: ClickRefiner | None = None,
        sequential_click_refiner: ClickRefiner | None = None,
    ):
        self.config = config or InferenceConfig()
        self.click_refiner = click_refiner
        self.fine_click_refiner = fine_click_refiner  # for results read at FINE_SCALE (thin structures)
        self.sequential_click_refiner = sequential_click_refiner  # for single slices read at the input size
        self.device = torch.device(self.config.device)
        self.model = model.to(self.device).eval()
        self.memory_bank = memory_bank or MemoryBank(self.config.memory_momentum)
        self.preprocess = preprocess or PreprocessConfig()
        self._cache: OrderedDict[str, TaskEmbedding] = OrderedDict()
        self._scales: dict[str, int] = {}
        self._propagator: Propagator | None = None
        self._feature_cache: FeatureCache | None = None
        self._click_series: ClickSeries | None = None

    @classmethod
    def from_checkpoint(cls, path: str | Path, config: InferenceConfig | None = None) -> IrisSegmenter:
        config = config or InferenceConfig()
        loaded = load_checkpoint(path, map_location=config.device)
        return cls(loaded.model, loaded.memory_bank, config, click_refiner=matching_click_refiner(path, loaded.model),
                   fine_click_refiner=matching_click_refiner(path, loaded.model, FINE_CLICK_REFINER_FILE),
                   sequential_click_refiner=matching_click_refiner(path, loaded.model,
                                                                   SEQUENTIAL_CLICK_REFINER_FILE))

    @property
    def model_version(self) -> str:
        return self.model.version

    @property
    def is_3d(self) -> bool:
        return self.model.config.spatial_dims == 3

    def to_model_space(self, volume: Volume, scale: int = 1
                       ) -> tuple[torch.Tensor, Callable[[torch.Tensor], np.ndarray], object]:
        """Model input for a volume (slices at `scale` x the model's input size), a function mapping model outputs
        back to its grid, and the geometry."""
        if volume.ndim not in (2, 3):
            raise IrisInputError(f"expected a 2D image or 3D volume, got shape {volume.shape}")
        if not np.isfinite(volume.array).all():
            raise IrisInputError(f"{volume.source or 'image'} contains NaN or Inf values")
        size = self.model.config.image_size * (1 if self.is_3d else scale)
        if self.is_3d:
            if volume.ndim != 3:
                raise IrisInputError("this is a 3D model: give it a 3D volume")
            canonical, transform = to_canonical(volume)
            tensor, geometry3d = volume_to_model_input_3d(canonical, size, self.preprocess)
            restore_3d = lambda p: transform.invert(model_output_to_volume_3d(p[0], geometry3d))  # noqa: E731
            return tensor, restore_3d, (transform, geometry3d)
        canonical, transform = to_canonical(volume)
        tensor, geometry = volume_to_model_slices(canonical, size, axis=-1, cfg=self.preprocess)
        return tensor, lambda p: transform.invert(model_slices_to_volume(p, geometry)), (transform, geometry)

    def _support_tensors(self, support: Support, num_classes: int, scale: int = 1
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """Model-space support images and masks; for 2D models only slices that show a class."""
        stack = _class_stack(support.mask, support.volume.shape, num_classes)
        if not stack.any():
            raise IrisInputError(f"the support mask of {support.volume.source or 'a support'} is empty")
        images, _, (transform, geometry) = self.to_model_space(support.volume, scale)
        canonical_mask = transform.apply(stack)
        if self.is_3d:
            from iris_engine.preprocess import resize_volume

            size = (self.model.config.image_size,) * 3
            masks = np.stack([resize_volume(m, size, order=1) for m in canonical_mask])
            return images, torch.from_numpy(masks[None]).clamp(0, 1).float()
        masks = mask_to_model_slices(canonical_mask, geometry)
        present = masks.flatten(2).amax(-1).amax(-1) > 0
        rows = present.nonzero().flatten()
        if len(rows) > MAX_SUPPORT_SLICES:
            rows = rows[torch.linspace(0, len(rows) - 1, MAX_SUPPORT_SLICES).round().long()]
        return images[rows], masks[rows]

    def _support_key(self, supports: Sequence[Support], class_names: Sequence[str]) -> str:
        digest = hashlib.sha256(self.model_version.encode())
        for name in class_names:
            digest.update(name.encode())
        for support in supports:
            digest.update(np.ascontiguousarray(support.volume.array).tobytes())
            digest.update(np.ascontiguousarray(support.mask).tobytes())
        return digest.hexdigest()

    def support_batch(
        self, supports: Sequence[Support], class_names: Sequence[str], scale: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Model-space support images and masks of a support set (at `scale` x the input size), concatenated."""
        if not supports:
            raise IrisInputError("at least one support (image + mask) is needed")
        if len(class_names) > DEFAULT_LIMITS.max_classes:
            raise IrisInputError(f"{len(class_names)} classes asked for; at most {DEFAULT_LIMITS.max_classes} at once")
        pairs = [self._support_tensors(s, len(class_names), scale) for s in supports]
        return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])

    def encode(self, supports: Sequence[Support], class_names: Sequence[str], scale: int = 1) -> TaskEmbedding:
        """Task embedding of a support set (averaged over supports, at `scale`), cached by content."""
        return self._encode(self._support_key(supports, class_names), supports, class_names, scale)

    def encode_at_input_scale(self, supports: Sequence[Support], class_names: Sequence[str]
                              ) -> tuple[TaskEmbedding, int]:
        """The task embedding at the scale its supports call for, and that scale: 2 where every class is thin on
        the model grid (`iris_engine.input_scale`), else 1. Both cached by content (hashed once)."""
        content = self._support_key(supports, class_names)
        if content not in self._scales:
            self._scales[content] = self.input_scale_of(supports, class_names)
            if len(self._scales) > CACHE_SIZE:
                self._scales.pop(next(iter(self._scales)))
        scale = self._scales[content]
        return self._encode(content, supports, class_names, scale), scale

    def input_scale_of(self, supports: Sequence[Support], class_names: Sequence[str]) -> int:
        """2 where every class of these masks is thin on the model grid (`iris_engine.input_scale`), else 1 (always
        1 for 3D models)."""
        if self.is_3d:
            return 1
        return choose_input_scale(self.support_batch(supports, class_names)[1], self.config.fine_scale_thickness)

    def bank_embedding(self, names: Sequence[str]) -> tuple[TaskEmbedding, int]:
        """The memory bank's embedding of these classes and its input scale: 2 where every class keeps a fine
        entry (it is thin), as one-shot would choose for such supports; else 1 (always 1 for 3D models)."""
        fine = not self.is_3d and self.config.fine_scale_thickness > 0
        scale = self.memory_bank.input_scale(list(names)) if fine else 1
        return self.memory_bank.get(list(names), self.model_version, scale), scale

    def _encode(self, content: str, supports: Sequence[Support], class_names: Sequence[str], scale: int
                ) -> TaskEmbedding:
        key = f"{content}@{scale}"
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        images, masks = self.support_batch(supports, class_names, scale)
        embedding = strategies.encode_supports(self.model, images.to(self.device), masks.to(self.device),
                                               list(class_names), self.model_version, self.config.correspondence,
                                               self.config.calibration)
        self._cache[key] = embedding
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return embedding

    def segment(
        self,
        query: Volume,
        strategy: str = "one_shot",
        supports: Sequence[Support] = (),
        class_names: Sequence[str] = (),
        tuning_steps: int | None = None,
        tuning_lr: float | None = None,
        extra_examples: Sequence[Support] = (),
        postprocess: PostprocessOptions | None = None,
        progress: ProgressCallback | None = None,
    ) -> VolumeSegmentation:
        """Segment `query` with one of the four strategies; masks come back on the query's grid."""
        if strategy not in strategies.STRATEGIES:
            raise IrisInputError(f"unknown strategy '{strategy}'; choose one of {', '.join(strategies.STRATEGIES)}")
        names = list(class_names)
        if not names:
            raise IrisInputError("name at least one class to segment")
        report = progress or (lambda fraction, message: None)
        if strategy == "one_shot" and len(supports) != 1:
            raise IrisInputError(f"one-shot takes exactly one support, got {len(supports)}")
        if strategy in ("context_ensemble", "in_context_tuning") and not supports:
            raise IrisInputError(f"{strategy} needs at least one support")
        if strategy == "memory_bank":
            embedding, scale = self.bank_embedding(names)
        else:
            report(0.05, "encoding the supports")
            embedding, scale = self.encode_at_input_scale(supports, names)
        report(0.2, "preparing the query")
        queries, restore, _ = self.to_model_space(query, scale)
        kept = self.kept_slices(query, len(queries), scale)
        segmented = take_slices(queries, kept)
        if strategy == "in_context_tuning":
            report(0.35, "tuning the task embedding")
            images, masks = self.support_batch(supports, names, scale)
            extra_images = extra_masks = None
            if extra_examples:
                extra_images, extra_masks = self.support_batch(extra_examples, names, scale)
            result = strategies.in_context_tuning(
                self.model, images, masks, segmented, names, self.config, extra_images, extra_masks,
                initial=embedding, steps=tuning_steps, lr=tuning_lr,
            )
        else:
            report(0.6, "segmenting")
            result = strategies.segment_with_embedding(self.model, segmented, embedding, self.config)
        report(0.9, "mapping back to the input grid")
        probabilities = restore(fill_between(result.probabilities, kept, len(queries)))
        masks = probabilities >= self.config.threshold
        if postprocess is not None:
            masks = np.stack([apply_postprocessing(m, postprocess) for m in masks])
        report(1.0, "done")
        return VolumeSegmentation(probabilities, masks, names, strategy, self.model_version, result.timings,
                                  result.loss_curve, result.embedding, scale,
                                  max((b - a for a, b in zip(kept, kept[1:], strict=False)), default=1))

    def kept_slices(self, query: Volume, depth: int, scale: int) -> list[int]:
        """Which of the `depth` model slices of `query` go through the model (`slice_stride`); the others are
        interpolated (`input_scale.fill_between`)."""
        return strided_slices(depth, self.slice_stride(query, scale))

    def slice_stride(self, query: Volume, scale: int) -> int:
        """Every how many slices a 2D model segments `query`: for a volume read at twice the input size (a thin
        structure, where the 2x pass costs 4x per slice) `fine_volume_stride`, or fewer so that the slices read lie
        at most `fine_volume_max_gap_mm` apart; else 1."""
        if scale != FINE_SCALE or query.ndim != 3 or self.is_3d:
            return 1
        within_gap = int(self.config.fine_volume_max_gap_mm / axial_spacing(query) + 1e-6)
        return max(1, min(self.config.fine_volume_stride, within_gap))

    def refine(self, query: Volume, result: VolumeSegmentation | None, clicks: Sequence[Click],
               config: RefineConfig | None = None, steps: Sequence[int] | None = None) -> VolumeSegmentation:
        """`result` corrected by positive/negative clicks or scribbles on `query` (see iris_engine.refinement).

        Give all clicks so far with the unrefined result, so undo = drop a click; `steps`: the number of clicks
        of each step in order (a stroke is one; default: `click_steps`). A sequential refiner refines step by
        step and keeps each step's output, so the next click costs one step.
        """
        from iris_engine.refinement import ClickSeries, FeatureCache, refine_segmentation

        if self._feature_cache is None:
            self._feature_cache = FeatureCache()
        if self._click_series is None:
            self._click_series = ClickSeries()
        return refine_segmentation(self, query, result, clicks, config, self._feature_cache, steps,
                                   self._click_series)

    @property
    def propagator(self) -> Propagator:
        """Within-volume propagation with this model; its per-volume caches live as long as the segmenter."""
        if self._propagator is None or self._propagator.model is not self.model:
            config = PropagationConfig(threshold=self.config.threshold, batch_size=self.config.batch_size,
                                       fine_scale_thickness=self.config.fine_scale_thickness)
            self._propagator = Propagator(self.model, self.preprocess, config, self.device)
        return self._propagator

    def propagate(
        self,
        volume: Volume,
        painted: np.ndarray,
        class_names: Sequence[str],
        axis: str | int = "axial",
        painted_slices: Sequence[int] = (),
        progress: ProgressCallback | None = None,
    ) -> PropagationResult:
        """Segment the other slices of `volume` from its painted slices (see `iris_engine.propagation`)."""
        return self.propagator.propagate(volume, painted, class_names, axis, painted_slices, progress)
