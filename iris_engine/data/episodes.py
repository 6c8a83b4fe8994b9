"""Episodic sampler: mixed few-shot tasks as batched tensors.

Real-label episodes take support and query from different patients; same-volume episodes (propagation) take
them a few slices apart in one volume; superpixel and synthetic episodes cannot be memorised (`pseudo_tasks`).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from iris_engine.data.catalog import dataset_info
from iris_engine.data.pseudo_tasks import (
    PseudoTaskConfig,
    SuperpixelCache,
    augment_intensities,
    augment_targets,
    choose_segments,
    follow_target,
)
from iris_engine.data.slices import SliceBank
from iris_engine.data.splits import Split
from iris_engine.data.synthetic import SynthTaskGenerator
from iris_engine.errors import IrisInputError

Task = tuple[str, str]


@dataclass
class EpisodeConfig:
    """How episodes are drawn and augmented."""

    supports_per_episode: int = 1
    queries_per_episode: int = 1
    max_classes: int = 3
    synthetic_fraction: float = 0.3
    superpixel_fraction: float = 0.0
    same_volume_fraction: float = 0.0
    self_pair_fraction: float = 0.0
    task_augment_prob: float = 0.0
    max_volume_gap: int = 8
    pseudo: PseudoTaskConfig = field(default_factory=PseudoTaskConfig)
    class_drop_prob: float = 0.2
    query_positive_prob: float = 0.9
    min_support_area: int = 4
    min_slice_gap: int = 10
    dataset_weight_power: float = 0.5
    augment: bool = True
    aug_prob: float = 0.8
    aug_flip: bool = True
    aug_affine: bool = True
    aug_intensity: bool = True
    aug_noise: bool = True
    max_rotation_deg: float = 15.0
    scale_range: tuple[float, float] = (0.85, 1.15)
    max_translation: float = 0.05

    @classmethod
    def from_train_config(cls, cfg: object, **overrides: object) -> EpisodeConfig:
        """Take K, Q, L and the synthetic fraction from a TrainConfig."""
        values = {
            "supports_per_episode": cfg.supports_per_episode,
            "queries_per_episode": cfg.queries_per_episode,
            "max_classes": cfg.max_classes_per_episode,
            "synthetic_fraction": cfg.synthetic_fraction,
            "superpixel_fraction": cfg.superpixel_fraction,
            "same_volume_fraction": cfg.same_volume_fraction,
            "self_pair_fraction": cfg.self_pair_fraction,
            "task_augment_prob": cfg.task_augment_prob,
        }
        values.update(overrides)
        return cls(**values)


@dataclass
class EpisodeBatch:
    """B episodes. Masks are {0,1} float32; slot l of episode b is task_names[b][l] (None when invalid)."""

    support_images: torch.Tensor
    support_masks: torch.Tensor
    query_images: torch.Tensor
    query_masks: torch.Tensor
    class_valid: torch.Tensor
    task_names: list[list[Task | None]]
    support_cases: list[list[str]]
    query_cases: list[list[str]]
    same_subject: list[bool] = field(default_factory=list)
    synthetic: list[bool] = field(default_factory=list)

    @property
    def batch_size(self) -> int:
        return int(self.support_images.shape[0])


class _NoQueryError(Exception):
    """No slice is left for a query once the supports are chosen (retry with another anchor)."""


@dataclass
class _Episode:
    """One episode before tensor assembly (indices into the bank, or synthetic arrays).

    Slot j's target is `labels == values[j]`, or `masks[:, j]` when explicit masks are given.
    """

    images: np.ndarray
    labels: np.ndarray
    values: list[int]
    tasks: list[Task]
    support_patients: list[str]
    query_patients: list[str]
    same_subject: bool = False
    synthetic: bool = False
    masks: np.ndarray | None = None


def training_rows(bank: SliceBank, split: Split) -> np.ndarray:
    """The slices of the split's training cases outside its held-out datasets: all that training samples."""
    keep = np.zeros(len(bank), dtype=bool)
    for name in bank.datasets:
        if name in split.held_out_datasets:
            continue
        rows = bank.dataset_slices(name)
        keep[rows[np.isin(bank.case_ids[rows], split.train_cases.get(name, []))]] = True
    return np.flatnonzero(keep)


