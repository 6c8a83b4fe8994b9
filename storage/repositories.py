"""The only code that opens sessions: repositories returning frozen DTOs (storage.records)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import func, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.database import Database
from storage.errors import NotFoundError, StorageError
from storage.masks import decode_mask, encode_mask
from storage.models import (
    CORRECTION_STATUSES,
    RUN_STATUSES,
    Annotation,
    Case,
    Correction,
    ModelVersion,
    Prediction,
    Prototype,
    PrototypeHistory,
    StructureClass,
    TrainingRun,
    utcnow,
)
from storage.records import (
    AnnotationRecord,
    CaseMetadata,
    CaseRecord,
    ClassRecord,
    CleanupReport,
    CorrectionRecord,
    ImportReport,
    ModelVersionRecord,
    PredictionRecord,
    ProjectSnapshot,
    PrototypeHistoryRecord,
    PrototypeRecord,
    TrainingRunRecord,
)

T = TypeVar("T")
_COLOR = re.compile(r"#[0-9a-fA-F]{6}")
_PALETTE = ("#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6")
_BLOB_LOCK_KEY = 0x1215_0001  # PostgreSQL advisory lock serialising blob reaping against writers
_TRANSITIONS: dict[str, frozenset[str]] = {
    "queued": frozenset({"running", "cancelled"}),
    "running": frozenset({"succeeded", "failed", "cancelled", "interrupted"}),
    "interrupted": frozenset({"queued"}),
    "failed": frozenset({"queued"}),
    "succeeded": frozenset(),
    "cancelled": frozenset(),
}


_OPTIMISTIC_BLOB_WRITES = 3  # blob writes outside the transaction before one inside it (see _write_referencing)


class _BlobVanishedError(StorageError):
    """A freshly written blob was reaped before the row referencing it was committed."""


class _Repository:
    def __init__(self, db: Database) -> None:
        self._db = db

    def _blob_guard(self, session: Session, exclusive: bool = False) -> None:
        """Serialise blob writers (shared) against blob reapers (exclusive) on PostgreSQL.

        On SQLite opening the transaction is enough: it starts with BEGIN IMMEDIATE.
        """
        session.connection()
        if self._db.dialect == "postgresql":
            fn = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
            session.execute(text(f"SELECT {fn}(:key)"), {"key": _BLOB_LOCK_KEY})

    def _write_referencing(self, put: Callable[[], tuple[str, str]], write: Callable[[Session, str, str], T]) -> T:
        """Write a blob (temp + rename), then commit the rows that reference it.

        The blob is written outside the transaction; should reapers remove it before the commit
        `_OPTIMISTIC_BLOB_WRITES` times, it is written once more inside the guarded transaction, where no reaper
        can run. If the rows cannot be written the blob is removed again unless something else uses it.
        """
        for _ in range(_OPTIMISTIC_BLOB_WRITES):
            sha, relpath = put()
            try:
                with self._db.session_scope() as session:
                    self._blob_guard(session)
                    if not self._db.blobs.exists(sha):
                        raise _BlobVanishedError(sha)
                    return write(session, sha, relpath)
            except _BlobVanishedError:
                continue
            except BaseException:
                Maintenance(self._db).reap({sha})
                raise
        written: str | None = None
        try:
            with self._db.session_scope() as session:
                self._blob_guard(session)
                written, relpath = put()
                return write(session, written, relpath)
        except BaseException:
            if written is not None:
                Maintenance(self._db).reap({written})
            raise

    def _load_blob_mask(self, sha: str) -> np.ndarray:
        return decode_mask(self._db.blobs.read_bytes(sha))


def _get(session: Session, model: type[T], row_id: int, lock: bool = False) -> T:
    """Row by id; lock=True (SELECT ... FOR UPDATE) before a read-modify-write."""
    row = session.get(model, row_id, with_for_update=lock)
    if row is None:
        raise NotFoundError(f"no {model.__name__} with id {row_id}")
    return row


def _class_by_name(session: Session, name: str) -> StructureClass:
    row = session.scalars(select(StructureClass).where(StructureClass.name == name)).one_or_none()
    if row is None:
        raise NotFoundError(f"no class named {name!r}")
    return row


def _default_color(name: str) -> str:
    return _PALETTE[hashlib.sha256(name.encode()).digest()[0] % len(_PALETTE)]


def _check_color(color: str) -> str:
    if not _COLOR.fullmatch(color):
        raise StorageError(f"colour must look like #rrggbb, got {color!r}")
    return color.lower()


def _get_or_create_class(session: Session, name: str, color: str | None) -> StructureClass:
    name = name.strip()
    if not name:
        raise StorageError("class name must not be empty")
    existing = session.scalars(select(StructureClass).where(StructureClass.name == name)).one_or_none()
    if existing is not None:
        return existing
    row = StructureClass(name=name, color=_check_color(color or _default_color(name)))
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:  # created concurrently by another transaction (PostgreSQL)
        return _class_by_name(session, name)
    return row


def _class_record(row: StructureClass) -> ClassRecord:
    return ClassRecord(id=row.id, name=row.name, color=row.color, created_at=row.created_at)


class ClassRepository(_Repository):
    """Named structures ("liver", "left lung") with a display colour."""

    def get_or_create(self, name: str, color: str | None = None) -> ClassRecord:
        """Existing class by name (colour unchanged), else a new one."""
        with self._db.session_scope() as session:
            row = _get_or_create_class(session, name, color)
            session.flush()
            return _class_record(row)

    def get(self, name: str) -> ClassRecord:
        with self._db.session_scope() as session:
            return _class_record(_class_by_name(session, name))

    def set_color(self, name: str, color: str) -> ClassRecord:
        with self._db.session_scope() as session:
            row = _class_by_name(session, name)
            row.color = _check_color(color)
            return _class_record(row)

    def list(self) -> list[ClassRecord]:
        with self._db.session_scope() as session:
            return [_class_record(r) for r in session.scalars(select(StructureClass).order_by(StructureClass.name))]


class CaseRepository(_Repository):
    """Uploaded images and volumes; the original file is kept in the blob store."""

    def add_case(self, source: bytes | Path, metadata: CaseMetadata) -> CaseRecord:
        if not metadata.shape or any(int(n) <= 0 for n in metadata.shape):
            raise StorageError(f"case shape must be positive, got {metadata.shape}")
        if isinstance(source, bytes):
            put = lambda: self._db.blobs.put_bytes(source)  # noqa: E731
        else:
            put = lambda: self._db.blobs.put_file(source)  # noqa: E731

        def write(session: Session, sha: str, relpath: str) -> CaseRecord:
            row = Case(
                name=metadata.name,
                source_filename=metadata.source_filename,
                modality=metadata.modality,
                shape=[int(n) for n in metadata.shape],
                spacing=None if metadata.spacing is None else [float(s) for s in metadata.spacing],
                affine=None if metadata.affine is None else [[float(v) for v in r] for r in metadata.affine],
                orientation=metadata.orientation,
                sha256=sha,
                file_relpath=relpath,
                size_bytes=self._db.blobs.path_for(sha).stat().st_size,
            )
            session.add(row)
            session.flush()
            return self._record(row)

        return self._write_referencing(put, write)

    def get(self, case_id: int) -> CaseRecord:
        with self._db.session_scope() as session:
            return self._record(_get(session, Case, case_id))

    def list(self) -> list[CaseRecord]:
        with self._db.session_scope() as session:
            return [self._record(r) for r in session.scalars(select(Case).order_by(Case.id))]

    def delete(self, case_id: int) -> None:
        """Delete the case with its annotations, predictions and corrections, then reap its blobs."""
        with self._db.session_scope() as session:
            row = _get(session, Case, case_id)
            shas = {row.sha256}
            for model in (Annotation, Prediction, Correction):
                shas.update(session.scalars(select(model.mask_sha256).where(model.case_id == case_id)))
            session.delete(row)
        Maintenance(self._db).reap(shas)

    def _record(self, row: Case) -> CaseRecord:
        return CaseRecord(
            id=row.id,
            name=row.name,
            source_filename=row.source_filename,
            modality=row.modality,
            shape=tuple(row.shape),
            spacing=None if row.spacing is None else tuple(row.spacing),
            affine=None if row.affine is None else tuple(tuple(r) for r in row.affine),
            orientation=row.orientation,
            sha256=row.sha256,
            file_path=self._db.blobs.root / row.file_relpath,
            size_bytes=row.size_bytes,
            created_at=row.created_at,
        )


def _annotation_record(row: Annotation) -> AnnotationRecord:
    return AnnotationRecord(
        id=row.id,
        case_id=row.case_id,
        class_id=row.class_id,
        class_name=row.structure_class.name,
        slice_indices=tuple(row.slice_indices),
        mask_sha256=row.mask_sha256,
        author=row.author,
        created_at=row.created_at,
    )


class AnnotationRepository(_Repository):
    """Support masks painted by a user."""

    def add(
        self,
        case_id: int,
        class_name: str,
        mask: np.ndarray,
        slice_indices: Sequence[int],
        author: str,
        color: str | None = None,
    ) -> AnnotationRecord:
        data = encode_mask(mask)
        slices = [int(i) for i in slice_indices]

        def write(session: Session, sha: str, relpath: str) -> AnnotationRecord:
            case = _get(session, Case, case_id)
            depth = case.shape[0] if len(case.shape) == 3 else 1
            if any(not 0 <= i < depth for i in slices):
                raise StorageError(f"slice indices {slices} outside 0..{depth - 1} of case {case_id}")
            row = Annotation(
                case_id=case_id,
                structure_class=_get_or_create_class(session, class_name, color),
                slice_indices=slices,
                mask_sha256=sha,
                mask_relpath=relpath,
                author=author,
            )
            session.add(row)
            session.flush()
            return _annotation_record(row)

        return self._write_referencing(lambda: self._db.blobs.put_bytes(data), write)

    def get(self, annotation_id: int) -> AnnotationRecord:
        with self._db.session_scope() as session:
            return _annotation_record(_get(session, Annotation, annotation_id))

    def list_for_case(self, case_id: int, class_name: str | None = None) -> list[AnnotationRecord]:
        query = select(Annotation).where(Annotation.case_id == case_id).order_by(Annotation.id)
        if class_name is not None:
            query = query.join(Annotation.structure_class).where(StructureClass.name == class_name)
        with self._db.session_scope() as session:
            return [_annotation_record(r) for r in session.scalars(query)]

    def load_mask(self, annotation_id: int) -> np.ndarray:
        return self._load_blob_mask(self.get(annotation_id).mask_sha256)

    def delete(self, annotation_id: int) -> None:
        with self._db.session_scope() as session:
            row = _get(session, Annotation, annotation_id)
            sha = row.mask_sha256
            session.delete(row)
        Maintenance(self._db).reap({sha})


def _prediction_record(row: Prediction) -> PredictionRecord:
    return PredictionRecord(
        id=row.id,
        case_id=row.case_id,
        class_id=row.class_id,
        class_name=row.structure_class.name,
        strategy=row.strategy,
        model_version=row.model_version,
        mask_sha256=row.mask_sha256,
        params=dict(row.params),
        created_at=row.created_at,
    )


class PredictionRepository(_Repository):
    """What the model produced, with the strategy and model version used."""

    def add(
        self,
        case_id: int,
        class_name: str,
        mask: np.ndarray,
        strategy: str,
        model_version: str,
        params: dict[str, Any] | None = None,
    ) -> PredictionRecord:
        data = encode_mask(mask)

        def write(session: Session, sha: str, relpath: str) -> PredictionRecord:
            _get(session, Case, case_id)
            row = Prediction(
                case_id=case_id,
                structure_class=_get_or_create_class(session, class_name, None),
                strategy=strategy,
                model_version=model_version,
                mask_sha256=sha,
                mask_relpath=relpath,
                params=dict(params or {}),
            )
            session.add(row)
            session.flush()
            return _prediction_record(row)

        return self._write_referencing(lambda: self._db.blobs.put_bytes(data), write)

    def get(self, prediction_id: int) -> PredictionRecord:
        with self._db.session_scope() as session:
            return _prediction_record(_get(session, Prediction, prediction_id))

    def list_for_case(self, case_id: int) -> list[PredictionRecord]:
        query = select(Prediction).where(Prediction.case_id == case_id).order_by(Prediction.id)
        with self._db.session_scope() as session:
            return [_prediction_record(r) for r in session.scalars(query)]

    def load_mask(self, prediction_id: int) -> np.ndarray:
        return self._load_blob_mask(self.get(prediction_id).mask_sha256)


def _correction_record(row: Correction) -> CorrectionRecord:
    return CorrectionRecord(
        id=row.id,
        prediction_id=row.prediction_id,
        case_id=row.case_id,
        class_id=row.class_id,
        class_name=row.structure_class.name,
        strategy=row.strategy,
        model_version=row.model_version,
        mask_sha256=row.mask_sha256,
        status=row.status,
        author=row.author,
        created_at=row.created_at,
    )


class CorrectionRepository(_Repository):
    """What the user accepted, corrected or rejected; accepted rows form the corrections feed."""

    def accept(
        self,
        case_id: int,
        class_name: str,
        mask: np.ndarray,
        author: str,
        prediction_id: int | None = None,
        strategy: str | None = None,
        model_version: str | None = None,
    ) -> CorrectionRecord:
        """Record an accepted (possibly edited) mask; strategy/model default to the prediction's."""
        data = encode_mask(mask)

        def write(session: Session, sha: str, relpath: str) -> CorrectionRecord:
            _get(session, Case, case_id)
            structure = _get_or_create_class(session, class_name, None)
            row = Correction(
                case_id=case_id,
                structure_class=structure,
                strategy=strategy,
                model_version=model_version,
                mask_sha256=sha,
                mask_relpath=relpath,
                status="accepted",
                author=author,
            )
            if prediction_id is not None:
                prediction = _get(session, Prediction, prediction_id)
                if prediction.case_id != case_id or prediction.class_id != structure.id:
                    raise StorageError(f"prediction {prediction_id} is not for case {case_id}/{class_name}")
                row.prediction_id = prediction_id
                row.strategy = strategy or prediction.strategy
                row.model_version = model_version or prediction.model_version
            session.add(row)
            session.flush()
            return _correction_record(row)

        return self._write_referencing(lambda: self._db.blobs.put_bytes(data), write)

    def reject(self, prediction_id: int, author: str) -> CorrectionRecord:
        """Record that a prediction was discarded (its mask is kept for the audit trail)."""
        with self._db.session_scope() as session:
            prediction = _get(session, Prediction, prediction_id)
            row = Correction(
                prediction_id=prediction.id,
                case_id=prediction.case_id,
                class_id=prediction.class_id,
                strategy=prediction.strategy,
                model_version=prediction.model_version,
                mask_sha256=prediction.mask_sha256,
                mask_relpath=prediction.mask_relpath,
                status="rejected",
                author=author,
            )
            session.add(row)
            session.flush()
            return _correction_record(row)

    def undo_last(self, case_id: int, class_name: str | None = None) -> CorrectionRecord | None:
        """Mark the newest accepted correction of the case (and class) as undone; None if none."""
        query = select(Correction).where(Correction.case_id == case_id, Correction.status == "accepted")
        if class_name is not None:
            query = query.join(Correction.structure_class).where(StructureClass.name == class_name)
        with self._db.session_scope() as session:
            row = session.scalars(query.order_by(Correction.id.desc()).limit(1).with_for_update()).first()
            if row is None:
                return None
            row.status = "undone"
            return _correction_record(row)

    def get(self, correction_id: int) -> CorrectionRecord:
        with self._db.session_scope() as session:
            return _correction_record(_get(session, Correction, correction_id))

    def list_for_case(self, case_id: int, status: str | None = None) -> list[CorrectionRecord]:
        query = select(Correction).where(Correction.case_id == case_id)
        if status is not None:
            if status not in CORRECTION_STATUSES:
                raise StorageError(f"unknown correction status {status!r}")
            query = query.where(Correction.status == status)
        with self._db.session_scope() as session:
            return [_correction_record(r) for r in session.scalars(query.order_by(Correction.id))]

    def feed(self, model_version: str | None = None) -> list[CorrectionRecord]:
        """Accepted corrections, oldest first, optionally only those made against one model version."""
        query = select(Correction).where(Correction.status == "accepted")
        if model_version is not None:
            query = query.where(Correction.model_version == model_version)
        with self._db.session_scope() as session:
            return [_correction_record(r) for r in session.scalars(query.order_by(Correction.id))]

    def load_mask(self, correction_id: int) -> np.ndarray:
        return self._load_blob_mask(self.get(correction_id).mask_sha256)


