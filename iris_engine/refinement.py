"""Interactive refinement: fix a prediction with positive/negative clicks or short scribbles.

Methods (measured against each other by `iris_engine.evaluation.refinement`):
- "local": an image-aware local edit. Each click (or stroke) spreads an influence over a geodesic
  distance whose cost grows with intensity and probability differences to the clicked pixel, so it
  stops at edges; the new probability is the old one blended towards the click's label by that influence.
- "tuning": in-context tuning of the class's task embedding on the query itself, with the clicks as sparse
  labels and a term keeping the other pixels near the current prediction (frozen model).
- "combined": tuning, then the local edit.
- "learned": the click refiner (`model/click_refiner.py`), a small network trained with simulated clicks
  on the frozen IRIS model's predictions and pixel features, blended (`learned_weight`) on the clicked
  slices with the local edit (with `learned_tuning`, from the second clicked voxel on, with "combined"
  instead); in a volume the neighbour slices get the local edit, and each clicked slice's refined mask then
  serves as a support for the slices around it (`spread_decay`). A thin, elongated mask (vessels, membranes)
  gets the local edit with the refiner at a lower weight (`thin_learned_weight`), after its negative clicks have
  dropped the halo beside its ridges (`thin_clicks.py`). A result read at twice the input size (a thin structure,
  `input_scale.py`) is refined by the fine refiner where one ships (`click_refiner_fine.pt`, trained at that scale
  on thin targets), reading the IRIS features of the fine input (`fine_learned_weight` on thin slices). A single
  slice read at the input size is refined by the sequential refiner where one ships (`click_refiner_sequential.pt`):
  the clicks are read in steps (`click_steps`), each refining the previous step's output with the one-shot start
  beside it (`refine_steps`); the segmenter keeps each step's output (`ClickSeries`).
- "disc": the non-learned baseline, a disc of fixed radius painted at each click.
Every method honours every click (positive inside, negative outside). In a volume the edit works on
canonical axial slices; a click also reaches `neighbour_slices` slices on either side (the geodesic
distance is 3D there, and tuned predictions are blended in with a weight falling off with distance). A slice
larger than the model's view of it is refined on that view and the change resized back (`refine_on_grid`).
The model's features of each query slice are computed once (`QueryFeatures`) and shared by the methods; the
segmenter keeps them from one click to the next on the same image (`FeatureCache`).
"""

from __future__ import annotations

import itertools
import threading
import time
import warnings
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from skimage.draw import line
from skimage.graph import MCP_Geometric

from iris_engine.errors import IrisInputError
from iris_engine.inference import VolumeSegmentation
from iris_engine.input_scale import FINE_SCALE
from iris_engine.io.volume import Volume
from iris_engine.model.click_refiner import NEGATIVE, POSITIVE, ClickRefiner, click_inputs
from iris_engine.model.iris import IrisModel
from iris_engine.preprocess import normalize_intensity, to_canonical
from iris_engine.propagation import digest, plan_sources
from iris_engine.thin_clicks import drop_halo, mean_inner_distance

if TYPE_CHECKING:
    from iris_engine.inference import IrisSegmenter

METHODS = ("learned", "combined", "local", "tuning", "disc")
FALLBACK_METHOD = "local"
KEPT_FEATURE_SLICES = 128  # slices of model features kept per query at the input size (a quarter at twice it)


@dataclass(frozen=True)
class Click:
    """A positive (inside the structure) or negative (outside) click at a voxel index of the query's own array."""

    position: tuple[int, ...]
    positive: bool = True
    class_name: str | None = None

    def __post_init__(self) -> None:
        if any(isinstance(p, bool) or not float(p).is_integer() for p in self.position):
            raise IrisInputError(f"click {tuple(self.position)}: coordinates must be whole voxel indices (round "
                                 "sub-pixel ones)")
        object.__setattr__(self, "position", tuple(int(float(p)) for p in self.position))


