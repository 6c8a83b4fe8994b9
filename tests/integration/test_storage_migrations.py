"""Alembic migrations: upgrade from an empty database, schema equals the models, down and up again."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect

from storage.database import Database, alembic_config
from storage.models import Base

TABLES = {
    "annotations",
    "cases",
    "corrections",
    "model_versions",
    "predictions",
    "prototype_history",
    "prototypes",
    "structure_classes",
    "training_runs",
}


def _current(db: Database) -> str | None:
    with db.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def test_upgrade_from_empty_database(empty_db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = create_engine(empty_db_url)
    assert inspect(engine).get_table_names() == []
    engine.dispose()
    monkeypatch.chdir(tmp_path)  # no alembic.ini anywhere near the working directory
    db = Database(empty_db_url, tmp_path / "data")
    try:
        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        assert head == "0001" and _current(db) == head
        assert set(db.table_names()) == TABLES | {"alembic_version"}
        with db.engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        Database(empty_db_url, tmp_path / "data").close()  # reopening at head is a no-op
        assert _current(db) == head
    finally:
        db.close()


def test_downgrade_to_base_and_upgrade_again(empty_db_url: str, tmp_path: Path) -> None:
    db = Database(empty_db_url, tmp_path / "data")
    try:
        with db.engine.begin() as conn:
            config = alembic_config()
            config.attributes["connection"] = conn
            command.downgrade(config, "base")
        assert set(db.table_names()) == {"alembic_version"} and _current(db) is None
        db.upgrade()
        assert set(db.table_names()) == TABLES | {"alembic_version"} and _current(db) == "0001"
    finally:
        db.close()


def test_sqlite_connection_settings(tmp_path: Path) -> None:
    db = Database(data_dir=tmp_path)
    try:
        assert db.url == f"sqlite:///{tmp_path / 'iris.db'}"
        with db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
    finally:
        db.close()