def _prototype_record(row: Prototype) -> PrototypeRecord:
    return PrototypeRecord(
        id=row.id,
        class_id=row.class_id,
        class_name=row.structure_class.name,
        model_version=row.model_version,
        embedding=bytes(row.embedding),
        update_count=row.update_count,
        updated_at=row.updated_at,
    )


def _upsert_prototype(
    session: Session, class_name: str, model_version: str, embedding: bytes, update_count: int | None, reason: str
) -> Prototype:
    structure = _get_or_create_class(session, class_name, None)
    query = select(Prototype).where(Prototype.class_id == structure.id, Prototype.model_version == model_version)
    row = session.scalars(query.with_for_update()).one_or_none()
    if row is None:
        row = Prototype(
            structure_class=structure,
            model_version=model_version,
            embedding=embedding,
            update_count=1 if update_count is None else update_count,
        )
        try:
            with session.begin_nested():
                session.add(row)
            return row
        except IntegrityError:  # inserted concurrently (PostgreSQL): update that row instead
            row = session.scalars(query.with_for_update()).one()
    session.add(
        PrototypeHistory(prototype_id=row.id, embedding=row.embedding, update_count=row.update_count, reason=reason)
    )
    row.embedding = embedding
    row.update_count = row.update_count + 1 if update_count is None else update_count
    row.updated_at = utcnow()
    return row