@dataclass(frozen=True)
class RefineConfig:
    """How clicks change a prediction. Lengths are fractions of the slice's larger side."""

    method: str = "learned"  # chosen on training patients (--dev); falls back to "local" without a refiner
    reach: float = 0.2
    intensity_cost: float = 4.0
    probability_cost: float = 4.0
    smoothing: float = 1.0
    structure_scale: float = 3.0  # > 0: reach at most this x the radius of the structure on the clicked slice
    min_reach_px: float = 4.0
    empty_reach: float = 0.06  # with structure_scale: reach of a click on a slice where the mask is empty
    tuning_steps: int = 5
    tuning_lr: float = 0.05  # 0.5 moved the whole slice on the first click; 0.05 keeps it (training patients)
    click_weight: float = 50.0
    click_radius: float = 1.5
    learned_weight: float = 0.5  # "learned": refiner vs local edit on the clicked slices (training patients)
    # "learned": average the refiner with "combined" (tuning + local) instead of the local edit alone, once the
    # slab holds learned_tuning_clicks clicked voxels (tuning on one click moved whole slices). Off: with the
    # shipped refiner it adds nothing (training patients: 0.832 Dice after 5 clicks either way) and costs 3.6x
    # the CPU per call (0.62 vs 0.17 s)
    learned_tuning: bool = False
    learned_tuning_clicks: int = 2
    # with learned_tuning, the tuning blend in a volume (more than one slice) too: off, since there the spread
    # below carries the clicked slices' masks (training patients, 24 volumes: 0.724 Dice after 5 clicks without,
    # 0.719 with; 1.6 vs 2.8 CPU-s per call)
    learned_tuning_in_volumes: bool = False
    # "learned": a mask with mean inner distance below thin_width x the larger side and below thin_compactness x
    # sqrt(area) (a disc: 0.19) is thin and elongated (vessels, membranes; see thin_learned_weight); on all 14
    # training fundus images the one-shot vessel masks lie at 0.058-0.079 x sqrt(area)
    thin_width: float = 0.012
    thin_compactness: float = 0.08
    # "learned", thin mask: a negative click first drops every masked pixel less ridge-like than itself, keeping at
    # least thin_keep of the mask (`thin_clicks.py`; training fundus images: 0.48 -> 0.55 Dice after 5 clicks);
    # 1 turns it off
    thin_keep: float = 0.6
    # "learned", thin mask: the refiner's weight after the halo step and the local edit (dev at 256 px, EM membranes
    # / retinal vessels after 5 clicks: 0 0.602 / 0.724, below the disc's 0.634 on EM; 0.3 0.647 / 0.704; 0.5 0.652 /
    # 0.691)
    thin_learned_weight: float = 0.3
    # "learned" on a result read at twice the input size, with the fine refiner: its weight on thin slices instead
    # of thin_learned_weight (training patients, ISBI EM dev after 1 / 3 / 5 clicks: 0.3 0.635 / 0.642 / 0.654, 0.5
    # 0.639 / 0.657 / 0.666, disc 0.631 / 0.637 / 0.642; 9-set dev equal within 0.0005; runs/s31/RULE.md)
    fine_learned_weight: float = 0.5
    neighbour_slices: int = 2
    # "learned" in a volume: each clicked slice's refined mask becomes a support for the unclicked slices around
    # it (embeddings mixed by distance as in propagation); their new prediction is blended in with weight
    # spread_weight * exp(-distance / spread_decay) where that is >= spread_min (training patients, 24 volumes of
    # 4 sets: 0.699 -> 0.719 Dice after 5 clicks); spread_decay 0 turns it off
    spread_decay: float = 5.0
    spread_weight: float = 0.6
    spread_min: float = 0.05
    disc_radius: float = 5 / 128
    threshold: float = 0.5
    # "learned" on a 2D result read at the input size, with a sequential refiner beside the weights
    # (`click_refiner_sequential.pt`): each click step refines the previous step's output (the one-shot start
    # read beside it; a local edit beside it reads the newest step only); off: every call restarts from the result
    sequential: bool = True
    # "learned" with the sequential refiner: its weight against the local edit of the newest step (learned_weight
    # for it; training patients, runs/s33/RULE.md rule 6, Dice after 5 clicks on two dev samples: 0.5 0.848 /
    # 0.849, 0.7 0.849 / 0.854, 1 (the refiner alone) 0.858 / 0.860)
    sequential_learned_weight: float = 1.0
    # clicks on a slice larger than the model's view of it (its input size x the result's input scale) are
    # refined on that view and the change resized back onto the slice's own probability, every click honoured on
    # its own grid (training patients, 256 px slices: 0.837 -> 0.841 Dice after 5 clicks, 0.38 -> 0.19 CPU-s per
    # call); off: on the slice's own grid
    model_grid: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise IrisInputError(f"unknown refinement method '{self.method}'; choose one of {', '.join(METHODS)}")
        weights = (self.learned_weight, self.thin_learned_weight, self.fine_learned_weight, self.spread_weight,
                   self.sequential_learned_weight)
        if min(self.reach, self.empty_reach, self.disc_radius) <= 0 \
                or min(self.tuning_steps, self.neighbour_slices) < 0 \
                or not all(0.0 <= w <= 1.0 for w in weights) or self.learned_tuning_clicks < 1 \
                or self.spread_decay < 0 or not 0.0 < self.spread_min <= 1.0 or not 0.0 < self.thin_keep <= 1.0:
            raise IrisInputError("reach, empty_reach and disc_radius must be > 0, tuning steps and neighbour "
                                 "slices >= 0, learned_weight, thin_learned_weight, fine_learned_weight, "
                                 "sequential_learned_weight and spread_weight in [0, 1], "
                                 "learned_tuning_clicks >= 1, spread_decay >= 0, spread_min and thin_keep in (0, 1]")


def scribble(points: Sequence[Sequence[int]], positive: bool = True, class_name: str | None = None) -> list[Click]:
    """The voxels of a polyline through points on one slice (2D: (row, col); 3D: same last index)."""
    coords = [tuple(int(v) for v in p) for p in points]
    if not coords:
        raise IrisInputError("a scribble needs at least one point")
    if len({len(c) for c in coords}) != 1 or len(coords[0]) not in (2, 3):
        raise IrisInputError("scribble points must all be (row, col) or (i, j, k)")
    if len(coords[0]) == 3 and len({c[2] for c in coords}) != 1:
        raise IrisInputError("a scribble must stay on one slice (same last index)")
    cells = [coords[0][:2]]
    for a, b in zip(coords, coords[1:], strict=False):
        rows, cols = line(a[0], a[1], b[0], b[1])
        cells += list(zip(rows.tolist(), cols.tolist(), strict=True))
    tail = coords[0][2:]
    return [Click((*cell, *tail), positive, class_name) for cell in dict.fromkeys(cells)]


def _stroke_order(cells: np.ndarray) -> list[tuple[int, ...]]:
    """The cells (n, ndim) of one connected stroke, breadth first from its first one: each touches an earlier one."""
    remaining = {tuple(int(v) for v in cell) for cell in cells}
    first = tuple(int(v) for v in cells[0])
    order, queue = [first], deque([first])
    remaining.discard(first)
    offsets = [o for o in itertools.product((-1, 0, 1), repeat=cells.shape[1]) if any(o)]
    while queue:
        cell = queue.popleft()
        for offset in offsets:
            near = tuple(c + o for c, o in zip(cell, offset, strict=True))
            if near in remaining:
                remaining.discard(near)
                order.append(near)
                queue.append(near)
    return order


