"""The pytest plugin (entry point ``pytest11``: ``migrate``): migrated throwaway databases for an
application's tests, the stairway check, and consumer contracts as test items.

Loaded by pytest in any environment where ``migrate-runner`` is installed, so it stays cheap and
inert: importing it imports pytest and the standard library only (the runner, the database
drivers and structlog are imported by the fixtures that need them), it has no autouse fixture,
and it collects nothing unless ``migrate_contracts`` is set.

Configuration (``[tool.pytest.ini_options]`` or ``pytest.ini``):

- ``migrate_migrations``: the migrations folder, relative to the rootdir (default: the project's
  migrate config, else ``migrations``);
- ``migrate_test_database_url``: a PostgreSQL server URL with the right to create databases;
  the environment variable ``MIGRATE_TEST_DATABASE_URL`` wins over it; with neither, each
  database is a SQLite file in a temporary directory;
- ``migrate_target``: the version fixtures migrate to (default: head);
- ``migrate_contracts``: glob patterns (relative to the rootdir) of consumer contract files to
  collect as test items, e.g. ``contracts/*.toml`` (the folder must be among the paths pytest
  collects, e.g. ``testpaths = ["tests", "contracts"]``).

Marker: ``@pytest.mark.migrate(to="017", migrations="other/folder")`` for ``migrate_database``.
Manual: docs/testing-plugin.md.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

URL_ENV = "MIGRATE_TEST_DATABASE_URL"
NAME_PREFIX = "migrate_pytest_"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("migrate_migrations", "migrate: migrations folder, relative to the rootdir "
                  "(default: the project's migrate config, else migrations)", default="")
    parser.addini("migrate_test_database_url", f"migrate: PostgreSQL server URL for throwaway databases "
                  f"(env {URL_ENV} wins; default: SQLite files)", default="")
    parser.addini("migrate_target", "migrate: the version the fixtures migrate to (default: head)", default="")
    parser.addini("migrate_contracts", "migrate: glob patterns of consumer contract files to collect as tests",
                  type="linelist", default=[])


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "migrate(to=None, migrations=None): the version (and folder) the migrate_database fixture "
                   "migrates to")


# ---------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class MigrateTestConfig:
    """What the ini options and the environment say."""

    rootdir: Path
    migrations: Path | None  # None: the project's migrate config decides
    server_url: str | None  # None: SQLite files
    target: str | None  # None: head

    @classmethod
    def from_pytest(cls, config: pytest.Config) -> MigrateTestConfig:
        rootdir = Path(config.rootpath)
        folder = str(config.getini("migrate_migrations") or "").strip()
        server = os.environ.get(URL_ENV) or str(config.getini("migrate_test_database_url") or "").strip()
        target = str(config.getini("migrate_target") or "").strip()
        return cls(rootdir, rootdir / folder if folder else None, server or None,
                   None if target in ("", "head") else target)

    def settings(self, url: str, migrations: str | Path | None = None) -> Any:
        """runner.config.Settings for ``url``: the project's migrate config (read from the rootdir,
        the environment left out), with this database and migrations folder."""
        from runner.config import load_settings

        folder = Path(migrations) if migrations is not None else self.migrations
        if folder is not None and not folder.is_absolute():
            folder = self.rootdir / folder
        settings = load_settings({"database": url, "migrations": str(folder) if folder else None},
                                 env={}, cwd=self.rootdir)
        if not settings.migrations.is_absolute():
            settings = replace(settings, migrations=self.rootdir / settings.migrations)
        return settings


@dataclass
class MigratedDatabase:
    """A throwaway database: its URL, the migrations applied to it, the settings to run more."""

    url: str
    applied: list[str]
    migrations: Path
    settings: Any = field(repr=False)


class Databases:
    """Throwaway databases made for one scope, dropped together."""

    def __init__(self, config: MigrateTestConfig, directory: Path) -> None:
        self.config = config
        self.directory = directory
        self._made: list[tuple[Any, str]] = []

    def _server(self) -> str:
        return self.config.server_url or f"sqlite:///{self.directory / 'scratch.db'}"

    def create(self, to: str | None = None, *, migrations: str | Path | None = None,
               apply: bool = True) -> MigratedDatabase:
        """A new database, migrated to ``to`` (default: the ini target, else head); empty when
        ``apply`` is False."""
        from runner import commands
        from runner.dialects import for_url
        from runner.urls import parse_url

        server = self._server()
        dialect = for_url(parse_url(server))
        url = dialect.create_scratch(server, f"{NAME_PREFIX}{uuid.uuid4().hex[:12]}", str(self.directory))
        self._made.append((dialect, url))
        from runner.errors import MigrateError

        target = to if to is not None else self.config.target
        try:
            settings = self.config.settings(url, migrations)
            applied = commands.up(settings, to=None if target == "head" else target).applied if apply else []
        except MigrateError as err:  # a bad folder, file or target: one line, as the CLI says it
            pytest.fail(f"migrate: {err}", pytrace=False)
        return MigratedDatabase(url, list(applied), settings.migrations, settings)

    def drop_all(self) -> None:
        server = self._server()
        while self._made:
            dialect, url = self._made.pop()
            dialect.drop_scratch(server, url)


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def migrate_config(pytestconfig: pytest.Config) -> MigrateTestConfig:
    """The plugin's configuration (ini options, ``MIGRATE_TEST_DATABASE_URL``)."""
    return MigrateTestConfig.from_pytest(pytestconfig)


