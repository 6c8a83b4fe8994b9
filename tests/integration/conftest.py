"""Database fixtures: every `db` test runs on SQLite and on a throwaway PostgreSQL server.

PostgreSQL comes from IRIS_TEST_PG_URL (a URL whose user may create databases) or, failing that,
from Debian's server binaries (/usr/lib/postgresql/*/bin), started here in a temporary directory.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from storage.database import Database
from tests.processes import free_port


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a PostgreSQL maintenance database on a server the tests may create databases on."""
    if url := os.environ.get("IRIS_TEST_PG_URL"):
        yield url
        return
    initdbs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not initdbs:
        pytest.skip("no PostgreSQL: set IRIS_TEST_PG_URL or `apt-get install postgresql`")
    bindir = Path(initdbs[-1]).parent
    prefix: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="iris-pg-"))
    if os.geteuid() == 0:  # initdb refuses to run as root
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server")
        os.chown(root, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
    try:
        subprocess.run(
            [*prefix, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "iris", "-E", "UTF8", "--no-sync"],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-o", options, "start"],
            check=True,
            capture_output=True,
        )
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"could not start PostgreSQL: {exc.stderr.decode(errors='replace')[-500:]}")
    try:
        yield f"postgresql+psycopg://iris@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], check=False)
        shutil.rmtree(root, ignore_errors=True)


def _pg_admin(server_url: str) -> str:
    return make_url(server_url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_template(postgres_url: str) -> Iterator[str]:
    """Name of a database migrated to head, cloned by each test (much faster than migrating)."""
    template = _pg_database(postgres_url, None)
    url = next(template)
    data_dir = Path(tempfile.mkdtemp(prefix="iris-pg-template-"))
    Database(url, data_dir).close()
    shutil.rmtree(data_dir)
    yield make_url(url).database or ""
    template.close()


def _pg_database(postgres_url: str, template: str | None) -> Iterator[str]:
    import psycopg

    name = f"iris_test_{uuid.uuid4().hex[:12]}"
    clause = f' TEMPLATE "{template}"' if template else ""
    with psycopg.connect(_pg_admin(postgres_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{clause}')
    try:
        yield make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(_pg_admin(postgres_url), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_database_url(postgres_url: str, pg_template: str) -> Iterator[str]:
    """A fresh PostgreSQL database for one test, already at the newest schema."""
    yield from _pg_database(postgres_url, pg_template)


@pytest.fixture
def pg_empty_database_url(postgres_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test."""
    yield from _pg_database(postgres_url, None)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """URL of a database for one test (a PostgreSQL one already migrated)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'iris.db'}"
    return request.getfixturevalue("pg_database_url")


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """URL of an empty database, no schema at all."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'iris.db'}"
    return request.getfixturevalue("pg_empty_database_url")


@pytest.fixture
def db(db_url: str, tmp_path: Path) -> Iterator[Database]:
    database = Database(db_url, tmp_path / "data")
    yield database
    database.close()
