"""Fixtures of the reliability suite (on top of tests/conftest.py).

* ``target``: a fresh PostgreSQL database plus a runner role WITH a password
  (the suite's secret); ``target.url`` contains that password, so every output
  of every run is checked for it (see harness.check_no_secret).
* ``private_target``: a database and a runner role on the ``private_cluster``
  fixture of tests/conftest.py (a throwaway cluster of our own, see
  helpers.new_private_cluster), for the restart scenario: the shared server on
  5432 is never restarted.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from helpers import PrivateCluster
from reliability import harness


@pytest.fixture(scope="session", autouse=True)
def _figures() -> Iterator[None]:
    """Write the figures for RELIABILITY.md at the end (when the report asked for them)."""
    yield
    path = os.environ.get(harness.FIGURES_ENV)
    if path:
        harness.FIGURES.dump(path)


@dataclass
class Target:
    """A database for one test: ``url`` is the runner role's URL (with password)."""

    admin: str  # superuser URL of the same database
    url: str
    name: str
    role: str

    def admin_conn(self) -> psycopg.Connection:
        return harness.connect(self.admin)


def grant_runner(admin: str, role: str, database: str) -> None:
    with harness.connect(admin) as conn:
        conn.execute(sql.SQL("GRANT CONNECT, CREATE, TEMPORARY ON DATABASE {} TO {}").format(
            sql.Identifier(database), sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA public TO {}").format(sql.Identifier(role)))


@pytest.fixture
def target(pg_url: str, make_role) -> Target:
    role = make_role(password=harness.PASSWORD)
    name = harness.dbname(pg_url)
    grant_runner(pg_url, role, name)
    return Target(admin=pg_url, url=harness.with_user(pg_url, role), name=name, role=role)


@pytest.fixture
def more_targets(target: Target) -> Iterator:
    """more_targets(n) -> n more databases on the same server, for the same runner role."""
    created: list[str] = []

    def make(n: int) -> list[Target]:
        found = []
        for _ in range(n):
            name = f"migrate_test_{uuid.uuid4().hex[:12]}"
            with harness.connect(target.admin) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            created.append(name)
            admin = harness.with_database(target.admin, name)
            grant_runner(admin, target.role, name)
            found.append(Target(admin=admin, url=harness.with_user(admin, target.role), name=name, role=target.role))
        return found

    yield make
    with harness.connect(target.admin) as conn:
        for name in created:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "migrations"
    path.mkdir()
    return path


# ----------------------------------------------------------------------------- private cluster
@pytest.fixture
def private_target(private_cluster: PrivateCluster) -> Iterator[Target]:
    """A database on the private cluster and a runner role whose password is really checked."""
    name = private_cluster.create_database()
    role = f"rel_runner_{uuid.uuid4().hex[:8]}"
    admin = private_cluster.admin_url(name)
    with psycopg.connect(private_cluster.admin_url(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role),
                                                                         sql.Literal(harness.PASSWORD)))
    grant_runner(admin, role, name)
    yield Target(admin=admin, url=harness.with_user(admin, role), name=name, role=role)
    try:
        with psycopg.connect(private_cluster.admin_url(), autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
    except psycopg.Error:
        pass  # the cluster is removed at the end of the session anyway


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Long variants (marked ``slow``) run only with MIGRATE_LONG_TESTS=1; otherwise they are
    deselected (not skipped): the default variant already exercises every fault kind."""
    if harness.LONG:
        return
    here = Path(__file__).parent
    dropped = [i for i in items if i.get_closest_marker("slow") and here in Path(str(i.fspath)).parents]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [i for i in items if i not in dropped]
