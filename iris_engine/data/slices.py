"""`SliceBank`: every labelled 2D slice of the datasets, normalised and resized to S x S, in memory."""

from __future__ import annotations

import hashlib
import io
import json
import time
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from iris_engine.data.catalog import dataset_info, default_datasets
from iris_engine.data.msd import MSDDataset
from iris_engine.data.shared_paths import REPO_ROOT, shared_data_dir
from iris_engine.errors import IrisInputError
from iris_engine.io.atomic import atomic_write
from iris_engine.preprocess import normalize_intensity

BANK_FORMAT_VERSION = 1
COMPACT_JPEG_QUALITY = 92  # mean error 0.9 of 255 codes; lossless 8 bits (lzma, PNG) took twice the bytes
DEFAULT_CACHE_DIR = REPO_ROOT / "runs" / "cache"


def normalise_intensities(array: np.ndarray, hounsfield: bool = False) -> np.ndarray:
    """The inference normalisation (`preprocess.normalize_intensity`) over a whole volume or image."""
    return normalize_intensity(array, "CT" if hounsfield else "MR")


RESIZE_CHUNK = 256  # slices resized at once: a whole 256 px bank at once took 8 GB more memory (session 28)


def resize_images(images: np.ndarray, size: int, chunk: int = RESIZE_CHUNK) -> np.ndarray:
    """Bilinear (antialiased) resize of (N, H, W) float images to (N, size, size), `chunk` slices at a time."""
    if images.shape[-2:] == (size, size):
        return np.asarray(images, dtype=np.float32)
    antialias = images.shape[-1] > size or images.shape[-2] > size
    out = np.empty((images.shape[0], size, size), dtype=np.float32)
    for start in range(0, images.shape[0], chunk):
        t = torch.from_numpy(np.ascontiguousarray(images[start : start + chunk], dtype=np.float32))[:, None]
        resized = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=antialias)
        out[start : start + chunk] = resized[:, 0].numpy()
    return out


def _resize_label_chunk(labels: np.ndarray, size: int) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))
    values = [int(v) for v in torch.unique(t) if int(v) != 0]
    best = F.interpolate((t == 0).float()[:, None], size=(size, size), mode="area")[:, 0]
    out = torch.zeros(best.shape, dtype=torch.uint8)
    for v in values:
        frac = F.interpolate((t == v).float()[:, None], size=(size, size), mode="area")[:, 0]
        win = frac > best
        out[win] = v
        best = torch.where(win, frac, best)
    return out.numpy()


def resize_labels(labels: np.ndarray, size: int, chunk: int = RESIZE_CHUNK) -> np.ndarray:
    """Resize (N, H, W) label maps to (N, size, size): each pixel takes the label with the largest area (`chunk`
    slices at a time)."""
    if labels.shape[-2:] == (size, size):
        return np.asarray(labels).astype(np.uint8)
    if labels.shape[0] == 0:
        return np.zeros((0, size, size), dtype=np.uint8)
    return np.concatenate([_resize_label_chunk(labels[start : start + chunk], size)
                           for start in range(0, labels.shape[0], chunk)])


def class_areas(labels: np.ndarray, n_values: int) -> np.ndarray:
    """(N, n_values) pixel count of every label value 0 .. n_values - 1 in each of the (N, H, W) label maps."""
    return np.stack([np.bincount(lab.ravel(), minlength=n_values)[:n_values] for lab in labels]).astype(np.int32)


