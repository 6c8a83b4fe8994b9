"""Write masks (NIfTI, PNG, NumPy), overlay PNGs and DICOM-SEG; every write is atomic (temp file + os.replace)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from iris_engine.errors import IrisInputError
from iris_engine.io.atomic import atomic_write
from iris_engine.io.volume import Volume

DEFAULT_COLORS: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 190),
)
SOFTWARE_NAME = "IRIS Studio"
SOFTWARE_VERSION = "0.1.0"


def _label_map(mask: np.ndarray, reference: Volume) -> np.ndarray:
    """Validate an integer/bool label map against the reference and return it as uint8 or uint16."""
    mask = np.asarray(mask)
    if mask.shape != reference.shape:
        raise IrisInputError(f"mask shape {mask.shape} does not match image shape {reference.shape}")
    if mask.size == 0:
        raise IrisInputError("mask is empty (zero-size)")
    if mask.dtype.kind not in "biu":
        raise IrisInputError(f"mask must be an integer or bool label map, not {mask.dtype}")
    if mask.dtype.kind == "i" and mask.min() < 0:
        raise IrisInputError("mask has negative labels")
    top = int(mask.max())
    if top > np.iinfo(np.uint16).max:
        raise IrisInputError(f"mask label {top} does not fit in uint16")
    return mask.astype(np.uint8 if top <= np.iinfo(np.uint8).max else np.uint16)


def write_mask(mask: np.ndarray, reference: Volume, path: str | Path) -> Path:
    """Write a label map: NIfTI (reference affine), PNG (2D; binary masks as 0/255) or .npy."""
    labels = _label_map(mask, reference)
    name = Path(path).name.lower()
    if name.endswith((".nii", ".nii.gz")):
        img = nib.Nifti1Image(labels, np.asarray(reference.affine, dtype=np.float64))
        img.set_qform(reference.affine, code=1)
        img.set_sform(reference.affine, code=1)
        return atomic_write(path, lambda tmp: nib.save(img, str(tmp)))
    if name.endswith(".png"):
        if labels.ndim != 2:
            raise IrisInputError(f"{path}: PNG masks must be 2D, got shape {labels.shape}")
        if labels.max() <= 1:
            labels = labels * np.uint8(255)
        pil = Image.fromarray(labels) if labels.dtype == np.uint8 else Image.fromarray(labels, mode="I;16")
        return atomic_write(path, lambda tmp: pil.save(tmp, format="PNG"))
    if name.endswith(".npy"):
        return atomic_write(path, lambda tmp: np.save(tmp, labels))
    raise IrisInputError(f"{path}: unknown mask format; use .nii, .nii.gz, .png or .npy")


def _to_uint8_grey(image: np.ndarray) -> np.ndarray:
    """Scale a grey image to 0-255 between its 1st and 99th percentiles."""
    image = np.asarray(image, dtype=np.float32)
    if not np.isfinite(image).all():
        raise IrisInputError("overlay image contains NaN or infinite values")
    lo, hi = np.percentile(image, (1.0, 99.0))
    if hi <= lo:
        return np.zeros(image.shape, dtype=np.uint8)
    return (np.clip((image - lo) / (hi - lo), 0.0, 1.0) * 255.0).round().astype(np.uint8)


def write_overlay_png(
    image: np.ndarray,
    masks: np.ndarray,
    path: str | Path,
    colors: Sequence[tuple[int, int, int]] | None = None,
    opacity: float = 0.5,
) -> Path:
    """Blend K boolean masks (K, H, W) in colour over a 2D grey image and save it as RGB PNG."""
    image = np.asarray(image)
    masks = np.asarray(masks, dtype=bool)
    if image.ndim != 2 or image.size == 0:
        raise IrisInputError(f"overlay image must be a non-empty 2D array, got shape {image.shape}")
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3 or masks.shape[1:] != image.shape:
        raise IrisInputError(f"overlay masks shape {masks.shape} does not match (K, {image.shape})")
    if not 0.0 <= opacity <= 1.0:
        raise IrisInputError(f"opacity must be in [0, 1], got {opacity}")
    palette = (
        list(colors) if colors is not None else [DEFAULT_COLORS[k % len(DEFAULT_COLORS)] for k in range(len(masks))]
    )
    if len(palette) < len(masks):
        raise IrisInputError(f"{len(palette)} colours given for {len(masks)} masks")
    rgb = np.repeat(_to_uint8_grey(image)[..., None], 3, axis=2).astype(np.float32)
    for mask, color in zip(masks, palette, strict=False):
        rgb[mask] = (1.0 - opacity) * rgb[mask] + opacity * np.asarray(color, dtype=np.float32)
    out = Image.fromarray(np.clip(rgb, 0, 255).round().astype(np.uint8), mode="RGB")
    return atomic_write(path, lambda tmp: out.save(tmp, format="PNG"))


def _mask_to_dicom_frames(mask: np.ndarray, reference: Volume) -> np.ndarray:
    """(K, *shape) masks in the reader's layout to (frames, rows, cols, K) in source-dataset order."""
    layout = reference.metadata.get("dicom_layout")
    if layout == "series":
        frames = mask[:, :, ::-1, :].transpose(0, 3, 2, 1)  # (K, slices, rows, cols)
    elif layout == "single":
        frames = mask[:, None]
    else:
        raise IrisInputError(f"{reference.source}: unknown DICOM layout {layout!r}")
    return np.ascontiguousarray(np.moveaxis(frames, 0, -1))