class PrototypeRepository(_Repository):
    """Memory-bank embeddings per class and model version; every overwrite keeps an audit row."""

    def upsert(
        self,
        class_name: str,
        model_version: str,
        embedding: bytes,
        update_count: int | None = None,
        reason: str = "ema-update",
    ) -> PrototypeRecord:
        """Set the prototype; the previous value goes to history. update_count defaults to +1."""
        if not isinstance(embedding, bytes | bytearray | memoryview) or len(embedding) == 0:
            raise StorageError("embedding must be non-empty bytes")
        with self._db.session_scope() as session:
            row = _upsert_prototype(session, class_name, model_version, bytes(embedding), update_count, reason)
            session.flush()
            return _prototype_record(row)

    def get(self, class_name: str, model_version: str) -> PrototypeRecord | None:
        query = (
            select(Prototype)
            .join(Prototype.structure_class)
            .where(StructureClass.name == class_name, Prototype.model_version == model_version)
        )
        with self._db.session_scope() as session:
            row = session.scalars(query).one_or_none()
            return None if row is None else _prototype_record(row)

    def list(self, model_version: str | None = None) -> list[PrototypeRecord]:
        query = select(Prototype).order_by(Prototype.id)
        if model_version is not None:
            query = query.where(Prototype.model_version == model_version)
        with self._db.session_scope() as session:
            return [_prototype_record(r) for r in session.scalars(query)]

    def history(self, class_name: str, model_version: str | None = None) -> list[PrototypeHistoryRecord]:
        """Previous values of the class's prototypes, oldest first."""
        query = (
            select(PrototypeHistory)
            .join(Prototype, PrototypeHistory.prototype_id == Prototype.id)
            .join(Prototype.structure_class)
            .where(StructureClass.name == class_name)
            .order_by(PrototypeHistory.id)
        )
        if model_version is not None:
            query = query.where(Prototype.model_version == model_version)
        with self._db.session_scope() as session:
            return [
                PrototypeHistoryRecord(
                    id=h.id,
                    prototype_id=h.prototype_id,
                    embedding=bytes(h.embedding),
                    update_count=h.update_count,
                    reason=h.reason,
                    created_at=h.created_at,
                )
                for h in session.scalars(query)
            ]