@dataclass
class SliceBank:
    """2D slices at S x S: float16 z-scored images and uint8 label maps with per-slice provenance.

    Label value i (1-based) of a slice of dataset d is class `class_names[d][i - 1]`; `areas[n, i]` is the
    pixel count of value i in slice n (0 = background).
    """

    size: int
    datasets: list[str]
    class_names: dict[str, list[str]]
    modalities: dict[str, str]
    images: np.ndarray
    labels: np.ndarray
    dataset_index: np.ndarray
    case_ids: np.ndarray
    patient_ids: np.ndarray
    slice_index: np.ndarray
    areas: np.ndarray

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def dataset_slices(self, dataset: str) -> np.ndarray:
        """Indices of the slices of one dataset."""
        return np.flatnonzero(self.dataset_index == self.datasets.index(dataset))

    def class_value(self, dataset: str, class_name: str) -> int:
        """Label value of a class in this bank's label maps."""
        return self.class_names[dataset].index(class_name) + 1

    def summary(self) -> dict[str, dict[str, int]]:
        """Per dataset: slices, cases, patients, classes."""
        out = {}
        for d, name in enumerate(self.datasets):
            sel = self.dataset_index == d
            out[name] = {
                "slices": int(sel.sum()),
                "cases": len(set(self.case_ids[sel].tolist())),
                "patients": len(set(self.patient_ids[sel].tolist())),
                "classes": len(self.class_names[name]),
            }
        return out

    def subset(self, rows: np.ndarray) -> SliceBank:
        """The bank of these slices only (same datasets and class tables)."""
        return replace(self, images=self.images[rows], labels=self.labels[rows],
                       dataset_index=self.dataset_index[rows], case_ids=self.case_ids[rows],
                       patient_ids=self.patient_ids[rows], slice_index=self.slice_index[rows], areas=self.areas[rows])

    def resized(self, size: int) -> SliceBank:
        """The same slices at size x size (images antialiased, labels by largest area)."""
        labels = resize_labels(self.labels, size)
        return replace(self, size=size, images=resize_images(self.images, size), labels=labels,
                       areas=class_areas(labels, self.areas.shape[1]))

    def save(self, path: str | Path, compact: bool = False) -> None:
        """Write an uncompressed .npz (fast to load); `compact`: each image as 8 bits between its minimum and
        maximum in a JPEG, the rest zlib-compressed (a sixth of the size, to carry a bank to another machine)."""
        meta = {
            "format_version": BANK_FORMAT_VERSION,
            "size": self.size,
            "datasets": self.datasets,
            "class_names": self.class_names,
            "modalities": self.modalities,
        }
        arrays = {
            "meta": np.array(json.dumps(meta)),
            **(_compact_images(self.images) if compact else {"images": self.images}),
            "labels": self.labels,
            "dataset_index": self.dataset_index,
            "case_ids": self.case_ids,
            "patient_ids": self.patient_ids,
            "slice_index": self.slice_index,
            "areas": self.areas,
        }
        # a temp file of its own per writer: two trainings building the same cached bank at once both succeed
        atomic_write(path, lambda tmp: (np.savez_compressed if compact else np.savez)(tmp, **arrays))

    @classmethod
    def load(cls, path: str | Path) -> SliceBank:
        """Read a bank written by save()."""
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("format_version") != BANK_FORMAT_VERSION:
                raise IrisInputError(f"{path}: slice bank format {meta.get('format_version')!r} unsupported")
            return cls(
                size=int(meta["size"]),
                datasets=list(meta["datasets"]),
                class_names={k: list(v) for k, v in meta["class_names"].items()},
                modalities=dict(meta["modalities"]),
                images=_expand_images(z) if "images_jpeg" in z.files else z["images"],
                labels=z["labels"],
                dataset_index=z["dataset_index"],
                case_ids=z["case_ids"],
                patient_ids=z["patient_ids"],
                slice_index=z["slice_index"],
                areas=z["areas"],
            )


def _compact_images(images: np.ndarray) -> dict[str, np.ndarray]:
    """Each slice as 8-bit codes between its minimum and maximum, JPEG-encoded at COMPACT_JPEG_QUALITY."""
    values = images.astype(np.float32)
    low, high = values.min(axis=(1, 2)), values.max(axis=(1, 2))
    span = np.maximum(high - low, 1e-6)[:, None, None]
    codes = np.round((values - low[:, None, None]) / span * 255).astype(np.uint8)
    encoded = []
    for code in codes:
        buffer = io.BytesIO()
        Image.fromarray(code).save(buffer, format="JPEG", quality=COMPACT_JPEG_QUALITY)
        encoded.append(np.frombuffer(buffer.getvalue(), dtype=np.uint8))
    offsets = np.cumsum([0] + [len(e) for e in encoded])
    return {"images_jpeg": np.concatenate(encoded), "jpeg_offsets": offsets, "image_range": np.stack([low, high], 1)}


def _expand_images(z: Any) -> np.ndarray:
    """The float16 images of a compact bank."""
    data, offsets, ranges = z["images_jpeg"], z["jpeg_offsets"], z["image_range"]
    slices = []
    for i, (low, high) in enumerate(ranges):
        code = np.asarray(Image.open(io.BytesIO(data[offsets[i]:offsets[i + 1]].tobytes())), dtype=np.float32)
        slices.append(low + code / 255 * max(high - low, 1e-6))
    return np.stack(slices).astype(np.float16)


def _class_table(ds: MSDDataset) -> tuple[list[str], np.ndarray]:
    """Kept class names (by label value) and a lookup table from file value to bank value."""
    ignore = set(dataset_info(ds.name).ignore_labels)
    kept = sorted((v, k) for k, v in ds.foreground_labels.items() if k not in ignore)
    if len(kept) > 255:
        raise IrisInputError(f"{ds.name}: more than 255 classes")
    table = np.zeros(max([v for v, _ in kept], default=0) + 1, dtype=np.uint8)
    for i, (v, _) in enumerate(kept):
        table[v] = i + 1
    return [k for _, k in kept], table


