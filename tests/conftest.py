"""Shared fixtures: throwaway PostgreSQL databases and roles, SQLite files, a CLI runner.

Point the suite at any PostgreSQL server with ``MIGRATE_TEST_DATABASE_URL``
(a URL to a database the tests may connect to with CREATEDB and CREATEROLE
rights; default ``postgresql://postgres@127.0.0.1:5432/postgres``). Each test
gets its own database, dropped afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_MIGRATIONS = ROOT / "migrations"
ADMIN_URL = os.environ.get(
    "MIGRATE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def _with_database(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, ""))


def admin_connect() -> psycopg.Connection:
    return psycopg.connect(ADMIN_URL, autocommit=True)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """URL of a fresh, empty PostgreSQL database (dropped after the test)."""
    name = f"migrate_test_{uuid.uuid4().hex[:12]}"
    with admin_connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield _with_database(ADMIN_URL, name)
    finally:
        with admin_connect() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def pg_conn(pg_url: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to the ``pg_url`` database."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def make_role() -> Iterator:
    """make_role(password=None, login=True) -> role name; roles are dropped afterwards."""
    created: list[str] = []

    def make(password: str | None = None, login: bool = True) -> str:
        name = f"migrate_role_{uuid.uuid4().hex[:10]}"
        query = sql.SQL("CREATE ROLE {} {} {}").format(
            sql.Identifier(name),
            sql.SQL("LOGIN" if login else "NOLOGIN"),
            sql.SQL("PASSWORD {}").format(sql.Literal(password)) if password else sql.SQL(""),
        )
        with admin_connect() as conn:
            conn.execute(query)
        created.append(name)
        return name

    yield make
    with admin_connect() as conn:
        for name in created:
            for (db,) in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'migrate_test_%'").fetchall():
                try:
                    with psycopg.connect(_with_database(ADMIN_URL, db), autocommit=True) as c2:
                        c2.execute("SET lock_timeout = '5s'")  # never hang on another test's open transaction
                        c2.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
                except psycopg.Error:
                    pass
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def url_as(url: str, user: str, password: str | None = None) -> str:
    """``url`` with its user (and password) replaced."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = f":{parts.port}" if parts.port else ""
    auth = user + (f":{password}" if password else "")
    return urlunsplit((parts.scheme, f"{auth}@{host}{port}", parts.path, parts.query, ""))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'test.db'}"


@pytest.fixture
def example_migrations(tmp_path: Path) -> Path:
    """A private copy of the example migrations folder."""
    target = tmp_path / "migrations"
    shutil.copytree(EXAMPLE_MIGRATIONS, target)
    return target


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def run_migrate(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
                timeout: float = 120) -> Result:
    """Run the ``migrate`` CLI in a subprocess (as a user or a pipeline would)."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "MIGRATE_MIGRATIONS", "MIGRATE_CONFIG")}
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=cwd or ROOT, env=full_env, capture_output=True, text=True, timeout=timeout,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def migrate():
    """The ``run_migrate`` helper as a fixture."""
    return run_migrate