def _model_record(db: Database, row: ModelVersion) -> ModelVersionRecord:
    return ModelVersionRecord(
        id=row.id,
        name=row.name,
        sha256=row.sha256,
        path=db.blobs.root / row.file_relpath,
        is_active=row.is_active,
        created_at=row.created_at,
    )


def _register_model(session: Session, name: str, sha: str, relpath: str) -> ModelVersion:
    row = session.scalars(select(ModelVersion).where(ModelVersion.sha256 == sha)).one_or_none()
    if row is None:
        row = ModelVersion(name=name, sha256=sha, file_relpath=relpath, is_active=False)
        session.add(row)
        session.flush()
    return row


class ModelRepository(_Repository):
    """Registry of checkpoints (copied into the blob store) and which one is active."""

    def register(self, path: Path | str, name: str | None = None) -> ModelVersionRecord:
        """Copy a checkpoint into the store; registering identical bytes again returns the same row."""
        path = Path(path)
        if not path.is_file():
            raise StorageError(f"checkpoint {path} does not exist")

        def write(session: Session, sha: str, relpath: str) -> ModelVersionRecord:
            return _model_record(self._db, _register_model(session, name or path.stem, sha, relpath))

        return self._write_referencing(lambda: self._db.blobs.put_file(path), write)

    def activate(self, model_id: int) -> ModelVersionRecord:
        with self._db.session_scope() as session:
            row = _get(session, ModelVersion, model_id)
            session.execute(update(ModelVersion).values(is_active=ModelVersion.id == model_id))
            session.refresh(row)
            return _model_record(self._db, row)

    def active(self) -> ModelVersionRecord | None:
        with self._db.session_scope() as session:
            row = session.scalars(select(ModelVersion).where(ModelVersion.is_active)).one_or_none()
            return None if row is None else _model_record(self._db, row)

    def get(self, model_id: int) -> ModelVersionRecord:
        with self._db.session_scope() as session:
            return _model_record(self._db, _get(session, ModelVersion, model_id))

    def list(self) -> list[ModelVersionRecord]:
        with self._db.session_scope() as session:
            rows = session.scalars(select(ModelVersion).order_by(ModelVersion.id))
            return [_model_record(self._db, r) for r in rows]