def _remap(label: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Map file label values to bank values; unknown values become background."""
    lab = np.where((label >= 0) & (label < len(table)), label, 0)
    return table[lab]


def extract_case_slices(
    ds: MSDDataset, case_id: str, size: int, table: np.ndarray, empty_fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalised, resized slices of one case: images (n,S,S), labels (n,S,S), slice indices (n,)."""
    info = dataset_info(ds.name)
    image, label, _ = ds.load_case(case_id)
    label = _remap(label, table)
    image = normalise_intensities(image, hounsfield=info.hounsfield)
    if image.ndim == 2:
        section = info.section_of(case_id) if info.section_of else 0
        imgs, labs, idx = image[None], label[None], np.array([section])
    elif image.ndim == 3:
        has_fg = (label > 0).any(axis=(0, 1))
        fg = np.flatnonzero(has_fg)
        empty = np.flatnonzero(~has_fg)
        n_empty = min(len(empty), max(1, int(round(empty_fraction * len(fg)))))
        rng = np.random.default_rng(zlib.crc32(f"{ds.name}/{case_id}".encode()))
        idx = np.sort(np.concatenate([fg, rng.choice(empty, n_empty, replace=False)])).astype(int)
        imgs = np.moveaxis(image, 2, 0)[idx]
        labs = np.moveaxis(label, 2, 0)[idx]
    else:
        raise IrisInputError(f"{ds.name}/{case_id}: expected a 2D or 3D image, got shape {image.shape}")
    return resize_images(imgs, size).astype(np.float16), resize_labels(labs, size), idx.astype(np.int32)


def _cache_key(root: Path, datasets: tuple[str, ...], size: int, empty_fraction: float) -> str:
    """Hash of everything the bank content depends on (dataset list, S, file sizes and times)."""
    h = hashlib.sha1(f"v{BANK_FORMAT_VERSION}|{size}|{empty_fraction}|{','.join(datasets)}".encode())
    for name in datasets:
        for f in sorted((root / name).rglob("*")):
            if f.is_file():
                st = f.stat()
                h.update(f"{f.relative_to(root)}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


def build_slice_bank(
    datasets: tuple[str, ...] | None = None,
    root: str | Path | None = None,
    size: int = 128,
    cache_dir: str | Path | None = DEFAULT_CACHE_DIR,
    empty_fraction: float = 0.1,
    verbose: bool = False,
) -> SliceBank:
    """Build (or load from the .npz cache) the bank of all cases of `datasets` under `root`.

    The bank holds train AND test cases; the Split decides which are sampled. Pass cache_dir=None to skip
    the cache.
    """
    base = Path(root) if root is not None else shared_data_dir()
    if base is None:
        raise IrisInputError("shared data not found: set IRIS_SHARED_DATA or pass root")
    names = tuple(datasets) if datasets is not None else default_datasets()
    cache_path = None
    if cache_dir is not None:
        cache_path = Path(cache_dir) / f"slicebank_{_cache_key(base, names, size, empty_fraction)}.npz"
        if cache_path.is_file():
            return SliceBank.load(cache_path)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("images", "labels", "slice_index")}
    ds_index: list[np.ndarray] = []
    case_ids: list[str] = []
    patient_ids: list[str] = []
    class_names: dict[str, list[str]] = {}
    modalities: dict[str, str] = {}
    for d, name in enumerate(names):
        t0 = time.perf_counter()
        ds = MSDDataset(base / name)
        info = dataset_info(name)
        class_names[name], table = _class_table(ds)
        modalities[name] = info.modality
        for case_id in ds.case_ids:
            imgs, labs, idx = extract_case_slices(ds, case_id, size, table, empty_fraction)
            parts["images"].append(imgs)
            parts["labels"].append(labs)
            parts["slice_index"].append(idx)
            ds_index.append(np.full(len(idx), d, dtype=np.int16))
            case_ids += [case_id] * len(idx)
            patient_ids += [info.patient_of(case_id)] * len(idx)
        if verbose:
            print(f"slice bank: {name} in {time.perf_counter() - t0:.1f} s", flush=True)
    labels = np.concatenate(parts["labels"])
    n_values = max([len(v) for v in class_names.values()], default=0) + 1
    areas = class_areas(labels, n_values)
    bank = SliceBank(
        size=size,
        datasets=list(names),
        class_names=class_names,
        modalities=modalities,
        images=np.concatenate(parts["images"]),
        labels=labels,
        dataset_index=np.concatenate(ds_index),
        case_ids=np.array(case_ids),
        patient_ids=np.array(patient_ids),
        slice_index=np.concatenate(parts["slice_index"]),
        areas=areas,
    )
    if cache_path is not None:
        bank.save(cache_path)
    return bank
