"""`Volume`: an image array that carries its geometry from reader to writer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

MODALITIES = ("CT", "MR", "photo", "unknown")


@dataclass
class Volume:
    """A 2D image (H, W) or 3D volume (X, Y, Z) in the file's voxel order, grey values as float32.

    `affine` maps voxel indices to world millimetres (4x4, NIfTI convention, RAS). For 2D images the
    third axis is a dummy of size one in the affine. Colour photos are converted to luminance by the
    readers; `metadata` keeps reader-specific facts (DICOM tags, original dtype, file name ...).
    """

    array: np.ndarray
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    modality: str = "unknown"
    source: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def ndim(self) -> int:
        return self.array.ndim

    @property
    def is_3d(self) -> bool:
        return self.array.ndim == 3

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm along each array axis."""
        norms = np.linalg.norm(self.affine[:3, :3], axis=0)
        return tuple(float(s) for s in norms[: self.array.ndim])