class TrainingRunRepository(_Repository):
    """Training runs: configuration, curated cases, status, progress, metrics, checkpoint."""

    def create(self, name: str, config: dict[str, Any], case_ids: Sequence[int]) -> TrainingRunRecord:
        ids = [int(i) for i in case_ids]
        with self._db.session_scope() as session:
            found = set(session.scalars(select(Case.id).where(Case.id.in_(ids))))
            if missing := sorted(set(ids) - found):
                raise NotFoundError(f"training run refers to unknown cases {missing}")
            row = TrainingRun(name=name, config=dict(config), case_ids=ids, status="queued", progress=0.0, metrics={})
            session.add(row)
            session.flush()
            return self._record(row)

    def update_status(self, run_id: int, status: str, error: str | None = None) -> TrainingRunRecord:
        """Move a run along queued -> running -> succeeded/failed/cancelled/interrupted."""
        with self._db.session_scope() as session:
            if status not in RUN_STATUSES:
                raise StorageError(f"unknown run status {status!r}; expected one of {RUN_STATUSES}")
            row = _get(session, TrainingRun, run_id, lock=True)
            if status not in _TRANSITIONS[row.status]:
                raise StorageError(f"run {run_id}: cannot go from {row.status!r} to {status!r}")
            row.status = status
            row.error = error
            if status == "running":
                row.started_at, row.finished_at = utcnow(), None
            elif status != "queued":
                row.finished_at = utcnow()
            return self._record(row)

    def update_progress(self, run_id: int, progress: float, metrics: dict[str, Any] | None = None) -> TrainingRunRecord:
        if not 0.0 <= progress <= 1.0:
            raise StorageError(f"progress must be within [0, 1], got {progress}")
        with self._db.session_scope() as session:
            row = _get(session, TrainingRun, run_id, lock=True)
            if row.status != "running":
                raise StorageError(f"run {run_id} is {row.status}, not running")
            row.progress = progress
            if metrics:
                row.metrics = {**row.metrics, **metrics}
            return self._record(row)

    def complete(self, run_id: int, checkpoint: Path | str, metrics: dict[str, Any] | None = None) -> TrainingRunRecord:
        """Mark a running run succeeded; its checkpoint is copied into the store and registered."""
        checkpoint = Path(checkpoint)
        if not checkpoint.is_file():
            raise StorageError(f"checkpoint {checkpoint} does not exist")

        def write(session: Session, sha: str, relpath: str) -> TrainingRunRecord:
            row = _get(session, TrainingRun, run_id, lock=True)
            if row.status != "running":
                raise StorageError(f"run {run_id} is {row.status}, not running")
            model = _register_model(session, row.name, sha, relpath)
            row.status, row.progress, row.finished_at = "succeeded", 1.0, utcnow()
            row.metrics = {**row.metrics, **(metrics or {})}
            row.checkpoint_path, row.model_version_id = relpath, model.id
            return self._record(row)

        return self._write_referencing(lambda: self._db.blobs.put_file(checkpoint), write)

    def set_log_path(self, run_id: int, log_path: str) -> TrainingRunRecord:
        with self._db.session_scope() as session:
            row = _get(session, TrainingRun, run_id, lock=True)
            row.log_path = log_path
            return self._record(row)

    def mark_interrupted_runs(self) -> list[int]:
        """At app start: runs left 'running' by a dead process become 'interrupted'."""
        with self._db.session_scope() as session:
            rows = list(session.scalars(select(TrainingRun).where(TrainingRun.status == "running").with_for_update()))
            for row in rows:
                row.status, row.finished_at = "interrupted", utcnow()
                row.error = "the application stopped while the run was in progress"
            return [r.id for r in rows]

    def get(self, run_id: int) -> TrainingRunRecord:
        with self._db.session_scope() as session:
            return self._record(_get(session, TrainingRun, run_id))

    def list(self, status: str | None = None) -> list[TrainingRunRecord]:
        query = select(TrainingRun).order_by(TrainingRun.id)
        if status is not None:
            query = query.where(TrainingRun.status == status)
        with self._db.session_scope() as session:
            return [self._record(r) for r in session.scalars(query)]

    def _record(self, row: TrainingRun) -> TrainingRunRecord:
        return TrainingRunRecord(
            id=row.id,
            name=row.name,
            config=dict(row.config),
            case_ids=tuple(row.case_ids),
            status=row.status,
            progress=row.progress,
            metrics=dict(row.metrics),
            checkpoint_path=None if row.checkpoint_path is None else self._db.blobs.root / row.checkpoint_path,
            model_version_id=row.model_version_id,
            log_path=row.log_path,
            error=row.error,
            created_at=row.created_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
        )