def clicks_from_label_map(label_map: np.ndarray, class_name: str | None = None) -> list[Click]:
    """Clicks from a sparse map on the query's grid: 1 = positive, 2 = negative, 0 = no click; each connected
    stroke of one sign in a row, each of its clicks touching an earlier one (one step: `click_steps`)."""
    data = np.asarray(label_map)
    values = set(np.unique(data).tolist())
    if not values <= {0, POSITIVE, NEGATIVE}:
        raise IrisInputError(f"a click map holds only 0, 1 (positive) and 2 (negative), got {sorted(values)}")
    strokes = []
    for value in (POSITIVE, NEGATIVE):
        labels, count = ndimage.label(data == value, structure=np.ones((3,) * data.ndim))
        strokes += [(value, np.argwhere(labels == index)) for index in range(1, count + 1)]
    strokes.sort(key=lambda stroke: tuple(stroke[1][0]))
    return [Click(cell, value == POSITIVE, class_name) for value, cells in strokes for cell in _stroke_order(cells)]


def click_map(clicks: Sequence[Click], shape: tuple[int, ...]) -> np.ndarray:
    """Sparse map (1 positive, 2 negative) of clicks already checked to lie in `shape`; later clicks win."""
    out = np.zeros(shape, dtype=np.uint8)
    for click in clicks:
        out[click.position] = POSITIVE if click.positive else NEGATIVE
    return out


def _touches(step: Sequence[Click], click: Click) -> bool:
    """Whether `click` continues `step`: same sign and class, next to one of its clicks (a scribble's voxels)."""
    first = step[0]
    return click.positive == first.positive and click.class_name == first.class_name and any(
        max(abs(a - b) for a, b in zip(c.position, click.position, strict=True)) <= 1 for c in step)


