"""Engine, sessions and schema upgrade for one IRIS Studio project database."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DatabaseError
from sqlalchemy.orm import Session, sessionmaker

from storage.errors import StorageError
from storage.files import BlobStore

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000
SQLITE_MAGIC = b"SQLite format 3\x00"


class Database:
    """A project database (any SQLAlchemy URL, SQLite by default) plus its blob store.

    Opening it upgrades the schema to the newest Alembic revision.
    """

    def __init__(self, url: str | None = None, data_dir: Path | str = "iris_data") -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.url = url or f"sqlite:///{self.data_dir / 'iris.db'}"
        self.blobs = BlobStore(self.data_dir / "blobs")
        _check_sqlite_file(self.url)
        self.engine = _create_engine(self.url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        try:
            self.upgrade()
        except DatabaseError as error:
            self.engine.dispose()
            raise StorageError(f"cannot open the database {make_url(self.url).render_as_string()}: "
                               f"{error.orig or error}") from error

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def upgrade(self, revision: str = "head") -> None:
        """Run the packaged Alembic migrations up to revision."""
        with self.engine.begin() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.upgrade(config, revision)

    def table_names(self) -> list[str]:
        return sorted(inspect(self.engine).get_table_names())

    @contextmanager
    def session_scope(self) -> Iterator[Session]:
        """One unit of work: commit on success, roll back on any exception."""
        session = self._sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def alembic_config() -> Config:
    """Alembic configuration pointing at the migrations shipped inside this package."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def _check_sqlite_file(url: str) -> None:
    """Refuse, before connecting (so it is never written to), an SQLite file that is not an SQLite database."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return
    path = Path(parsed.database)
    if not path.is_file() or path.stat().st_size == 0:
        return
    with path.open("rb") as f:
        head = f.read(len(SQLITE_MAGIC))
    if head != SQLITE_MAGIC:
        raise StorageError(f"{path} is not an SQLite database (corrupt, or another kind of file); it was left "
                           "untouched: move it away or choose another --db-url or --data-dir")


def _create_engine(url: str) -> Engine:
    if make_url(url).get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # let SQLAlchemy emit BEGIN itself (below)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # Take the write lock up front: a deferred transaction that later upgrades to a writer
        # fails at once with SQLITE_BUSY under concurrency, without waiting for the busy timeout.
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