class EpisodeSampler:
    """Draws training episodes from the TRAIN cases and TRAIN classes of a Split (plus synthetic tasks)."""

    def __init__(
        self,
        bank: SliceBank,
        split: Split,
        cfg: EpisodeConfig | None = None,
        seed: int | np.random.Generator = 0,
    ) -> None:
        self.bank, self.split = bank, split
        self.cfg = cfg or EpisodeConfig()
        if self.cfg.supports_per_episode < 1 or self.cfg.queries_per_episode < 1 or self.cfg.max_classes < 1:
            raise ValueError("K, Q and L must be >= 1")
        self.rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        self.torch_gen = torch.Generator().manual_seed(int(self.rng.integers(2**62)))
        self.synth = SynthTaskGenerator(bank.size)
        keys = np.char.add(np.char.add(bank.dataset_index.astype(str), "/"), bank.patient_ids)
        _, self.patient_code = np.unique(keys, return_inverse=True)
        self.datasets: list[str] = []
        self.class_slices: dict[str, dict[int, np.ndarray]] = {}
        self.train_slices: dict[str, np.ndarray] = {}
        self.single_subject: dict[str, bool] = {}
        self.volumetric: dict[str, bool] = {}
        for name in bank.datasets:
            self._index_dataset(name)
        self.superpixels = SuperpixelCache(bank.images, self.cfg.pseudo)
        self.pseudo_rows = training_rows(bank, split)  # every training slice, labelled or not
        if not self.datasets and self.cfg.synthetic_fraction < 1.0:
            raise IrisInputError("no dataset of the bank has trainable classes in this split")
        sizes = np.array([len(self.train_slices[d]) for d in self.datasets], dtype=np.float64)
        weights = sizes**self.cfg.dataset_weight_power
        self.dataset_weights = weights / weights.sum() if len(weights) else weights

    def _index_dataset(self, name: str) -> None:
        """Record the train slices and sampleable classes of one dataset."""
        train_cases = set(self.split.train_cases.get(name, []))
        if name in self.split.held_out_datasets or not train_cases:
            return
        idx = self.bank.dataset_slices(name)
        idx = idx[np.isin(self.bank.case_ids[idx], list(train_cases))]
        n_patients = len(np.unique(self.patient_code[idx]))
        single = n_patients == 1
        if single and not dataset_info(name).single_subject:
            raise IrisInputError(
                f"{name}: all training slices come from one patient; support and query must come from "
                "different patients (mark the dataset single_subject in the catalog to allow slice gaps)"
            )
        per_class: dict[int, np.ndarray] = {}
        for value, cname in enumerate(self.bank.class_names[name], start=1):
            if not self.split.is_train_class(name, cname):
                continue
            cand = idx[self.bank.areas[idx, value] >= self.cfg.min_support_area]
            if len(cand) == 0:
                continue
            if single:
                gaps = np.abs(self.bank.slice_index[cand][:, None] - self.bank.slice_index[idx][None, :])
                if not (gaps >= self.cfg.min_slice_gap).any():
                    continue
            per_class[value] = cand
        if per_class:
            self.datasets.append(name)
            self.class_slices[name] = per_class
            self.train_slices[name] = idx
            self.single_subject[name] = single
            self.volumetric[name] = len(np.unique(self.bank.case_ids[idx])) < len(idx)

    def _volume_neighbours(self, row: int, max_gap: int) -> np.ndarray:
        """Other slices of the same volume within max_gap slices of `row`."""
        bank = self.bank
        same = np.flatnonzero((bank.case_ids == bank.case_ids[row]) & (bank.dataset_index == bank.dataset_index[row]))
        gap = np.abs(bank.slice_index[same] - bank.slice_index[row])
        return same[(gap >= 1) & (gap <= max_gap)]

    # ----------------------------------------------------------------- episodes

    def _choose(self, pool: np.ndarray, n: int = 1) -> np.ndarray:
        """n distinct elements of pool (with replacement when the pool is too small)."""
        return self.rng.choice(pool, n, replace=len(pool) < n)

    def _real_episode(self, name: str) -> _Episode:
        """One episode of a real dataset; support and query patients differ (or slices are far apart)."""
        cfg, bank = self.cfg, self.bank
        v1, anchor = self._anchor(name)
        chosen = self._classes_with(name, anchor, v1)
        pool = self.train_slices[name]
        single = self.single_subject[name]
        supports = [anchor]
        for _ in range(cfg.supports_per_episode - 1):
            supports.append(self._extra_support(pool, chosen, supports, single))
        sup = np.array(supports)
        if single:
            gap = np.abs(bank.slice_index[pool][:, None] - bank.slice_index[sup][None, :]).min(axis=1)
            allowed = pool[gap >= cfg.min_slice_gap]
        else:
            allowed = pool[~np.isin(self.patient_code[pool], self.patient_code[sup])]
        if len(allowed) == 0:
            raise _NoQueryError(name)
        positive = allowed[bank.areas[allowed, v1] > 0]
        qpool = positive if len(positive) and self.rng.random() < cfg.query_positive_prob else allowed
        queries = self._choose(qpool, cfg.queries_per_episode)
        if not single and np.isin(self.patient_code[queries], self.patient_code[sup]).any():
            raise AssertionError(f"{name}: a query shares a patient with a support")
        rows = np.concatenate([sup, queries])
        return _Episode(
            images=bank.images[rows],
            labels=bank.labels[rows],
            values=chosen,
            tasks=[(name, bank.class_names[name][v - 1]) for v in chosen],
            support_patients=[str(bank.patient_ids[i]) for i in sup],
            query_patients=[str(bank.patient_ids[i]) for i in queries],
            same_subject=single,
        )

    def _extra_support(self, pool: np.ndarray, chosen: list[int], supports: list[int], single: bool) -> int:
        """Another support containing all chosen classes, preferably from a new patient."""
        bank, cfg = self.bank, self.cfg
        has_all = (bank.areas[pool][:, chosen] >= cfg.min_support_area).all(axis=1)
        cand = pool[has_all & ~np.isin(pool, supports)]
        if single:
            # stay near the anchor so that slices far from every support remain for the queries
            near = np.abs(bank.slice_index[cand] - bank.slice_index[supports[0]]) < cfg.min_slice_gap
            cand = cand[near & (self.patient_code[cand] == self.patient_code[supports[0]])]
        else:
            new = cand[~np.isin(self.patient_code[cand], self.patient_code[supports])]
            cand = new if len(new) else cand
        if len(cand) == 0:
            return supports[-1]
        return int(self.rng.choice(cand))

    def _superpixel_episode(self) -> _Episode:
        """Random superpixels as targets; the query is another augmentation of the slice or a nearby slice."""
        cfg = self.cfg
        k, q = cfg.supports_per_episode, cfg.queries_per_episode
        for _ in range(20):
            row = int(self.rng.choice(self.pseudo_rows))
            targets = choose_segments(self.superpixels(row), int(self.rng.integers(1, cfg.max_classes + 1)),
                                      cfg.pseudo, self.rng)
            if targets:
                break
        else:
            raise IrisInputError("no slice with usable superpixels")
        support = np.stack(targets)
        query_row, query = row, support
        neighbours = self._volume_neighbours(row, cfg.pseudo.max_slice_gap)
        if len(neighbours) and self.rng.random() < cfg.pseudo.neighbour_prob:
            query_row = int(self.rng.choice(neighbours))
            segments = self.superpixels(query_row)
            query = np.stack([follow_target(t, segments, cfg.pseudo.follow_overlap) for t in targets])
        rows = [row] * k + [query_row] * q
        masks = np.stack([support] * k + [query] * q)
        tag = f"superpixel_{row}"
        return _Episode(
            images=self.bank.images[rows],
            labels=np.zeros((k + q, *support.shape[1:]), dtype=np.uint8),
            values=list(range(1, len(targets) + 1)),
            tasks=[("superpixel", f"segment_{j}") for j in range(len(targets))],
            support_patients=[tag] * k,
            query_patients=[tag] * q,
            same_subject=True,
            synthetic=True,
            masks=masks,
        )

    def _anchor(self, name: str) -> tuple[int, int]:
        """A class value of the dataset and a training slice showing it."""
        per_class = self.class_slices[name]
        value = int(self.rng.choice(list(per_class)))
        return value, int(self.rng.choice(per_class[value]))

    def _classes_with(self, name: str, anchor: int, value: int) -> list[int]:
        """`value` and up to max_classes - 1 other classes large enough on the anchor slice."""
        cfg, bank = self.cfg, self.bank
        present = [v for v in self.class_slices[name]
                   if v != value and bank.areas[anchor, v] >= cfg.min_support_area]
        n_extra = min(int(self.rng.integers(0, cfg.max_classes)), len(present))
        return [value, *[int(v) for v in self.rng.choice(present, n_extra, replace=False)]] if n_extra else [value]

    def _one_patient_episode(self, name: str, anchor: int, chosen: list[int], queries: list[int]) -> _Episode:
        """The anchor slice as every support, and query rows of the same patient."""
        cfg, bank = self.cfg, self.bank
        rows = [anchor] * cfg.supports_per_episode + queries
        patient = str(bank.patient_ids[anchor])
        return _Episode(
            images=bank.images[rows],
            labels=bank.labels[rows],
            values=chosen,
            tasks=[(name, bank.class_names[name][v - 1]) for v in chosen],
            support_patients=[patient] * cfg.supports_per_episode,
            query_patients=[patient] * cfg.queries_per_episode,
            same_subject=True,
        )

    def _same_volume_episode(self, name: str) -> _Episode:
        """Support and query a few slices apart in one volume (the query may lie beyond the structure)."""
        value, anchor = self._anchor(name)
        neighbours = self._volume_neighbours(anchor, self.cfg.max_volume_gap)
        if len(neighbours) == 0:
            raise _NoQueryError(name)
        chosen = self._classes_with(name, anchor, value)
        return self._one_patient_episode(name, anchor, chosen,
                                         list(self._choose(neighbours, self.cfg.queries_per_episode)))

    def _self_pair_episode(self, name: str) -> _Episode:
        """The support slice is also the query (each image augmented on its own): the support must be read back."""
        value, anchor = self._anchor(name)
        chosen = self._classes_with(name, anchor, value)
        return self._one_patient_episode(name, anchor, chosen, [anchor] * self.cfg.queries_per_episode)

    def _augment_task(self, episode: _Episode) -> _Episode:
        """Task augmentation of a real episode: new targets or new intensities, alike for support and query."""
        if self.rng.random() < 0.5:
            masks = np.stack([episode.labels == v for v in episode.values], axis=1)
            masks = augment_targets(masks, self.cfg.pseudo, self.rng)
            tasks = [(episode.tasks[0][0], "augmented_target")] * masks.shape[1]
            values = list(range(1, masks.shape[1] + 1))
            return _Episode(episode.images, episode.labels, values, tasks, episode.support_patients,
                            episode.query_patients, episode.same_subject, True, masks)
        images = augment_intensities(episode.images.astype(np.float32), self.rng)
        return _Episode(images, episode.labels, episode.values, episode.tasks, episode.support_patients,
                        episode.query_patients, episode.same_subject, True, episode.masks)

    def _synthetic_episode(self) -> _Episode:
        """K+Q independent synthetic label maps rendered with one shared intensity table."""
        cfg = self.cfg
        k, q = cfg.supports_per_episode, cfg.queries_per_episode
        for _ in range(20):
            n = self.synth.sample_num_labels(self.rng)
            style = self.synth.sample_style(self.rng, n)
            labels = np.stack([self.synth.sample_label_map(self.rng, n) for _ in range(k + q)])
            areas = np.stack([np.bincount(lab.ravel(), minlength=n)[:n] for lab in labels[:k]])
            ok = [v for v in range(1, n) if (areas[:, v] >= cfg.min_support_area).all()]
            if ok:
                break
        else:
            raise RuntimeError("synthetic generator failed to place any label in the supports")
        n_cls = min(int(self.rng.integers(1, cfg.max_classes + 1)), len(ok))
        chosen = [int(v) for v in self.rng.choice(ok, n_cls, replace=False)]
        images = np.stack([self.synth.render(lab, style, self.rng) for lab in labels])
        tag = f"synthetic_{int(self.rng.integers(2**31))}"
        return _Episode(
            images=images,
            labels=labels,
            values=chosen,
            tasks=[("synthetic", f"label_{v}") for v in chosen],
            support_patients=[f"{tag}_s{i}" for i in range(k)],
            query_patients=[f"{tag}_q{i}" for i in range(q)],
            synthetic=True,
        )

    def sample_episode(self) -> _Episode:
        """One episode: synthetic, superpixel, or a real dataset's (across patients, within one volume, or the
        support slice itself as the query)."""
        cfg = self.cfg
        draw = self.rng.random()
        if not self.datasets or draw < cfg.synthetic_fraction:
            return self._synthetic_episode()
        if draw < cfg.synthetic_fraction + cfg.superpixel_fraction and len(self.pseudo_rows):
            return self._superpixel_episode()
        name = self.datasets[int(self.rng.choice(len(self.datasets), p=self.dataset_weights))]
        for _ in range(20):
            try:
                if cfg.self_pair_fraction and self.rng.random() < cfg.self_pair_fraction:  # else no draw taken
                    episode = self._self_pair_episode(name)
                elif self.volumetric[name] and self.rng.random() < cfg.same_volume_fraction:
                    episode = self._same_volume_episode(name)
                else:
                    episode = self._real_episode(name)
            except _NoQueryError:
                continue
            if self.rng.random() < cfg.task_augment_prob:
                episode = self._augment_task(episode)
            return episode
        raise IrisInputError(f"{name}: could not place a query away from the supports in 20 tries")

    def sample_batch(self, batch_size: int) -> EpisodeBatch:
        """B episodes, each its own task, as tensors (augmented when cfg.augment)."""
        cfg = self.cfg
        k, q, n_slots, s = cfg.supports_per_episode, cfg.queries_per_episode, cfg.max_classes, self.bank.size
        images = np.zeros((batch_size, k + q, 1, s, s), dtype=np.float32)
        masks = np.zeros((batch_size, k + q, n_slots, s, s), dtype=np.float32)
        valid = np.zeros((batch_size, n_slots), dtype=bool)
        tasks: list[list[Task | None]] = []
        episodes = [self.sample_episode() for _ in range(batch_size)]
        for b, ep in enumerate(episodes):
            images[b, :, 0] = ep.images
            keep = np.ones(len(ep.values), dtype=bool)
            if len(ep.values) > 1 and self.rng.random() < cfg.class_drop_prob:
                drop = self.rng.choice(len(ep.values), int(self.rng.integers(1, len(ep.values))), replace=False)
                keep[drop] = False
            row: list[Task | None] = [None] * n_slots
            for j, (value, task) in enumerate(zip(ep.values, ep.tasks, strict=True)):
                if keep[j]:
                    masks[b, :, j] = ep.labels == value if ep.masks is None else ep.masks[:, j]
                    valid[b, j] = True
                    row[j] = task
            tasks.append(row)
        img_t, mask_t = torch.from_numpy(images), torch.from_numpy(masks)
        if cfg.augment:
            img_t, mask_t = self._augment(img_t, mask_t)
        valid_t = torch.from_numpy(valid)
        lost = (mask_t[:, :k].flatten(3).sum(-1) == 0).any(dim=1) & valid_t
        if lost.any():
            valid_t = valid_t & ~lost
            mask_t = mask_t * valid_t[:, None, :, None, None]
            for b, j in lost.nonzero().tolist():
                tasks[b][j] = None
        return EpisodeBatch(
            support_images=img_t[:, :k].contiguous(),
            support_masks=mask_t[:, :k].contiguous(),
            query_images=img_t[:, k:].contiguous(),
            query_masks=mask_t[:, k:].contiguous(),
            class_valid=valid_t,
            task_names=tasks,
            support_cases=[ep.support_patients for ep in episodes],
            query_cases=[ep.query_patients for ep in episodes],
            same_subject=[ep.same_subject for ep in episodes],
            synthetic=[ep.synthetic for ep in episodes],
        )

    # ------------------------------------------------------------ augmentation

    def _uniform(self, n: int, lo: float, hi: float) -> torch.Tensor:
        """n uniform samples from the sampler's torch generator."""
        return lo + (hi - lo) * torch.rand(n, generator=self.torch_gen)

    def _apply(self, n: int) -> torch.Tensor:
        """Per-image Bernoulli(aug_prob) switches."""
        return torch.rand(n, generator=self.torch_gen) < self.cfg.aug_prob

    def _augment(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flips (shared within an episode), then per image affine, gamma, scale/shift and noise."""
        cfg = self.cfg
        b, m, _, s, _ = images.shape
        if cfg.aug_flip:
            for dim in (-1, -2):
                flip = torch.rand(b, generator=self.torch_gen) < 0.5
                images[flip] = images[flip].flip(dim)
                masks[flip] = masks[flip].flip(dim)
        x = images.reshape(b * m, 1, s, s)
        y = masks.reshape(b * m, -1, s, s)
        n = b * m
        if cfg.aug_affine:
            on = self._apply(n).float()
            angle = self._uniform(n, -1, 1) * math.radians(cfg.max_rotation_deg) * on
            scale = 1 + (self._uniform(n, *cfg.scale_range) - 1) * on
            shift = self._uniform(2 * n, -cfg.max_translation, cfg.max_translation).view(n, 2) * on[:, None]
            cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
            theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
            grid = F.affine_grid(theta, [n, 1, s, s], align_corners=False)
            low = x.amin(dim=(1, 2, 3), keepdim=True)
            x = F.grid_sample(x - low, grid, mode="bilinear", align_corners=False) + low
            y = F.grid_sample(y, grid, mode="nearest", align_corners=False)
        if cfg.aug_intensity:
            on = self._apply(n)[:, None, None, None]
            low = x.amin(dim=(1, 2, 3), keepdim=True)
            span = (x.amax(dim=(1, 2, 3), keepdim=True) - low).clamp_min(1e-6)
            gamma = torch.exp(self._uniform(n, -0.3, 0.3)).view(n, 1, 1, 1)
            x_g = ((x - low) / span).clamp(0, 1) ** gamma * span + low
            a = self._uniform(n, 0.9, 1.1).view(n, 1, 1, 1)
            c = self._uniform(n, -0.1, 0.1).view(n, 1, 1, 1)
            x = torch.where(on, x_g * a + c, x)
        if cfg.aug_noise:
            sigma = self._uniform(n, 0.0, 0.1).view(n, 1, 1, 1) * self._apply(n).view(n, 1, 1, 1)
            x = x + sigma * torch.randn(x.shape, generator=self.torch_gen)
        return x.reshape(images.shape), y.reshape(masks.shape)


# ------------------------------------------------------------------ evaluation


@dataclass
class EvalPair:
    """Fixed supports (from some patients) and one query slice from another patient."""

    support_images: torch.Tensor
    support_masks: torch.Tensor
    query_image: torch.Tensor
    query_mask: torch.Tensor
    support_cases: list[str]
    support_patients: list[str]
    query_case: str
    query_patient: str
    query_slice_index: int


def iter_eval_pairs(
    bank: SliceBank,
    split: Split,
    dataset: str,
    class_name: str,
    n_supports: int = 1,
    seed: int = 0,
    support_from: str = "test",
    min_support_area: int = 4,
) -> Iterator[EvalPair]:
    """Supports: the middle class-slice of n_supports patients; queries: every bank slice of OTHER test patients.

    support_from="train" takes supports from the training cases (needed when the test side has one patient).
    Deterministic for a seed.
    """
    if support_from not in ("test", "train"):
        raise ValueError("support_from must be 'test' or 'train'")
    value = bank.class_value(dataset, class_name)
    idx = bank.dataset_slices(dataset)
    test_idx = idx[np.isin(bank.case_ids[idx], split.test_cases.get(dataset, []))]
    if len(test_idx) == 0:
        raise IrisInputError(f"{dataset}: no test cases in this split (training-only dataset?)")
    src_cases = split.test_cases.get(dataset, []) if support_from == "test" else split.train_cases.get(dataset, [])
    src = idx[np.isin(bank.case_ids[idx], src_cases)]
    src = src[bank.areas[src, value] >= min_support_area]
    patients = sorted(set(bank.patient_ids[src].tolist()))
    rng = np.random.default_rng([seed, zlib.crc32(f"{dataset}/{class_name}".encode())])
    patients = [patients[i] for i in rng.permutation(len(patients))]
    if len(patients) < n_supports:
        raise IrisInputError(f"{dataset}/{class_name}: {len(patients)} patients with the class, need {n_supports}")
    chosen_patients = patients[:n_supports]
    support_rows = []
    for p in chosen_patients:
        rows = src[bank.patient_ids[src] == p]
        rows = rows[np.lexsort((bank.slice_index[rows], bank.case_ids[rows]))]
        support_rows.append(int(rows[len(rows) // 2]))
    queries = test_idx[~np.isin(bank.patient_ids[test_idx], chosen_patients)]
    if len(queries) == 0:
        raise IrisInputError(
            f"{dataset}: no test patient left for queries after taking supports; try support_from='train'"
        )
    queries = queries[np.lexsort((bank.slice_index[queries], bank.case_ids[queries]))]
    sup = np.array(support_rows)
    s_img = torch.from_numpy(bank.images[sup].astype(np.float32))[:, None]
    s_mask = torch.from_numpy((bank.labels[sup] == value).astype(np.float32))[:, None]
    for row in queries:
        yield EvalPair(
            support_images=s_img,
            support_masks=s_mask,
            query_image=torch.from_numpy(bank.images[row].astype(np.float32))[None],
            query_mask=torch.from_numpy((bank.labels[row] == value).astype(np.float32))[None],
            support_cases=[str(bank.case_ids[i]) for i in sup],
            support_patients=list(chosen_patients),
            query_case=str(bank.case_ids[row]),
            query_patient=str(bank.patient_ids[row]),
            query_slice_index=int(bank.slice_index[row]),
        )