def click_steps(clicks: Sequence[Click], sizes: Sequence[int] | None = None) -> list[list[Click]]:
    """The clicks grouped into the steps of a click series, in order: `sizes` clicks each where given (the app's
    undo steps), else each run of consecutive clicks in which every click touches an earlier one of the same sign
    and class (a click is its own step, a scribble or a stroke of a click map one)."""
    if sizes is not None:
        if any(n < 1 for n in sizes) or sum(sizes) != len(clicks):
            raise IrisInputError(f"click steps {list(sizes)} do not add up to the {len(clicks)} clicks given")
        bounds = np.cumsum([0, *sizes]).tolist()
        steps = [list(clicks[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]
        if any(len({c.class_name for c in step}) > 1 for step in steps):
            raise IrisInputError("a click step holds clicks of one class only")
        return steps
    steps: list[list[Click]] = []
    for click in clicks:
        if steps and _touches(steps[-1], click):
            steps[-1].append(click)
        else:
            steps.append([click])
    return steps


def validate_clicks(clicks: Sequence[Click], shape: tuple[int, ...], class_names: Sequence[str]) -> None:
    """Clear errors for no clicks, clicks outside the image and unknown classes."""
    if not clicks:
        raise IrisInputError("no clicks given: click inside a missed region or on a false positive")
    for click in clicks:
        position = tuple(click.position)
        if len(position) != len(shape):
            raise IrisInputError(f"click {position} has {len(position)} coordinates; the image has {len(shape)} axes")
        if any(not 0 <= p < s for p, s in zip(position, shape, strict=True)):
            raise IrisInputError(f"click {position} lies outside the image of shape {shape}")
        if click.class_name is not None and click.class_name not in class_names:
            raise IrisInputError(f"click for class '{click.class_name}' but the result has {', '.join(class_names)}")
        if click.class_name is None and len(class_names) > 1:
            raise IrisInputError(f"name the class of each click: the result has {', '.join(class_names)}")


# ----------------------------------------------------------------------------------- slab-level edits


def _reach(probability: np.ndarray, seeds: np.ndarray, config: RefineConfig) -> float:
    """Reach in pixels of a seed group: `reach` of the slice's larger side, or with `structure_scale` at most that
    multiple of the structure's radius on the clicked slice (3 x the mean inner distance of the current mask, exact
    for a disc), so that a click on a thin vessel edits a vessel's width and one on an organ an organ's; on a
    slice with no mask yet, `empty_reach` of the larger side (a structure missed there is rarely large)."""
    largest = config.reach * max(probability.shape[:2])
    if config.structure_scale <= 0:
        return largest
    z = int(np.argwhere(seeds)[0][2])
    mask = probability[:, :, z] >= config.threshold
    if mask.sum() < 4:
        return float(np.clip(config.empty_reach * max(probability.shape[:2]), config.min_reach_px, largest))
    radius = 3.0 * mean_inner_distance(mask)
    return float(np.clip(config.structure_scale * radius, config.min_reach_px, largest))


def _influence(image: np.ndarray, probability: np.ndarray, seeds: np.ndarray, sampling: tuple[float, ...],
               config: RefineConfig, reach: float) -> np.ndarray:
    """Influence in [0, 1] of one group of seed voxels: exp(-(geodesic distance / reach)^2)."""
    cost = 1.0 + config.intensity_cost * np.abs(image - image[seeds].mean()) \
        + config.probability_cost * np.abs(probability - probability[seeds].mean())
    starts = [tuple(int(v) for v in p) for p in np.argwhere(seeds)]
    distance, _ = MCP_Geometric(cost, sampling=sampling).find_costs(starts)
    return np.exp(-((distance / reach) ** 2))


def _seed_groups(clicks: np.ndarray) -> list[tuple[np.ndarray, int]]:
    """Connected groups of clicked voxels of one sign on one slice (a stroke is one group, a click its own)."""
    groups = []
    for value in (POSITIVE, NEGATIVE):
        for z in range(clicks.shape[2]):
            labels, count = ndimage.label(clicks[:, :, z] == value, structure=np.ones((3, 3)))
            for index in range(1, count + 1):
                seeds = np.zeros(clicks.shape, dtype=bool)
                seeds[:, :, z] = labels == index
                groups.append((seeds, value))
    return groups


def local_edit(image: np.ndarray, probability: np.ndarray, clicks: np.ndarray, config: RefineConfig,
               sampling: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Blend a (H, W, Z) probability towards each click's label by its image-aware geodesic influence."""
    smooth = ndimage.gaussian_filter(image.astype(np.float32), (config.smoothing, config.smoothing, 0))
    weight = np.zeros(image.shape, dtype=np.float32)
    target = np.zeros(image.shape, dtype=np.float32)
    for seeds, value in _seed_groups(clicks):
        reach = _reach(probability, seeds, config)
        influence = _influence(smooth, probability, seeds, sampling, config, reach)
        stronger = influence > weight
        weight[stronger] = influence[stronger]
        target[stronger] = 1.0 if value == POSITIVE else 0.0
    return (1.0 - weight) * probability + weight * target


def _is_thin(probability: np.ndarray, config: RefineConfig) -> bool:
    """A thin, elongated mask (vessels, membranes): on the model grid the refiner blurs it and tuning moves it."""
    mask = probability >= config.threshold
    if mask.sum() < 4:
        return False
    inner = mean_inner_distance(mask)
    return inner < config.thin_width * max(mask.shape) and inner < config.thin_compactness * float(np.sqrt(mask.sum()))


def disc_edit(probability: np.ndarray, clicks: np.ndarray, config: RefineConfig) -> np.ndarray:
    """Baseline: paint a disc of fixed radius (label of the click) around each click on its slice."""
    radius = config.disc_radius * max(probability.shape[:2])
    out = probability.copy()
    for value, label in ((POSITIVE, 1.0), (NEGATIVE, 0.0)):
        for z in range(clicks.shape[2]):
            marked = clicks[:, :, z] == value
            if marked.any():
                out[:, :, z][ndimage.distance_transform_edt(~marked) <= radius] = label
    return out


def honour(probability: np.ndarray, clicks: np.ndarray, threshold: float) -> np.ndarray:
    """Clicked voxels get probability 1 (positive) or 0 (negative) so that the mask obeys every click."""
    out = probability.copy()
    out[clicks == POSITIVE] = max(1.0, threshold)
    out[clicks == NEGATIVE] = 0.0
    return out


def next_click(prediction: np.ndarray, truth: np.ndarray) -> tuple[tuple[int, ...], bool] | None:
    """The simulated user of click training and evaluation: the centre of the largest error region and whether
    it is a positive click (missed region); None if there is no error. 2D (H, W) or 3D (H, W, Z) arrays; the
    in-plane image border counts as outside a region, the ends of a slice stack do not."""
    best: tuple[int, np.ndarray, bool] | None = None
    for region, positive in ((truth & ~prediction, True), (prediction & ~truth, False)):
        labels, count = ndimage.label(region)
        if count == 0:
            continue
        sizes = np.bincount(labels.ravel())[1:]
        largest = int(np.argmax(sizes))
        if best is None or sizes[largest] > best[0]:
            best = (int(sizes[largest]), labels == largest + 1, positive)
    if best is None:
        return None
    in_plane = ((1, 1), (1, 1)) + ((0, 0),) * (best[1].ndim - 2)
    distance = ndimage.distance_transform_edt(np.pad(best[1], in_plane))[1:-1, 1:-1]
    position = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return tuple(int(v) for v in position), best[2]


# ----------------------------------------------------------------------------------- in-context tuning


def _to_grid(array: np.ndarray, size: int, mode: str = "bilinear") -> torch.Tensor:
    """(H, W, n) -> (n, 1, size, size), bilinear (or `mode`, e.g. "area")."""
    tensor = torch.from_numpy(np.ascontiguousarray(np.moveaxis(array, 2, 0), dtype=np.float32))[:, None]
    if tuple(tensor.shape[-2:]) == (size, size):
        return tensor
    if mode == "area":
        return F.interpolate(tensor, size=(size, size), mode="area")
    return F.interpolate(tensor, size=(size, size), mode=mode, align_corners=False)


def _from_grid(tensor: torch.Tensor, shape: tuple[int, int]) -> np.ndarray:
    """(n, 1, S, S) -> (H, W, n), bilinear."""
    if tuple(tensor.shape[-2:]) != shape:
        tensor = F.interpolate(tensor, size=shape, mode="bilinear", align_corners=False)
    return np.moveaxis(tensor[:, 0].numpy(), 0, 2)


def clicks_to_grid(clicks: np.ndarray, size: int) -> np.ndarray:
    """(H, W, n) click labels -> (n, size, size) on the model grid (nearest cell; later clicks win)."""
    h, w, n = clicks.shape
    out = np.zeros((n, size, size), dtype=np.uint8)
    for i, j, z in np.argwhere(clicks > 0):
        r = min(size - 1, int((i + 0.5) * size / h))
        c = min(size - 1, int((j + 0.5) * size / w))
        out[z, r, c] = clicks[i, j, z]
    return out


class QueryFeatures:
    """A query's model-space slices (N, 1, S, S), one per canonical axial slice z, with the model's encoder and
    pixel features of each slice, computed on first use and kept for later clicks on the same query (the
    `max_slices` most recently used: about 3 MB each at 128 px; by default KEPT_FEATURE_SLICES at the model's
    input size, fewer on a finer grid, in proportion to the pixels)."""

    def __init__(self, model: IrisModel, queries: torch.Tensor, batch: int = 8, max_slices: int | None = None):
        self.model, self.queries, self.batch = model, queries, batch
        self.max_slices = max_slices or max(1, KEPT_FEATURE_SLICES * model.config.image_size**2
                                            // queries.shape[-1] ** 2)
        self.device = next(model.parameters()).device
        self._kept: OrderedDict[int, tuple[list[torch.Tensor], torch.Tensor]] = OrderedDict()

    def _features(self, rows: Sequence[int]) -> list[tuple[list[torch.Tensor], torch.Tensor]]:
        """(encoder features, pixel features) of each row, computing the missing ones in batches."""
        missing = [z for z in dict.fromkeys(rows) if z not in self._kept]
        found = {z: self._kept[z] for z in rows if z in self._kept}
        for start in range(0, len(missing), self.batch):
            chunk = missing[start : start + self.batch]
            with torch.no_grad():
                features = self.model.encode_query(self.queries[chunk].to(self.device))
                pixels = self.model.decoder.pixel_features(features[1:])
            found.update({z: ([f[i] for f in features], pixels[i]) for i, z in enumerate(chunk)})
        for z in dict.fromkeys(rows):
            self._kept[z] = found[z]
            self._kept.move_to_end(z)
        while len(self._kept) > self.max_slices:
            self._kept.popitem(last=False)
        return [found[z] for z in rows]

    def pixels(self, rows: Sequence[int]) -> torch.Tensor:
        """The decoder's class-agnostic pixel features (n, D, S, S) of the given slices."""
        return torch.stack([pixels for _, pixels in self._features(rows)])

    def decode(self, rows: Sequence[int], tokens: torch.Tensor) -> torch.Tensor:
        """Logits (n, K, S, S) of the given slices with task tokens (K, T, C) or (n, K, T, C)."""
        kept = self._features(rows)
        encoded = [torch.stack([features[i] for features, _ in kept]) for i in range(len(kept[0][0]))]
        return self.model.decode(encoded, tokens, torch.stack([pixels for _, pixels in kept]))


class FeatureCache:
    """The `QueryFeatures` of the last query refined by a segmenter (one volume's worth, at each input scale
    asked for), so that each click on the same image encodes only slices it has not seen before."""

    def __init__(self) -> None:
        self._key: str | None = None
        self._features: dict[int, QueryFeatures] = {}
        self._lock = threading.Lock()

    def for_query(self, segmenter: IrisSegmenter, query: Volume) -> Callable[[int], QueryFeatures]:
        """The query's features at an input scale, computed on first use (the query is hashed once per call)."""
        key = digest(segmenter.model_version, query.modality, str(query.shape), np.asarray(query.affine),
                     query.array)
        with self._lock:
            if key != self._key or any(f.model is not segmenter.model for f in self._features.values()):
                self._key, self._features = key, {}
            kept = self._features  # this query's, even if a later call moves the cache on

        def at(scale: int) -> QueryFeatures:
            with self._lock:
                if scale not in kept:
                    kept[scale] = QueryFeatures(segmenter.model, segmenter.to_model_space(query, scale)[0])
                return kept[scale]

        return at


class ClickSeries:
    """The outputs of a sequential refiner's click steps, each under a key of the series and the steps up to it,
    so that a new click costs one refiner pass and an undo none (the most recently used outputs, `max_bytes` in
    all: 64 steps of a 1024 x 1024 image; the newest is always kept)."""

    def __init__(self, max_bytes: int = 256 * 2**20) -> None:
        self.max_bytes = max_bytes
        self._outputs: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def keys(series: str, steps: Sequence[Sequence[Click]]) -> list[str]:
        """The key after each step: a chain from the series key through each step's clicks."""
        keys, key = [], series
        for step in steps:
            key = digest(key, repr([(c.position, c.positive) for c in step]))
            keys.append(key)
        return keys

    def latest(self, keys: Sequence[str]) -> tuple[int, np.ndarray | None]:
        """The number of steps with a kept output, longest first, and that output (0, None: none kept)."""
        with self._lock:
            for done in range(len(keys), 0, -1):
                if keys[done - 1] in self._outputs:
                    self._outputs.move_to_end(keys[done - 1])
                    return done, self._outputs[keys[done - 1]]
        return 0, None

    def keep(self, key: str, output: np.ndarray) -> None:
        with self._lock:
            self._outputs[key] = output
            self._outputs.move_to_end(key)
            while len(self._outputs) > 1 and sum(o.nbytes for o in self._outputs.values()) > self.max_bytes:
                self._outputs.popitem(last=False)


def refine_steps(image: np.ndarray, start: np.ndarray, steps: Sequence[np.ndarray], config: RefineConfig,
                 size: int | None, learned: LearnedClicks, tuner: ClickTuner | None = None,
                 sampling: tuple[float, float, float] = (1.0, 1.0, 1.0), done: int = 0,
                 previous: np.ndarray | None = None) -> list[np.ndarray]:
    """A sequential refiner's outputs after the steps from `done` on (whose previous output is `previous`): each
    step's click map (H, W, Z) refines the previous step's output with all clicks so far, the one-shot `start`
    read beside it."""
    output = start if previous is None else previous
    clicks = np.zeros(start.shape, dtype=np.uint8)
    for marks in steps[:done]:
        clicks = np.where(marks > 0, marks, clicks)
    outputs = []
    for marks in steps[done:]:
        clicks = np.where(marks > 0, marks, clicks)
        output = refine_on_grid(image, output, clicks, config, size, tuner, sampling, learned, start, marks)
        outputs.append(output)
    return outputs


class ClickTuner:
    """Tunes one class's task tokens on click labels of a query (frozen model) and re-predicts its slices.

    The slab arrays passed in are (H, W, Z) on the canonical grid, resized to the model's S x S and back
    bilinearly.
    """

    def __init__(self, features: QueryFeatures, tokens: torch.Tensor, config: RefineConfig):
        self.features, self.tokens, self.config = features, tokens, config

    def _click_targets(self, clicks: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Model-space label (1 positive) and weight (Gaussian footprint of each click) maps, (n, 1, S, S)."""
        size = self.features.queries.shape[-1]
        h, w, n = clicks.shape
        label = np.zeros((n, 1, size, size), dtype=np.float32)
        weight = np.zeros((n, 1, size, size), dtype=np.float32)
        grid = np.arange(size, dtype=np.float32)
        for i, j, z in np.argwhere(clicks > 0):
            r, c = (i + 0.5) * size / h - 0.5, (j + 0.5) * size / w - 0.5
            bump = np.exp(-((grid[:, None] - r) ** 2 + (grid[None, :] - c) ** 2) / (2 * self.config.click_radius**2))
            stronger = bump > weight[z, 0]
            weight[z, 0][stronger] = bump[stronger]
            label[z, 0][stronger] = 1.0 if clicks[i, j, z] == POSITIVE else 0.0
        return torch.from_numpy(label), torch.from_numpy(weight)

    def tune(self, probability: np.ndarray, clicks: np.ndarray, slices: Sequence[int]) -> torch.Tensor:
        """Tokens tuned on the clicked slices: click loss + BCE towards the current probability elsewhere."""
        rows = list(slices)
        model, device = self.features.model, self.features.device
        keep = _to_grid(probability[:, :, rows], self.features.queries.shape[-1]).clamp(0, 1).to(device)
        label, weight = (t.to(device) for t in self._click_targets(clicks[:, :, rows]))
        tokens = self.tokens.detach().clone().to(device).requires_grad_(True)
        optimizer = torch.optim.Adam([tokens], lr=self.config.tuning_lr)
        flags = [p.requires_grad for p in model.parameters()]
        try:
            for p in model.parameters():
                p.requires_grad_(False)
            for _ in range(self.config.tuning_steps):
                optimizer.zero_grad()
                logits = self.features.decode(rows, tokens)
                keep_loss = (F.binary_cross_entropy_with_logits(logits, keep, reduction="none") * (1 - weight)).mean()
                click_loss = (F.binary_cross_entropy_with_logits(logits, label, reduction="none") * weight).sum() \
                    / weight.sum().clamp_min(1e-6)
                (keep_loss + self.config.click_weight * click_loss).backward()
                optimizer.step()
        finally:
            for p, flag in zip(model.parameters(), flags, strict=True):
                p.requires_grad_(flag)
        return tokens.detach()

    def predict(self, tokens: torch.Tensor, slices: Sequence[int], shape: tuple[int, int]) -> np.ndarray:
        """Probabilities (H, W, n) of the given slices with tuned tokens."""
        with torch.no_grad():
            probability = torch.sigmoid(self.features.decode(list(slices), tokens).float()).cpu()
        return _from_grid(probability, shape)


class LearnedClicks:
    """The click refiner on a query's slices, fed with the IRIS pixel features of `features`; `grid_features`
    (default: the same) are the model-grid ones that carry a clicked slice to its neighbours in a volume."""

    def __init__(self, refiner: ClickRefiner, features: QueryFeatures, grid_features: QueryFeatures | None = None):
        self.refiner, self.features = refiner.eval(), features
        self.grid_features = grid_features or features

    @property
    def sequential(self) -> bool:
        """Whether the refiner corrects its own previous output step by step (see `refine_steps`)."""
        return self.refiner.config.sequential

    def refine(self, probability: np.ndarray, clicks: np.ndarray, slices: Sequence[int],
               start: np.ndarray | None = None) -> np.ndarray:
        """Refined (H, W, n) probabilities of the given slices; the change is computed on the model grid and
        added to `probability` at its own resolution. A sequential refiner also reads the one-shot `start`."""
        rows = list(slices)
        queries = self.features.queries
        size = queries.shape[-1]
        current = _to_grid(probability, size).clamp(0, 1)
        one_shot = None if start is None else _to_grid(start, size).clamp(0, 1)
        with torch.no_grad():
            inputs = click_inputs(queries[rows].float(), current, self.features.pixels(rows).float().cpu(),
                                  clicks_to_grid(clicks, size), self.refiner.config, one_shot)
            refined = torch.sigmoid(self.refiner(inputs))
        change = _from_grid(refined - current, probability.shape[:2])
        return np.clip(probability + change, 0.0, 1.0)


def learned_clicks(refiner: ClickRefiner | None, fine_refiner: ClickRefiner | None, grid: QueryFeatures,
                   fine: Callable[[], QueryFeatures], input_scale: int, config: RefineConfig,
                   sequential_refiner: ClickRefiner | None = None, depth: int = 1
                   ) -> tuple[LearnedClicks | None, RefineConfig]:
    """The click refiner for a result of `depth` slices read at `input_scale` (None without one) and the settings
    it runs with: on a result read at FINE_SCALE the fine refiner where there is one, reading the fine input's
    features (`fine()`) with `fine_learned_weight` on thin slices; on a single slice read at the input size the
    sequential refiner where there is one and `config.sequential`; else the model-grid refiner on the model-grid
    features `grid`."""
    if input_scale == FINE_SCALE and fine_refiner is not None:
        fine_config = replace(config, thin_learned_weight=config.fine_learned_weight)
        return LearnedClicks(fine_refiner, fine(), grid), fine_config
    if input_scale == 1 and depth == 1 and config.sequential and sequential_refiner is not None:
        return LearnedClicks(sequential_refiner, grid), replace(config, learned_weight=config.sequential_learned_weight)
    return (None if refiner is None else LearnedClicks(refiner, grid)), config


def spread_clicked_slices(features: QueryFeatures, probability: np.ndarray, clicked: Sequence[int],
                          config: RefineConfig) -> np.ndarray:
    """(H, W, Z) probability after each clicked slice's mask served as a support for the unclicked slices around
    it: embeddings mixed as in propagation (`plan_sources`), the new prediction blended in by distance."""
    model, queries, device = features.model, features.queries, features.device
    size, depth = queries.shape[-1], probability.shape[2]
    masks = _to_grid(probability[:, :, list(clicked)], size) >= config.threshold
    tokens: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for z, mask in zip(clicked, masks, strict=True):
            if int(mask.sum()) >= 4:
                tokens[z] = model.encode_task(queries[z : z + 1].to(device), mask[None].float().to(device))[0]
    present = {z: ({0} if z in tokens else set()) for z in clicked}
    rows, mixes, weights = [], [], []
    for z, (plan,) in plan_sources(list(clicked), present, depth, 1).items():
        if not plan:
            continue
        weight = config.spread_weight * float(np.exp(-min(abs(z - p) for p, _ in plan) / config.spread_decay))
        if weight >= config.spread_min:
            rows.append(z)
            mixes.append(sum(w * tokens[p] for p, w in plan))
            weights.append(weight)
    out = probability.copy()
    if not rows:
        return out
    with torch.no_grad():
        logits = torch.cat([features.decode(rows[i : i + 8], torch.stack(mixes[i : i + 8]))
                            for i in range(0, len(rows), 8)])
    predicted = _from_grid(torch.sigmoid(logits.float()).cpu(), probability.shape[:2])
    blend = np.asarray(weights, dtype=np.float32)
    out[:, :, rows] = (1.0 - blend) * out[:, :, rows] + blend * predicted
    return out


def _windows(clicked: Sequence[int], reach: int, depth: int) -> list[slice]:
    """The slice ranges within `reach` of a clicked slice, overlapping ones merged (in slice order)."""
    merged: list[list[int]] = []
    for z in clicked:
        lo, hi = max(0, z - reach), min(depth, z + reach + 1)
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return [slice(lo, hi) for lo, hi in merged]


def refine_slab(image: np.ndarray, probability: np.ndarray, clicks: np.ndarray, config: RefineConfig,
                tuner: ClickTuner | None = None, sampling: tuple[float, float, float] = (1.0, 1.0, 1.0),
                learned: LearnedClicks | None = None, start: np.ndarray | None = None,
                newest: np.ndarray | None = None) -> np.ndarray:
    """Refined probability of one class on canonical (H, W, Z) arrays (Z = 1 for a 2D image). For one step of a
    sequential refiner `probability` is the previous step's output, `start` the one-shot prediction (default:
    `probability`) and `newest` the clicks of this step, which the local edit reads (default: all `clicks`)."""
    if not (clicks > 0).any():
        raise IrisInputError("no clicks given: click inside a missed region or on a false positive")
    clicked = sorted({int(z) for z in np.argwhere(clicks > 0)[:, 2]})
    reach = config.neighbour_slices
    windows = _windows(clicked, reach, clicks.shape[2])
    rows = [z for window in windows for z in range(window.start, window.stop)]
    out = probability.astype(np.float32, copy=True)
    if config.method == "disc":
        return honour(disc_edit(out, clicks, config), clicks, config.threshold)
    thin = [_is_thin(probability[:, :, z], config) for z in clicked] if config.method == "learned" else []
    tuned_first = config.method in ("tuning", "combined") or (
        config.method == "learned" and config.learned_tuning and tuner is not None and not all(thin)
        and int((clicks > 0).sum()) >= config.learned_tuning_clicks
        and (clicks.shape[2] == 1 or config.learned_tuning_in_volumes))
    if tuned_first:
        if tuner is None:
            raise IrisInputError(f"refinement method '{config.method}' needs the result's task embedding; "
                                 "use method 'local' for a mask without one")
        tokens = tuner.tune(out, clicks, clicked)
        tuned = tuner.predict(tokens, rows, out.shape[:2])
        gap = np.array([min(abs(z - c) for c in clicked) for z in rows], dtype=np.float32)
        blend = 1.0 - gap / (reach + 1)  # 1 on a clicked slice, 1 / (reach + 1) at the edge of its window
        out[:, :, rows] = (1.0 - blend) * out[:, :, rows] + blend * tuned
    for z, is_thin in zip(clicked, thin, strict=False):  # `thin` is empty unless the method is "learned"
        if is_thin and config.thin_keep < 1.0:
            out[:, :, z] = drop_halo(image[:, :, z], out[:, :, z], clicks[:, :, z], config.thin_keep, config.threshold)
    if config.method == "learned" and learned is None:
        raise IrisInputError("refinement method 'learned' needs click refiner weights trained for this model; "
                             f"use method '{FALLBACK_METHOD}'")
    learned_needs_local = config.learned_weight < 1.0 or len(rows) > len(clicked) or any(thin)
    if config.method in ("local", "combined") or (config.method == "learned" and learned_needs_local):
        for window in windows:
            edit_clicks = clicks if newest is None else newest
            out[:, :, window] = local_edit(image[:, :, window], out[:, :, window], edit_clicks[:, :, window], config,
                                           sampling)
    if learned is not None and config.method == "learned":
        one_shot = None
        if learned.sequential:
            one_shot = (probability if start is None else start)[:, :, clicked].astype(np.float32)
        refined = learned.refine(probability[:, :, clicked].astype(np.float32), clicks[:, :, clicked], clicked,
                                 one_shot)
        weight = np.where(thin, config.thin_learned_weight, config.learned_weight).astype(np.float32)
        out[:, :, clicked] = weight * refined + (1.0 - weight) * out[:, :, clicked]
        if config.spread_decay > 0 and clicks.shape[2] > 1:
            out = spread_clicked_slices(learned.grid_features, honour(out, clicks, config.threshold), clicked, config)
    return honour(out, clicks, config.threshold)


def _shrink(array: np.ndarray, size: int) -> np.ndarray:
    """(H, W, n) -> (size, size, n), area-averaged."""
    return _from_grid(_to_grid(array, size, "area"), (size, size))


def refine_on_grid(image: np.ndarray, probability: np.ndarray, clicks: np.ndarray, config: RefineConfig,
                   size: int | None, tuner: ClickTuner | None = None,
                   sampling: tuple[float, float, float] = (1.0, 1.0, 1.0),
                   learned: LearnedClicks | None = None, start: np.ndarray | None = None,
                   newest: np.ndarray | None = None) -> np.ndarray:
    """`refine_slab` on the (H, W, Z) slab's size x size in-plane view (`RefineConfig.model_grid`, where the slab
    is larger); its change is resized back bilinearly and added to the slab's own probability (so detail the view
    cannot hold, e.g. brush edits, survives where nothing changed), every click honoured on the slab's own grid.
    None: on its own grid. `start` and `newest` (one step of a sequential refiner) as in `refine_slab`."""
    h, w = image.shape[:2]
    if size is None or not config.model_grid or max(h, w) <= size:
        return refine_slab(image, probability, clicks, config, tuner, sampling, learned, start, newest)
    if not (clicks > 0).any():
        raise IrisInputError("no clicks given: click inside a missed region or on a false positive")
    view_sampling = (1.0, 1.0, sampling[2] * 2.0 * size / (h + w))  # z spacing in units of the view's pixels
    view_clicks = np.moveaxis(clicks_to_grid(clicks, size), 0, 2)
    view_newest = None if newest is None else np.moveaxis(clicks_to_grid(newest, size), 0, 2)
    view_start = None if start is None else _shrink(start, size)
    current = _shrink(probability, size)
    change = refine_slab(_shrink(image, size), current, view_clicks, config, tuner, view_sampling, learned,
                         view_start, view_newest) - current
    return honour(np.clip(probability + _from_grid(_to_grid(change, size), (h, w)), 0.0, 1.0), clicks,
                  config.threshold)


# ----------------------------------------------------------------------------------- volumes


def refine_segmentation(segmenter: IrisSegmenter, query: Volume, result: VolumeSegmentation | None,
                        clicks: Sequence[Click], config: RefineConfig | None = None,
                        cache: FeatureCache | None = None, steps: Sequence[int] | None = None,
                        series: ClickSeries | None = None) -> VolumeSegmentation:
    """`result` refined by clicks on `query`'s own grid; classes without clicks keep their masks. With `cache`,
    the query's model features are kept for the next call on the same query. A sequential refiner reads the
    clicks in steps (`click_steps`, `steps` clicks each where given); with `series` its output after each step
    is kept, so that the next call with one more step refines only that one."""
    if result is None:
        raise IrisInputError("nothing to refine yet: segment the image first, then click on its errors")
    config = replace(config or RefineConfig(), threshold=segmenter.config.threshold)
    names = list(result.class_names)
    probabilities = np.asarray(result.probabilities, dtype=np.float32)
    masks = np.asarray(result.masks).astype(bool)
    if not names or probabilities.shape != (len(names), *query.shape) or masks.shape != probabilities.shape:
        raise IrisInputError(f"the result (probabilities {probabilities.shape}, classes {names}) is empty or "
                             f"does not belong to this image of shape {query.shape}")
    validate_clicks(clicks, query.shape, names)
    begin = time.perf_counter()
    features_at = (cache or FeatureCache()).for_query(segmenter, query)
    features = features_at(1)
    canonical, transform = to_canonical(query)
    image = normalize_intensity(canonical.array, canonical.modality, segmenter.preprocess)
    sampling = (1.0, 1.0, 1.0)
    if image.ndim == 2:
        image = image[..., None]
    else:
        spacing = canonical.spacing
        sampling = (1.0, 1.0, float(spacing[2]) / max(1e-6, (float(spacing[0]) + float(spacing[1])) / 2))
    if config.method == "learned" and (segmenter.click_refiner is None or segmenter.is_3d):
        warnings.warn(f"no click refiner trained for model {segmenter.model_version}: refining with "
                      f"'{FALLBACK_METHOD}' instead of 'learned'", stacklevel=2)
        config = replace(config, method=FALLBACK_METHOD)
    learned = None
    if config.method == "learned":
        learned, config = learned_clicks(segmenter.click_refiner, segmenter.fine_click_refiner, features,
                                         lambda: features_at(FINE_SCALE), result.input_scale, config,
                                         segmenter.sequential_click_refiner, image.shape[2])
    view = None if segmenter.is_3d else segmenter.model.config.image_size * result.input_scale
    base = np.where(masks != (probabilities >= config.threshold), masks.astype(np.float32), probabilities)
    refined, new_masks = base.copy(), masks.copy()
    flat = query.ndim == 2

    def canonical_slab(array: np.ndarray) -> np.ndarray:
        """A query-grid array on the canonical (H, W, Z) grid."""
        moved = transform.apply(array)
        return moved[..., None] if flat else moved

    embedding = result.embedding
    series = series or ClickSeries()
    series_steps = click_steps(clicks, steps)
    for k, name in enumerate(names):
        own = [c for c in clicks if (c.class_name or names[0]) == name]
        if not own:
            continue
        probability = canonical_slab(base[k])
        tuner = None
        if embedding is not None and name in embedding.class_names and not segmenter.is_3d \
                and embedding.model_version == segmenter.model_version:
            tuner = ClickTuner(features, embedding.select([name]).tokens, config)
        if learned is not None and learned.sequential:
            own_steps = [step for step in series_steps if (step[0].class_name or names[0]) == name]
            keys = ClickSeries.keys(digest(segmenter.model_version, str(id(learned.refiner)), repr(config), name,
                                           str(query.shape), np.asarray(query.affine), query.array, probability),
                                    own_steps)
            done, previous = series.latest(keys)
            step_marks = [canonical_slab(click_map(step, query.shape)) for step in own_steps]
            outputs = refine_steps(image, probability, step_marks, config, view, learned, tuner, sampling, done,
                                   previous)
            for key, output in zip(keys[done:], outputs, strict=True):
                series.keep(key, output)
            out = outputs[-1] if outputs else previous
        else:
            out = refine_on_grid(image, probability, canonical_slab(click_map(own, query.shape)), config, view,
                                 tuner, sampling, learned)
        refined[k] = transform.invert(out[..., 0] if flat else out)
        new_masks[k] = refined[k] >= config.threshold
    timings = {**result.timings, "refine": time.perf_counter() - begin}
    return VolumeSegmentation(refined, new_masks, names, result.strategy, result.model_version, timings,
                              list(result.loss_curve), embedding, result.input_scale, result.slice_stride)
