"""Demo case from nilearn's bundled MNI152 template (no download): a T1 brain with grey/white-matter supports."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from storage import Storage
from storage.records import CaseMetadata, CaseRecord

DEMO_NAME = "Demo: MNI152 T1 brain"
DEMO_CLASSES = ("grey_matter", "white_matter")
MARKER = ".demo_created"
STRIDE = 2


def nilearn_data_dir() -> Path:
    """Folder of nilearn's bundled datasets (found through the installed package)."""
    import nilearn

    return Path(nilearn.__file__).resolve().parent / "datasets" / "data"


def _load(name: str) -> nib.Nifti1Image:
    path = nilearn_data_dir() / f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz"
    if not path.is_file():
        raise FileNotFoundError(f"nilearn's bundled MNI152 template is missing: {path}")
    return nib.load(str(path))


def demo_volume() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(T1 array, affine, label map 1=grey matter 2=white matter) at 2 mm."""
    t1, gm, wm = (_load(n) for n in ("t1", "gm", "wm"))
    cut = (slice(None, None, STRIDE),) * 3
    image = np.asarray(t1.dataobj, dtype=np.float32)[cut]
    grey = np.asarray(gm.dataobj, dtype=np.float32)[cut]
    white = np.asarray(wm.dataobj, dtype=np.float32)[cut]
    labels = np.zeros(image.shape, dtype=np.uint8)
    labels[(grey > 0.5) & (grey >= white)] = 1
    labels[(white > 0.5) & (white > grey)] = 2
    affine = t1.affine @ np.diag([STRIDE, STRIDE, STRIDE, 1.0])
    return image, affine, labels


def stored_slices(mask: np.ndarray) -> list[int]:
    """Indices along axis 0 that hold mask voxels (the storage convention for annotations)."""
    return [int(i) for i in np.nonzero(mask.reshape(mask.shape[0], -1).any(axis=1))[0]] if mask.ndim == 3 else [0]


def ensure_demo_case(storage: Storage, data_dir: Path) -> CaseRecord | None:
    """On first start store the demo case with supports on three axial slices; later starts do nothing."""
    marker = data_dir / MARKER
    if marker.exists():
        return None
    image, affine, labels = demo_volume()
    path = data_dir / "demo" / "mni152_t1_2mm.nii.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(image, affine), str(path))
    spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
    case = storage.cases.add_case(path, CaseMetadata(
        name=DEMO_NAME, source_filename=path.name, shape=image.shape, modality="MR", spacing=spacing,
        affine=tuple(tuple(float(v) for v in row) for row in affine), orientation="RAS"))
    middle = image.shape[2] // 2
    for value, name in enumerate(DEMO_CLASSES, start=1):
        mask = np.zeros(image.shape, dtype=bool)
        for z in (middle - 8, middle, middle + 8):
            mask[:, :, z] = labels[:, :, z] == value
        storage.annotations.add(case.id, name, mask, stored_slices(mask), author="demo")
    marker.write_text(str(case.id))
    return case
