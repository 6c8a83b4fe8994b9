"""Reader for any folder in the Medical Segmentation Decathlon layout (2D png/jpg or 3D nii.gz)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from PIL import Image

from iris_engine.errors import IrisInputError

_IMAGE_2D = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def case_id_of(path: str | Path) -> str:
    """Case id of a file: its name without any extension (.nii.gz counts as one)."""
    name = Path(path).name
    for ext in (".nii.gz", ".nii", *_IMAGE_2D):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


@dataclass(frozen=True)
class MSDCase:
    """One training pair of an MSD folder."""

    case_id: str
    image: Path
    label: Path

    @property
    def is_3d(self) -> bool:
        return self.image.name.lower().endswith((".nii", ".nii.gz"))


class MSDDataset:
    """An MSD-layout folder: `dataset.json` plus imagesTr/labelsTr pairs."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        meta_path = self.root / "dataset.json"
        if not meta_path.is_file():
            raise IrisInputError(f"{self.root}: no dataset.json (expected the MSD layout)")
        try:
            self.meta: dict[str, Any] = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise IrisInputError(f"{meta_path}: invalid JSON ({exc})") from exc
        self.name: str = str(self.meta.get("name") or self.root.name)
        raw_labels = self.meta.get("labels") or {}
        self.labels: dict[str, int] = self._parse_labels(raw_labels)
        modality = self.meta.get("modality") or {}
        self.modality: str = str(modality.get("0", "")) if isinstance(modality, dict) else str(modality)
        self.cases: list[MSDCase] = []
        for entry in self.meta.get("training") or []:
            image = (self.root / entry["image"]).resolve()
            label = (self.root / entry["label"]).resolve()
            self.cases.append(MSDCase(case_id_of(image), image, label))
        self._by_id = {c.case_id: c for c in self.cases}
        if len(self._by_id) != len(self.cases):
            raise IrisInputError(f"{self.root}: duplicate case ids in dataset.json 'training'")

    @staticmethod
    def _parse_labels(raw: dict[str, Any]) -> dict[str, int]:
        """Accept both {name: value} and the MSD-original {"value": name} forms."""
        out: dict[str, int] = {}
        for key, value in raw.items():
            if isinstance(value, str) and str(key).isdigit():
                out[value] = int(key)
            else:
                out[str(key)] = int(value)
        return out

    @property
    def case_ids(self) -> list[str]:
        """Case ids in dataset.json order."""
        return [c.case_id for c in self.cases]

    @property
    def foreground_labels(self) -> dict[str, int]:
        """Label names to values, background (value 0) excluded."""
        return {k: v for k, v in self.labels.items() if v != 0}

    def case(self, case_id: str) -> MSDCase:
        """The pair of one case id."""
        try:
            return self._by_id[case_id]
        except KeyError as exc:
            raise IrisInputError(f"{self.name}: unknown case id {case_id!r}") from exc

    def load_case(self, case_id: str) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
        """Image (float32), label map (int) and spacing in mm, in the file's voxel order."""
        case = self.case(case_id)
        for path in (case.image, case.label):
            if not path.is_file():
                raise IrisInputError(f"{self.name}/{case_id}: missing file {path}")
        if case.is_3d:
            image, spacing = self._read_nifti(case.image)
            label, label_spacing = self._read_nifti(case.label)
            if not np.allclose(spacing, label_spacing, rtol=1e-3):
                raise IrisInputError(
                    f"{self.name}/{case_id}: image spacing {spacing} != label spacing {label_spacing}"
                )
            spacing = self._spacing_override(case_id, len(spacing)) or spacing
        else:
            image = self._read_image_2d(case.image)
            label = self._read_label_2d(case.label)
            spacing = self._spacing_override(case_id, 2) or (1.0, 1.0)
        if image.shape != label.shape:
            raise IrisInputError(f"{self.name}/{case_id}: image shape {image.shape} != label shape {label.shape}")
        return image.astype(np.float32, copy=False), np.rint(label).astype(np.int32), spacing

    @staticmethod
    def _read_nifti(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
        """Array in file voxel order and header spacing."""
        try:
            img = nib.load(str(path))
            data = np.asanyarray(img.dataobj)
        except Exception as exc:  # nibabel raises many types for corrupt files
            raise IrisInputError(f"cannot read NIfTI {path}: {exc}") from exc
        data = np.squeeze(data) if data.ndim > 3 else data
        zooms = tuple(float(z) for z in img.header.get_zooms()[: data.ndim])
        return data, zooms

    @staticmethod
    def _read_image_2d(path: Path) -> np.ndarray:
        """Grey image as float32 (H, W); colour is converted to luminance."""
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB") if im.mode in ("P", "CMYK", "YCbCr", "LAB", "HSV") else im)
        except Exception as exc:
            raise IrisInputError(f"cannot read image {path}: {exc}") from exc
        arr = arr.astype(np.float32)
        if arr.ndim == 3:
            arr = arr[..., :3] @ _LUMA if arr.shape[-1] >= 3 else arr[..., 0]
        return arr

    @staticmethod
    def _read_label_2d(path: Path) -> np.ndarray:
        """Label map (H, W); palette images keep their indices."""
        try:
            with Image.open(path) as im:
                arr = np.asarray(im)
        except Exception as exc:
            raise IrisInputError(f"cannot read label {path}: {exc}") from exc
        if arr.ndim == 3:
            if not np.all(arr[..., :3] == arr[..., :1]):
                raise IrisInputError(f"{path}: colour label image; expected a single-channel label map")
            arr = arr[..., 0]
        return arr

    def _spacing_override(self, case_id: str, ndim: int) -> tuple[float, ...] | None:
        """Spacing from dataset.json: per-case `spacing_mm`, else an isotropic `spacing_note`."""
        per_case = self.meta.get("spacing_mm")
        if isinstance(per_case, dict) and case_id in per_case:
            return tuple(float(v) for v in per_case[case_id])
        note = self.meta.get("spacing_note")
        if isinstance(note, str) and "isotropic" in note:
            match = re.search(r"(\d+(?:\.\d+)?)\s*mm", note)
            if match:
                return (float(match.group(1)),) * ndim
        return None