def _referenced_blobs(session: Session) -> set[str]:
    shas: set[str] = set(session.scalars(select(Case.sha256)))
    for column in (Annotation.mask_sha256, Prediction.mask_sha256, Correction.mask_sha256, ModelVersion.sha256):
        shas.update(session.scalars(select(column).distinct()))
    return shas


class Maintenance(_Repository):
    """Consistency between rows and blob files."""

    def missing_blobs(self) -> list[str]:
        """Blobs referenced by a row but absent on disk (should always be empty)."""
        with self._db.session_scope() as session:
            referenced = _referenced_blobs(session)
        return sorted(sha for sha in referenced if not self._db.blobs.exists(sha))

    def reap(self, candidates: set[str], older_than_s: float = 0.0) -> list[str]:
        """Delete those candidate blobs that no row references; returns the removed digests."""
        removed = []
        with self._db.session_scope() as session:
            self._blob_guard(session, exclusive=True)
            referenced = _referenced_blobs(session)
            for sha in sorted(candidates - referenced):
                if self._db.blobs.exists(sha) and self._db.blobs.age_seconds(sha) >= older_than_s:
                    self._db.blobs.delete(sha)
                    removed.append(sha)
        return removed

    def cleanup_orphans(self, older_than_s: float = 0.0) -> CleanupReport:
        """Remove partial temp files and unreferenced blobs older than older_than_s.

        Use 0 only when no writer is live (start-up): a live writer's temp file has no row yet.
        """
        temp = self._db.blobs.clean_temp(older_than_s)
        return CleanupReport(temp, self.reap(set(self._db.blobs.iter_blobs()), older_than_s))

    def row_counts(self) -> dict[str, int]:
        models = (
            StructureClass,
            Case,
            Annotation,
            Prediction,
            Correction,
            Prototype,
            PrototypeHistory,
            TrainingRun,
            ModelVersion,
        )
        with self._db.session_scope() as session:
            return {m.__tablename__: session.scalar(select(func.count()).select_from(m)) or 0 for m in models}