@pytest.fixture
def migrate_database_factory(migrate_config: MigrateTestConfig,
                             tmp_path: Path) -> Iterator[Callable[..., MigratedDatabase]]:
    """``make(to=None, *, migrations=None, apply=True) -> MigratedDatabase``: as many throwaway
    databases as a test wants, each dropped after it."""
    databases = Databases(migrate_config, tmp_path)
    try:
        yield databases.create
    finally:
        databases.drop_all()


@pytest.fixture
def migrate_database(request: pytest.FixtureRequest,
                     migrate_database_factory: Callable[..., MigratedDatabase]) -> MigratedDatabase:
    """A throwaway database migrated to head, to ``migrate_target``, or to the ``migrate`` marker's
    version (``@pytest.mark.migrate("017")`` or ``to="017"``; ``migrations=`` another folder)."""
    marker = request.node.get_closest_marker("migrate")
    to = migrations = None
    if marker is not None:
        to = marker.args[0] if marker.args else marker.kwargs.get("to")
        migrations = marker.kwargs.get("migrations")
    return migrate_database_factory(to, migrations=migrations)


@pytest.fixture
def migrate_url(migrate_database: MigratedDatabase) -> str:
    """The URL of ``migrate_database``."""
    return migrate_database.url


@pytest.fixture
def migrate_stairway(migrate_database_factory: Callable[..., MigratedDatabase]) -> Callable[..., list[str]]:
    """``check(migrations=None) -> ids``: every migration up, down, up again on an empty throwaway
    database (runner.stairway); fails the test at the first step that fails."""

    def check(migrations: str | Path | None = None) -> list[str]:
        from runner.stairway import StairwayFailed, check_stairway

        database = migrate_database_factory(migrations=migrations, apply=False)
        try:
            return check_stairway(database.settings).checked
        except StairwayFailed as err:
            pytest.fail(str(err), pytrace=False)

    return check


def test_migrations_stairway(migrate_stairway: Callable[..., list[str]]) -> None:
    """Every migration up, down, up again. Import it into a test module to run it:
    ``from runner.pytest_plugin import test_migrations_stairway``."""
    assert migrate_stairway(), "no migrations to check"


# ---------------------------------------------------------------------------- contracts as items
class ContractNotServed(Exception):
    """The migrated database cannot serve a consumer contract."""


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    patterns = parent.config.getini("migrate_contracts")
    if not patterns:
        return None
    try:
        relative = file_path.relative_to(parent.config.rootpath).as_posix()
    except ValueError:
        relative = file_path.as_posix()
    if any(fnmatch.fnmatch(relative, pattern) for pattern in patterns):
        return ContractFile.from_parent(parent, path=file_path)
    return None


class ContractFile(pytest.File):
    """A consumer contract file (the format of ``migrate verify --consumer``): one item."""

    def collect(self) -> Iterator[pytest.Item]:
        yield ContractItem.from_parent(self, name=self.path.name)


class ContractItem(pytest.Item):
    """Passes when a database migrated to the target serves the contract."""

    def runtest(self) -> None:
        from runner.contracts import load_contract, verify_consumers
        from runner.db import open_database

        contract = load_contract(self.path)
        database = _contracts_database(self.config)
        with open_database(database.settings, read_only=True) as db:
            report = verify_consumers(db, database.settings, [contract])
        if not report.ok:
            reasons = [f"{r.consumer}: {reason}" for r in report.results if not r.ok for reason in r.reasons]
            raise ContractNotServed("\n".join(reasons) or report.as_text())

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        from runner.errors import MigrateError

        if isinstance(excinfo.value, (ContractNotServed, MigrateError)):
            return f"{self.path.name}: {excinfo.value}"
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"consumer contract {self.path.name}"


_CONTRACTS_DB = pytest.StashKey[tuple[Databases, MigratedDatabase]]()


def _contracts_database(config: pytest.Config) -> MigratedDatabase:
    """One database migrated to the target for all contract items of the session (they only read)."""
    if _CONTRACTS_DB not in config.stash:
        databases = Databases(MigrateTestConfig.from_pytest(config), Path(tempfile.mkdtemp(prefix="migrate-pytest-")))
        try:
            config.stash[_CONTRACTS_DB] = (databases, databases.create())
        except BaseException:
            databases.drop_all()
            shutil.rmtree(databases.directory, ignore_errors=True)
            raise
    return config.stash[_CONTRACTS_DB][1]


def pytest_sessionfinish(session: pytest.Session) -> None:
    made = session.config.stash.get(_CONTRACTS_DB, None)
    if made is not None:
        databases, _ = made
        del session.config.stash[_CONTRACTS_DB]
        databases.drop_all()
        shutil.rmtree(databases.directory, ignore_errors=True)
