"""Persistent storage of IRIS Studio: database, blob store, repositories, project transfer."""

from __future__ import annotations

from pathlib import Path

from storage.database import Database
from storage.errors import ArchiveError, NotFoundError, StorageError
from storage.repositories import (
    AnnotationRepository,
    CaseRepository,
    ClassRepository,
    CorrectionRepository,
    Maintenance,
    ModelRepository,
    PredictionRepository,
    ProjectRepository,
    PrototypeRepository,
    TrainingRunRepository,
)

STARTUP_CLEANUP_GRACE_S = 60.0  # leave alone files another live process may be about to reference


class Storage:
    """All repositories over one Database; what the app and the engine hold on to."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.cases = CaseRepository(db)
        self.classes = ClassRepository(db)
        self.annotations = AnnotationRepository(db)
        self.predictions = PredictionRepository(db)
        self.corrections = CorrectionRepository(db)
        self.prototypes = PrototypeRepository(db)
        self.runs = TrainingRunRepository(db)
        self.models = ModelRepository(db)
        self.project = ProjectRepository(db)
        self.maintenance = Maintenance(db)

    @classmethod
    def open(cls, url: str | None = None, data_dir: Path | str = "iris_data") -> Storage:
        """Open (and migrate) the database, clean leftovers of a crash, flag interrupted runs."""
        storage = cls(Database(url, data_dir))
        storage.maintenance.cleanup_orphans(older_than_s=STARTUP_CLEANUP_GRACE_S)
        storage.runs.mark_interrupted_runs()
        return storage

    def close(self) -> None:
        self.db.close()


__all__ = ["ArchiveError", "Database", "NotFoundError", "Storage", "StorageError"]