def _with_sop_uids(ds: Dataset) -> Dataset:
    """The dataset, or a copy with SOPClassUID/SOPInstanceUID restored from its file meta when blanked."""
    if ds.get("SOPClassUID") and ds.get("SOPInstanceUID"):
        return ds
    meta = getattr(ds, "file_meta", None) or {}
    fixed = copy.deepcopy(ds)
    fixed.SOPClassUID = ds.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID", "")
    fixed.SOPInstanceUID = ds.get("SOPInstanceUID") or meta.get("MediaStorageSOPInstanceUID", "")
    return fixed


def dicom_seg_missing_references(datasets: Sequence[Dataset]) -> list[str]:
    """The UIDs a DICOM-SEG must reference that some source dataset lacks (file meta counts for SOP UIDs)."""
    sources = [_with_sop_uids(ds) for ds in datasets]
    keys = ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID")
    return [key for key in keys if not sources or not all(ds.get(key) for ds in sources)]


def write_dicom_seg(mask: np.ndarray, reference: Volume, class_names: list[str], path: str | Path) -> Path:
    """Write a binary DICOM-SEG (one segment per class) referencing the DICOM series the volume came from."""
    datasets = reference.metadata.get("dicom_datasets")
    if not datasets:
        raise IrisInputError(f"{reference.source or 'volume'}: DICOM-SEG needs a volume read from DICOM")
    sources = [_with_sop_uids(ds) for ds in datasets]
    missing = dicom_seg_missing_references(sources)
    if missing:
        raise IrisInputError(
            f"{reference.source}: source DICOM lacks {', '.join(missing)} (anonymised?); a DICOM-SEG could not "
            "reference it, write NIfTI instead"
        )
    mask = np.asarray(mask)
    if mask.ndim == reference.ndim:
        mask = mask[None]
    if mask.shape[1:] != reference.shape:
        raise IrisInputError(f"mask shape {mask.shape} does not match (K, {reference.shape})")
    if len(class_names) != mask.shape[0] or not class_names:
        raise IrisInputError(f"{len(class_names)} class names given for {mask.shape[0]} masks")
    if mask.dtype != bool and not np.isin(mask, (0, 1)).all():
        raise IrisInputError("DICOM-SEG masks must be binary")
    algorithm = hd.AlgorithmIdentificationSequence(
        name=SOFTWARE_NAME, family=codes.cid7162.ArtificialIntelligence, version=SOFTWARE_VERSION
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=name,
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number, name in enumerate(class_names, start=1)
    ]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=_mask_to_dicom_frames(mask.astype(bool), reference).astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=900,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=SOFTWARE_NAME,
        manufacturer_model_name=SOFTWARE_NAME,
        software_versions=SOFTWARE_VERSION,
        device_serial_number="0",
        omit_empty_frames=False,
    )
    return atomic_write(path, lambda tmp: seg.save_as(tmp))
