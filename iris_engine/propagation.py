"""Within-volume propagation: a few painted slices of a volume segment its other slices.

Every painted slice is a support for the other slices of the same volume. A slice between two painted
slices that show a class gets the distance-weighted average of their task embeddings (linear in the
support, so nearer slices count more); outside them it gets the nearest one. The model's masks are then
walked outward from the painted slices, slice by slice: a predicted component continues the structure
only where it touches the previous slice's mask, and a class stops where its area vanishes, so nothing
is predicted beyond the structure's extent. A painted slice is taken as complete: what is painted on it
comes back unchanged, and a class not painted on it is absent there (a stop for that class).

A structure only a few pixels thick on the model grid in its painted slices (every painted class, as in
`iris_engine.input_scale`) is propagated with the volume's slices read at twice the model's input size.

Per-slice task embeddings and per-slice model outputs are cached per volume, keyed by content, so a
re-propagation after a correction recomputes only the slices whose embedding mix changed.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage

from iris_engine import strategies
from iris_engine.config import InferenceConfig, PreprocessConfig
from iris_engine.errors import IrisInputError
from iris_engine.input_scale import choose_input_scale
from iris_engine.io.volume import Volume
from iris_engine.model.iris import IrisModel
from iris_engine.preprocess import (
    SliceGeometry,
    mask_to_model_slices,
    model_slices_to_volume,
    to_canonical,
    volume_to_model_slices,
)

ProgressCallback = Callable[[float, str], None]
VIEW_AXES = {"sagittal": 0, "coronal": 1, "axial": 2}


@dataclass(frozen=True)
class PropagationConfig:
    """Threshold, stopping rule and cache size of propagation."""

    threshold: float = 0.5
    min_area_fraction: float = 0.02  # a walk stops below this fraction of the painted area it started from
    connect_radius: int = 1  # px: a component continues the structure if it touches the previous mask dilated so
    batch_size: int = 8
    cached_volumes: int = 4
    fine_scale_thickness: float = InferenceConfig.fine_scale_thickness  # 0: always at the model's input size


@dataclass
class PropagationResult:
    """Probabilities and masks (K, *volume shape) on the volume's grid, and what was painted and recomputed."""

    probabilities: np.ndarray
    masks: np.ndarray
    class_names: list[str]
    painted_slices: list[int]
    axis: str
    recomputed_slices: int
    model_version: str
    timings: dict[str, float] = field(default_factory=dict)
    input_scale: int = 1  # 2: the slices were read at twice the model's input size (a thin structure)

    def label_map(self) -> np.ndarray:
        """0 = background, k + 1 = class k (the most probable class where masks overlap)."""
        scores = np.where(self.masks, self.probabilities, -1.0)
        labels = scores.argmax(axis=0) + 1
        return np.where(self.masks.any(axis=0), labels, 0).astype(np.uint16)


@dataclass
class _VolumeState:
    """Model-space slices of one volume along one axis, with the caches of its painted slices and outputs."""

    slices: torch.Tensor
    geometry: SliceGeometry
    tokens: dict[str, torch.Tensor] = field(default_factory=dict)
    outputs: dict[int, tuple[str, torch.Tensor]] = field(default_factory=dict)


def digest(*arrays: np.ndarray | bytes | str) -> str:
    """SHA-1 of strings, bytes and arrays in order (cache keys)."""
    sha = hashlib.sha1()
    for item in arrays:
        sha.update(item.encode() if isinstance(item, str) else item if isinstance(item, bytes)
                   else np.ascontiguousarray(item).tobytes())
    return sha.hexdigest()


def axis_index(axis: str | int) -> int:
    """Canonical (RAS) axis of a view name ('axial' = 2) or of an axis number 0..2."""
    if isinstance(axis, str):
        if axis not in VIEW_AXES:
            raise IrisInputError(f"unknown axis '{axis}'; choose one of {', '.join(VIEW_AXES)}")
        return VIEW_AXES[axis]
    if axis not in (0, 1, 2):
        raise IrisInputError(f"axis must be 0, 1 or 2, got {axis}")
    return int(axis)


