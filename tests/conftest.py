"""Shared fixtures: throwaway PostgreSQL databases and roles, SQLite files, a CLI runner.

Point the suite at any PostgreSQL server with ``MIGRATE_TEST_DATABASE_URL``
(a URL to a database the tests may connect to with CREATEDB and CREATEROLE
rights; default ``postgresql://postgres@127.0.0.1:5432/postgres``). Each test
gets its own database, dropped afterwards.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from helpers import (ADMIN_URL, EXAMPLE_MIGRATIONS, PG_BIN, PrivateCluster, admin_connect, new_private_cluster,
                     run_migrate, with_database)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """URL of a fresh, empty PostgreSQL database (dropped after the test)."""
    name = f"migrate_test_{uuid.uuid4().hex[:12]}"
    with admin_connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_database(ADMIN_URL, name)
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
            # Only the databases where the role owns or was granted something (pg_shdepend), not every one.
            for (db,) in conn.execute(
                    "SELECT DISTINCT d.datname FROM pg_catalog.pg_shdepend s JOIN pg_catalog.pg_database d"
                    " ON d.oid = CASE WHEN s.dbid = 0 THEN s.objid ELSE s.dbid END"  # 0: a grant on a database
                    " WHERE s.refclassid = 'pg_catalog.pg_authid'::pg_catalog.regclass"
                    " AND s.refobjid = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = %s)", (name,)).fetchall():
                try:
                    with psycopg.connect(with_database(ADMIN_URL, db), autocommit=True) as c2:
                        c2.execute("SET lock_timeout = '5s'")  # never hang on another test's open transaction
                        c2.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
                except psycopg.Error:
                    pass
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


@pytest.fixture
def databases() -> Iterator:
    """databases(n) -> n fresh database URLs (dropped afterwards)."""
    made: list[str] = []

    def make(n: int) -> list[str]:
        urls = []
        with admin_connect() as conn:
            for _ in range(n):
                name = f"migrate_test_{uuid.uuid4().hex[:12]}"
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                made.append(name)
                urls.append(with_database(ADMIN_URL, name))
        return urls

    yield make
    with admin_connect() as conn:
        for name in made:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'test.db'}"


@pytest.fixture
def example_migrations(tmp_path: Path) -> Path:
    """A private copy of the example migrations folder."""
    target = tmp_path / "migrations"
    shutil.copytree(EXAMPLE_MIGRATIONS, target)
    return target


@pytest.fixture
def migrate():
    """The ``run_migrate`` helper as a fixture."""
    return run_migrate


@pytest.fixture(scope="session")
def private_cluster() -> Iterator[PrivateCluster]:
    """A throwaway PostgreSQL cluster of the session's own (helpers.new_private_cluster), for tests marked
    ``private_cluster``. Tests that leave it stopped, or change its settings, take their own
    ``new_private_cluster()`` instead."""
    with new_private_cluster() as cluster:
        yield cluster


def _missing(marker: str) -> str | None:
    """Why a test with ``marker`` cannot run here (None: it can). CI runs as root with the binaries."""
    if os.geteuid() != 0:
        return f"{marker}: the suite is not running as root"
    if marker == "private_cluster" and not (PG_BIN / "initdb").exists():
        return f"{marker}: no PostgreSQL server binaries in {PG_BIN}"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for marker in ("needs_root", "private_cluster"):
            reason = item.get_closest_marker(marker) and _missing(marker)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))