class ProjectRepository(_Repository):
    """Whole-project snapshots (classes, cases, annotations, prototypes) for export and import."""

    def snapshot(self) -> ProjectSnapshot:
        with self._db.session_scope() as session:
            classes = [{"name": c.name, "color": c.color} for c in session.scalars(select(StructureClass))]
            cases = [
                {
                    "name": c.name,
                    "source_filename": c.source_filename,
                    "modality": c.modality,
                    "shape": list(c.shape),
                    "spacing": c.spacing,
                    "affine": c.affine,
                    "orientation": c.orientation,
                    "sha256": c.sha256,
                    "created_at": c.created_at,
                    "annotations": [
                        {
                            "class_name": a.structure_class.name,
                            "slice_indices": list(a.slice_indices),
                            "mask_sha256": a.mask_sha256,
                            "author": a.author,
                            "created_at": a.created_at,
                        }
                        for a in sorted(c.annotations, key=lambda a: a.id)
                    ],
                }
                for c in session.scalars(select(Case).order_by(Case.id))
            ]
            prototypes = [
                {
                    "class_name": p.structure_class.name,
                    "model_version": p.model_version,
                    "update_count": p.update_count,
                    "embedding": bytes(p.embedding),
                }
                for p in session.scalars(select(Prototype).order_by(Prototype.id))
            ]
        return ProjectSnapshot(classes=classes, cases=cases, prototypes=prototypes)

    def import_snapshot(self, snapshot: ProjectSnapshot) -> ImportReport:
        """Add a snapshot in one transaction; its blobs must already be in the store.

        Cases already present (same file checksum) are reused and identical annotations skipped.
        """
        counts = dict.fromkeys(("cases_added", "cases_reused", "annotations_added", "classes_added"), 0)
        written = 0
        with self._db.session_scope() as session:
            self._blob_guard(session)
            if missing := sorted(s for s in snapshot.blob_shas() if not self._db.blobs.exists(s)):
                raise StorageError(f"blobs missing from the store: {missing}")
            known = set(session.scalars(select(StructureClass.name)))
            for c in snapshot.classes:
                _get_or_create_class(session, c["name"], c["color"])
            counts["classes_added"] = len({c["name"] for c in snapshot.classes} - known)
            for item in snapshot.cases:
                case = session.scalars(select(Case).where(Case.sha256 == item["sha256"]).limit(1)).first()
                counts["cases_reused" if case else "cases_added"] += 1
                if case is None:
                    case = Case(
                        **{k: v for k, v in item.items() if k != "annotations"},
                        file_relpath=self._db.blobs.relpath(item["sha256"]),
                        size_bytes=self._db.blobs.path_for(item["sha256"]).stat().st_size,
                    )
                    session.add(case)
                    session.flush()
                existing = {(a.structure_class.name, a.mask_sha256, tuple(a.slice_indices)) for a in case.annotations}
                for a in item["annotations"]:
                    if (a["class_name"], a["mask_sha256"], tuple(a["slice_indices"])) in existing:
                        continue
                    session.add(
                        Annotation(
                            case=case,
                            structure_class=_get_or_create_class(session, a["class_name"], None),
                            slice_indices=list(a["slice_indices"]),
                            mask_sha256=a["mask_sha256"],
                            mask_relpath=self._db.blobs.relpath(a["mask_sha256"]),
                            author=a["author"],
                            created_at=a["created_at"],
                        )
                    )
                    counts["annotations_added"] += 1
            for p in snapshot.prototypes:
                current = session.scalars(
                    select(Prototype)
                    .join(Prototype.structure_class)
                    .where(StructureClass.name == p["class_name"], Prototype.model_version == p["model_version"])
                ).one_or_none()
                if current is None or bytes(current.embedding) != p["embedding"]:
                    _upsert_prototype(
                        session, p["class_name"], p["model_version"], p["embedding"], p["update_count"], "import"
                    )
                    written += 1
        return ImportReport(**counts, prototypes_written=written)
