"""Registry of the shared datasets: modality group, patient grouping and usage rules."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

MODALITY_GROUPS = ("CT", "MR", "X-ray", "US", "endoscopy", "dermoscopy", "fundus", "EM")


def _case_is_patient(case_id: str) -> str:
    """Each case is its own patient."""
    return case_id


def _cxr_patient(case_id: str) -> str:
    """covid_cxr: the patient is the `cxr_pNNN` prefix."""
    match = re.match(r"(cxr_p\d+)_", case_id)
    return match.group(1) if match else case_id


def _polyp_centre(case_id: str) -> str:
    """PolypGen: group by centre (`polyp_c1_...` -> c1, `polyp_seq_...` -> seq)."""
    match = re.match(r"polyp_(c\w?\d*|cx|seq)_", case_id)
    if not match:
        return case_id
    return match.group(1)


def _em_block(case_id: str) -> str:
    """ISBI EM: sections 0-19 and 20-29 are two blocks of the one stack."""
    match = re.search(r"(\d+)$", case_id)
    section = int(match.group(1)) if match else 0
    return "em_sections_00_19" if section < 20 else "em_sections_20_29"


def _em_section(case_id: str) -> int:
    """ISBI EM: section number, used as the slice index within the stack."""
    match = re.search(r"(\d+)$", case_id)
    return int(match.group(1)) if match else 0


@dataclass(frozen=True)
class DatasetInfo:
    """How one shared dataset may be used for training and evaluation."""

    name: str
    modality: str
    dims: int
    patient_of: Callable[[str], str] = _case_is_patient
    section_of: Callable[[str], int] | None = None
    training_only: bool = False
    single_subject: bool = False
    hounsfield: bool = False
    ignore_labels: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.modality not in (*MODALITY_GROUPS, "other"):
            raise ValueError(f"{self.name}: unknown modality group {self.modality!r}")


CATALOG: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo("drive_fundus", "fundus", 2),
        DatasetInfo("isbi_em", "EM", 2, patient_of=_em_block, section_of=_em_section, single_subject=True),
        DatasetInfo("polypgen_endoscopy", "endoscopy", 2, patient_of=_polyp_centre),
        DatasetInfo("ph2_dermoscopy", "dermoscopy", 2),
        DatasetInfo("hc18_fetal_us", "US", 2),
        DatasetInfo("covid_cxr", "X-ray", 2, patient_of=_cxr_patient),
        DatasetInfo("covid_ct_infection", "CT", 2, training_only=True),
        DatasetInfo("chaos_mr", "MR", 3),
        DatasetInfo("mscmr_cardiac_mr", "MR", 3),
        DatasetInfo("left_atrium_mr", "MR", 3),
        DatasetInfo("segthor_ct", "CT", 3),
        DatasetInfo("brain_mr_single", "MR", 3, training_only=True, single_subject=True),
        DatasetInfo("totalseg_ct_small", "CT", 3, training_only=True, single_subject=True, hounsfield=True),
        DatasetInfo("totalseg_mr_small", "MR", 3, training_only=True, single_subject=True),
    )
}

SKIPPED = {"totalseg_ct_dicom": "DICOM series; for reader and geometry tests, not training"}


def dataset_info(name: str) -> DatasetInfo:
    """Catalog entry of a dataset; unknown user folders get per-case patients and no special rules."""
    return CATALOG.get(name) or DatasetInfo(name, "other", 0)


def default_datasets() -> tuple[str, ...]:
    """Names of all shared datasets usable for training or evaluation."""
    return tuple(CATALOG)