def validate_painted(volume: Volume, painted: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    """The painted label map as int32, or a clear error (shape, values, unnamed or unpainted labels)."""
    if volume.ndim != 3:
        raise IrisInputError(f"propagation needs a 3D volume, got shape {volume.shape}")
    names = list(class_names)
    if not names or any(not str(n).strip() for n in names):
        raise IrisInputError("name every painted class (one non-empty name per label value 1..K)")
    if len(set(names)) != len(names):
        raise IrisInputError(f"class names must be distinct, got {names}")
    labels = np.asarray(painted)
    if labels.shape != volume.shape:
        raise IrisInputError(f"painted label map shape {labels.shape} does not match the volume shape {volume.shape}")
    if labels.dtype.kind not in "biuf" or (labels.dtype.kind == "f" and not np.isfinite(labels).all()):
        raise IrisInputError("the painted label map must hold integer labels")
    if labels.dtype.kind == "f" and not np.array_equal(labels, np.round(labels)):
        raise IrisInputError("the painted label map has non-integer values")
    if labels.size and labels.min() < 0:
        raise IrisInputError("the painted label map has negative labels")
    if not labels.any():
        raise IrisInputError("nothing is painted: paint the structure on at least one slice")
    top = int(labels.max())
    if top > len(names):
        raise IrisInputError(f"painted label {top} has no class name: {len(names)} name(s) given for labels 1..{top}")
    labels = labels.astype(np.int32)
    missing = [names[k] for k in range(len(names)) if not (labels == k + 1).any()]
    if missing:
        raise IrisInputError(f"class(es) {', '.join(missing)} are not painted on any slice")
    return labels


def plan_sources(painted: Sequence[int], present: dict[int, set[int]], num_slices: int, num_classes: int
                 ) -> dict[int, list[list[tuple[int, float]]]]:
    """Per unpainted slice and class, the painted slices whose embeddings it mixes and their weights.

    Between two painted slices that both show the class: linear weights by distance; otherwise the nearest
    painted slice if it shows the class; a class absent on the nearest painted slice on both sides gets none.
    """
    order = sorted(painted)
    plans: dict[int, list[list[tuple[int, float]]]] = {}
    for z in range(num_slices):
        if z in present:
            continue
        left = max((p for p in order if p < z), default=None)
        right = min((p for p in order if p > z), default=None)
        per_class: list[list[tuple[int, float]]] = []
        for k in range(num_classes):
            has_left = left is not None and k in present[left]
            has_right = right is not None and k in present[right]
            if has_left and has_right:
                span = right - left
                per_class.append([(left, (right - z) / span), (right, (z - left) / span)])
            elif has_left:
                per_class.append([(left, 1.0)])
            elif has_right:
                per_class.append([(right, 1.0)])
            else:
                per_class.append([])
        if any(per_class):
            plans[z] = per_class
    return plans


def walk_extent(predicted: Callable[[int, int], np.ndarray], num_slices: int, painted: dict[int, np.ndarray],
                config: PropagationConfig) -> np.ndarray:
    """One class along axis 0: from every painted slice showing it, walk outward and keep connected components.

    `predicted(z, step)` gives the model's (a, b) bool mask of slice z when walking in direction `step` (asked
    for lazily: a walk that stops early saves the model calls); `painted` maps slice -> (a, b) bool mask
    (possibly empty). Painted slices are copied unchanged and never walked through; a walk keeps the
    components touching the previous slice's mask (dilated by `connect_radius`) and stops once they cover
    less than `min_area_fraction` of the painted area it started from.
    """
    shape = next(iter(painted.values())).shape
    out = np.zeros((num_slices, *shape), dtype=bool)
    for p, mask in painted.items():
        out[p] = mask
    structure = ndimage.generate_binary_structure(2, 1)
    for start, mask in painted.items():
        if not mask.any():
            continue
        minimum = max(1, int(np.ceil(config.min_area_fraction * mask.sum())))
        for step in (-1, 1):
            previous, z = mask, start + step
            while 0 <= z < num_slices and z not in painted:
                reach = ndimage.binary_dilation(previous, structure, config.connect_radius) \
                    if config.connect_radius > 0 else previous
                components, _ = ndimage.label(predicted(z, step), structure)
                touching = np.unique(components[reach & (components > 0)])
                kept = np.isin(components, touching)
                if kept.sum() < minimum:
                    break
                out[z] |= kept
                previous, z = kept, z + step
    return out


class Propagator:
    """Propagation with a model, with per-volume caches of painted-slice embeddings and per-slice outputs."""

    def __init__(self, model: IrisModel, preprocess: PreprocessConfig | None = None,
                 config: PropagationConfig | None = None, device: torch.device | str = "cpu"):
        self.model = model
        self.preprocess = preprocess or PreprocessConfig()
        self.config = config or PropagationConfig()
        self.device = torch.device(device)
        self._states: OrderedDict[str, _VolumeState] = OrderedDict()

    @property
    def model_version(self) -> str:
        return str(getattr(self.model, "version", ""))

    def _state(self, canonical: Volume, axis: int, scale: int) -> _VolumeState:
        key = digest(self.model_version, f"{axis}@{scale}", canonical.modality, str(canonical.shape),
                     canonical.array)
        if key in self._states:
            self._states.move_to_end(key)
            return self._states[key]
        slices, geometry = volume_to_model_slices(canonical, self.model.config.image_size * scale, axis,
                                                  self.preprocess)
        state = _VolumeState(slices, geometry)
        self._states[key] = state
        while len(self._states) > self.config.cached_volumes:
            self._states.popitem(last=False)
        return state

    def input_scale(self, canonical_labels: np.ndarray, painted: Sequence[int], num_classes: int) -> int:
        """2 where every class is thin on the model grid over its painted slices (axis 0 of the labels), else 1."""
        stack = np.stack([canonical_labels[z] == k + 1 for z in painted for k in range(num_classes)])
        geometry = SliceGeometry(stack.shape[1:], None, self.model.config.image_size)
        masks = mask_to_model_slices(stack.astype(np.float32), geometry)[0]
        return choose_input_scale(masks.view(len(painted), num_classes, *masks.shape[-2:]),
                                  self.config.fine_scale_thickness)

    def _painted_tokens(self, state: _VolumeState, z: int, labels: np.ndarray, names: list[str],
                        present: set[int]) -> dict[int, torch.Tensor]:
        """Task tokens (T, C) per class shown on painted slice z, cached by the slice's painted labels."""
        out: dict[int, torch.Tensor] = {}
        if not present:
            return out
        key = digest(str(z), labels)
        if key not in state.tokens:
            classes = sorted(present)
            stack = np.stack([labels == k + 1 for k in classes]).astype(np.float32)
            shape = labels.shape
            masks = mask_to_model_slices(stack, SliceGeometry(shape, None, state.geometry.image_size))
            try:
                embedding = strategies.encode_supports(self.model, state.slices[z: z + 1].to(self.device),
                                                       masks.to(self.device), [names[k] for k in classes],
                                                       correspondence=None, calibration=None)  # tokens only
            except IrisInputError as error:
                raise IrisInputError(f"painted slice {z}: {error}") from error
            state.tokens[key] = embedding.tokens.cpu()
        tokens = state.tokens[key]
        for row, k in enumerate(sorted(present)):
            out[k] = tokens[row]
        return out

    def propagate(
        self,
        volume: Volume,
        painted: np.ndarray,
        class_names: Sequence[str],
        axis: str | int = "axial",
        painted_slices: Sequence[int] = (),
        progress: ProgressCallback | None = None,
    ) -> PropagationResult:
        """Segment every slice of `volume` along `axis` from its painted slices; see the module docstring.

        `painted` is a label map of the volume's shape (0 = unpainted, k = class k); `painted_slices` adds slice
        indices (along the canonical axis) that count as painted even where they are empty.
        """
        start = time.perf_counter()
        report = progress or (lambda fraction, message: None)
        names = list(class_names)
        labels = validate_painted(volume, painted, names)
        axis_number = axis_index(axis)
        canonical, transform = to_canonical(volume)
        canonical_labels = np.moveaxis(transform.apply(labels), axis_number, 0)
        num_slices = canonical_labels.shape[0]
        extra = [int(z) for z in painted_slices]
        if any(not 0 <= z < num_slices for z in extra):
            raise IrisInputError(f"painted slice indices must lie in 0..{num_slices - 1}, got {extra}")
        painted_set = sorted(set(np.flatnonzero(canonical_labels.reshape(num_slices, -1).any(1)).tolist()) | set(extra))
        present = {z: {int(v) - 1 for v in np.unique(canonical_labels[z]) if v > 0} for z in painted_set}
        report(0.05, "preparing the volume")
        scale = self.input_scale(canonical_labels, painted_set, len(names))
        state = self._state(canonical, axis_number, scale)
        tokens = {z: self._painted_tokens(state, z, canonical_labels[z], names, present[z]) for z in painted_set}
        plans = plan_sources(painted_set, present, num_slices, len(names))
        fallback = [next(tokens[z][k] for z in painted_set if k in tokens[z]) for k in range(len(names))]
        mixed: dict[int, torch.Tensor] = {}
        for z, per_class in plans.items():
            rows = [sum(w * tokens[p][k] for p, w in sources) if sources else fallback[k]
                    for k, sources in enumerate(per_class)]
            mixed[z] = torch.stack(rows)
        outputs = _LazyOutputs(self, state, plans, mixed, canonical_labels.shape[1:], report)
        probabilities = np.zeros((len(names), *canonical_labels.shape), dtype=np.float32)
        masks = np.zeros(probabilities.shape, dtype=bool)
        for k in range(len(names)):
            own = {z: canonical_labels[z] == k + 1 for z in painted_set}
            masks[k] = walk_extent(lambda z, step, k=k: outputs.probability(z, step)[k] >= self.config.threshold,
                                   num_slices, own, self.config)
            for z, mask in own.items():
                probabilities[k, z] = mask
        for z, values in outputs.grid.items():
            probabilities[:, z] = values
        probabilities = transform.invert(np.moveaxis(probabilities, 1, axis_number + 1))
        masks = transform.invert(np.moveaxis(masks, 1, axis_number + 1))
        report(1.0, "done")
        timings = {"segment": outputs.seconds, "total": time.perf_counter() - start}
        axis_name = axis if isinstance(axis, str) else next(n for n, a in VIEW_AXES.items() if a == axis_number)
        return PropagationResult(probabilities, masks, names, painted_set, axis_name, outputs.recomputed,
                                 self.model_version, timings, scale)


class _LazyOutputs:
    """Model probabilities of unpainted slices on the volume's slice grid, computed on demand in batches.

    A slice is sent to the model only when its embedding mix differs from the cached one; asking for slice z
    while walking in direction `step` also computes the next slices that way, one batch at a time.
    """

    def __init__(self, propagator: Propagator, state: _VolumeState, plans: dict[int, list[list[tuple[int, float]]]],
                 mixed: dict[int, torch.Tensor], slice_shape: tuple[int, ...], report: ProgressCallback):
        self.propagator = propagator
        self.state = state
        self.plans = plans
        self.mixed = mixed
        self.keys = {z: digest(t.numpy()) for z, t in mixed.items()}
        self.geometry = SliceGeometry(tuple(slice_shape), None, state.geometry.image_size)
        self.report = report
        self.grid: dict[int, np.ndarray] = {}
        self.recomputed = 0
        self.seconds = 0.0

    def probability(self, z: int, step: int) -> np.ndarray:
        """(K, a, b) probabilities of slice z (zero for classes that no painted slice can reach there)."""
        if z not in self.grid:
            ahead = (z + i * step for i in range(self.propagator.config.batch_size))
            self._compute([y for y in ahead if y in self.plans and y not in self.grid])
        return self.grid[z]

    def _compute(self, slices: list[int]) -> None:
        outputs = self.state.outputs
        todo = [z for z in slices if outputs.get(z, ("",))[0] != self.keys[z]]
        if todo:
            start = time.perf_counter()
            model, device = self.propagator.model, self.propagator.device
            with torch.no_grad():
                logits = model.segment(self.state.slices[todo].to(device),
                                       torch.stack([self.mixed[z] for z in todo]).to(device))
            for z, output in zip(todo, torch.sigmoid(logits).cpu(), strict=True):
                outputs[z] = (self.keys[z], output)
            self.recomputed += len(todo)
            self.seconds += time.perf_counter() - start
            self.report(min(0.9, 0.15 + 0.75 * self.recomputed / max(1, len(self.plans))),
                        f"segmented {self.recomputed} slice(s)")
        for z in slices:
            usable = torch.tensor([bool(sources) for sources in self.plans[z]], dtype=torch.float32)
            values = outputs[z][1] * usable.view(-1, 1, 1)
            self.grid[z] = model_slices_to_volume(values[None], self.geometry)
