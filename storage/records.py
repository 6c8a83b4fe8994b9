"""Frozen DTOs returned by the repositories; callers never hold ORM objects or sessions."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class CaseMetadata:
    """What the uploader knows about an image or volume."""

    name: str
    source_filename: str
    shape: tuple[int, ...]
    modality: str | None = None
    spacing: tuple[float, ...] | None = None
    affine: tuple[tuple[float, ...], ...] | None = None
    orientation: str | None = None


@dataclass(frozen=True)
class CaseRecord:
    id: int
    name: str
    source_filename: str
    modality: str | None
    shape: tuple[int, ...]
    spacing: tuple[float, ...] | None
    affine: tuple[tuple[float, ...], ...] | None
    orientation: str | None
    sha256: str
    file_path: Path
    size_bytes: int
    created_at: datetime


@dataclass(frozen=True)
class ClassRecord:
    id: int
    name: str
    color: str
    created_at: datetime


@dataclass(frozen=True)
class AnnotationRecord:
    id: int
    case_id: int
    class_id: int
    class_name: str
    slice_indices: tuple[int, ...]
    mask_sha256: str
    author: str
    created_at: datetime


@dataclass(frozen=True)
class PredictionRecord:
    id: int
    case_id: int
    class_id: int
    class_name: str
    strategy: str
    model_version: str
    mask_sha256: str
    params: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class CorrectionRecord:
    id: int
    prediction_id: int | None
    case_id: int
    class_id: int
    class_name: str
    strategy: str | None
    model_version: str | None
    mask_sha256: str
    status: str
    author: str
    created_at: datetime


@dataclass(frozen=True)
class PrototypeRecord:
    id: int
    class_id: int
    class_name: str
    model_version: str
    embedding: bytes
    update_count: int
    updated_at: datetime


@dataclass(frozen=True)
class PrototypeHistoryRecord:
    """A previous value of a prototype, kept when it was overwritten."""

    id: int
    prototype_id: int
    embedding: bytes
    update_count: int
    reason: str
    created_at: datetime


@dataclass(frozen=True)
class TrainingRunRecord:
    id: int
    name: str
    config: dict[str, Any]
    case_ids: tuple[int, ...]
    status: str
    progress: float
    metrics: dict[str, Any]
    checkpoint_path: Path | None
    model_version_id: int | None
    log_path: str | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True)
class ModelVersionRecord:
    id: int
    name: str
    sha256: str
    path: Path
    is_active: bool
    created_at: datetime


@dataclass(frozen=True)
class CleanupReport:
    temp_files_removed: int = 0
    blobs_removed: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ImportReport:
    cases_added: int
    cases_reused: int
    annotations_added: int
    classes_added: int
    prototypes_written: int


@dataclass(frozen=True)
class ProjectSnapshot:
    """Plain-data view of a project: classes, cases with annotations, prototypes (raw embeddings)."""

    classes: list[dict[str, Any]]
    cases: list[dict[str, Any]]
    prototypes: list[dict[str, Any]]

    def blob_shas(self) -> set[str]:
        """Digests of the case files and annotation masks the snapshot refers to."""
        shas = {c["sha256"] for c in self.cases}
        shas.update(a["mask_sha256"] for c in self.cases for a in c["annotations"])
        return shas
