"""The pytest plugin (runner/pytest_plugin.py), run by pytester in a sample application project.

The sample project gets a copy of the example migrations and contracts; its tests talk to real
databases: PostgreSQL at MIGRATE_TEST_DATABASE_URL (the suite's server), or SQLite files when no
server is configured.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from importlib.metadata import entry_points

import psycopg
import pytest

from helpers import ADMIN_URL, ROOT

pytest_plugins = ["pytester"]

MIGRATIONS = ["001_create_remediation_workflow_catalog", "017_add_execution_bundle",
              "018_rename_execution_bundle_to_container_image"]


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """An application project: migrations/, contracts/, the suite's PostgreSQL server."""
    shutil.copytree(ROOT / "migrations", pytester.path / "migrations")
    monkeypatch.setenv("MIGRATE_TEST_DATABASE_URL", ADMIN_URL)
    for name in ("DATABASE_URL", "MIGRATE_MIGRATIONS", "MIGRATE_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    return pytester


def database_exists(name: str) -> bool:
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def test_registered_as_a_pytest11_entry_point_and_cheap_to_import() -> None:
    plugins = {e.name: e.value for e in entry_points(group="pytest11")}
    assert plugins.get("migrate") == "runner.pytest_plugin"
    heavy = ("psycopg", "sqlalchemy", "yoyo", "structlog", "click", "pglast", "sqlparse", "runner.commands")
    code = ("import sys, runner.pytest_plugin; "
            f"print([m for m in sys.modules if m.split('.')[0] in {heavy!r} or m in {heavy!r}])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_inert_without_configuration(pytester: pytest.Pytester) -> None:
    """No ini options: contract files are not collected, no fixture runs unasked."""
    pytester.makepyfile("def test_nothing():\n    pass\n")
    (pytester.path / "contracts").mkdir()
    shutil.copy(ROOT / "contracts" / "workflow-api-018.toml", pytester.path / "contracts")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", ".", "contracts")
    result.assert_outcomes(passed=1)
    fixtures = pytester.runpytest_subprocess("--fixtures")
    fixtures.stdout.fnmatch_lines(["*migrate_database*", "*migrate_stairway*"])


def test_migrate_database_at_head_then_dropped(project: pytest.Pytester) -> None:
    project.makeini("[pytest]\nmigrate_migrations = migrations\n")
    project.makepyfile(f"""
        import psycopg

        def test_head(migrate_database, migrate_url):
            assert migrate_database.applied == {MIGRATIONS!r}
            assert migrate_url == migrate_database.url and migrate_url.startswith("postgresql://")
            with psycopg.connect(migrate_url) as conn:
                conn.execute("SELECT container_image FROM remediation_workflow_catalog")
            open("made.txt", "w").write(migrate_url.rsplit("/", 1)[1])

        def test_two_at_once(migrate_database_factory):
            a, b = migrate_database_factory(), migrate_database_factory("001_create_remediation_workflow_catalog")
            assert a.url != b.url and b.applied == ["001_create_remediation_workflow_catalog"]
    """)
    result = project.runpytest_subprocess()
    result.assert_outcomes(passed=2)
    name = (project.path / "made.txt").read_text()
    assert name.startswith("migrate_pytest_")
    assert not database_exists(name)


def test_marker_and_ini_target(project: pytest.Pytester) -> None:
    project.makeini("[pytest]\nmigrate_migrations = migrations\nmigrate_target = 017_add_execution_bundle\n")
    project.makepyfile("""
        import psycopg
        import pytest

        def test_ini_target(migrate_database):
            assert migrate_database.applied[-1] == "017_add_execution_bundle"
            with psycopg.connect(migrate_database.url) as conn:
                conn.execute("SELECT execution_bundle FROM remediation_workflow_catalog")

        @pytest.mark.migrate("001_create_remediation_workflow_catalog")
        def test_marker(migrate_database):
            assert migrate_database.applied == ["001_create_remediation_workflow_catalog"]

        @pytest.mark.migrate(to="head")
        def test_marker_head(migrate_database):
            assert migrate_database.applied[-1].startswith("018_")

        @pytest.mark.migrate("999_no_such_version")
        def test_unknown_version(migrate_database):
            pass
    """)
    result = project.runpytest_subprocess("--strict-markers")
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(["migrate: *999_no_such_version*"])
    assert "Traceback" not in result.stdout.str()


def test_sqlite_when_no_server_is_configured(project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MIGRATE_TEST_DATABASE_URL")
    project.makeini("[pytest]\nmigrate_migrations = migrations\n")
    project.makepyfile("""
        import sqlite3

        def test_sqlite(migrate_database):
            assert migrate_database.url.startswith("sqlite:///")
            path = migrate_database.url[len("sqlite:///"):]
            sqlite3.connect(path).execute("SELECT container_image FROM remediation_workflow_catalog")
    """)
    project.runpytest_subprocess().assert_outcomes(passed=1)


def test_stairway_passes_on_the_example_migrations(project: pytest.Pytester) -> None:
    project.makeini("[pytest]\nmigrate_migrations = migrations\n")
    project.makepyfile("from runner.pytest_plugin import test_migrations_stairway\n")
    project.runpytest_subprocess().assert_outcomes(passed=1)


@pytest.mark.parametrize("rollback, expected", [
    ("DROP TABLE widgets;\n", "002_add_colour: down: the rollback did not restore the schema: "
                              "table-dropped widgets"),
    (None, "002_add_colour: down:"),
])
def test_stairway_names_the_migration_whose_rollback_is_wrong(project: pytest.Pytester, rollback: str | None,
                                                              expected: str) -> None:
    folder = project.path / "bad"
    folder.mkdir()
    (folder / "001_widgets.sql").write_text("CREATE TABLE widgets (id integer PRIMARY KEY);\n")
    (folder / "001_widgets.rollback.sql").write_text("DROP TABLE widgets;\n")
    (folder / "002_add_colour.sql").write_text("ALTER TABLE widgets ADD COLUMN colour text;\n")
    if rollback is not None:
        (folder / "002_add_colour.rollback.sql").write_text(rollback)
    project.makeini("[pytest]\nmigrate_migrations = bad\n")
    project.makepyfile("from runner.pytest_plugin import test_migrations_stairway\n")
    result = project.runpytest_subprocess()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"*stairway: {expected}*"])


def test_contracts_are_collected_as_items(project: pytest.Pytester) -> None:
    contracts = project.path / "contracts"
    contracts.mkdir()
    for name in ("workflow-api-017.toml", "workflow-api-018.toml"):
        shutil.copy(ROOT / "contracts" / name, contracts)
    (contracts / "reports.toml").write_text(
        '[consumer]\nname = "reports"\n\n[tables.remediation_workflow_catalog]\ncolumns = ["workflow_id", "owner"]\n')
    project.makeini("[pytest]\nmigrate_migrations = migrations\nmigrate_contracts = contracts/*.toml\n"
                    "testpaths = contracts\n")
    result = project.runpytest_subprocess("-v")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*contracts/reports.toml::reports.toml FAILED*",
                                 "*contracts/workflow-api-017.toml::workflow-api-017.toml PASSED*",
                                 "*contracts/workflow-api-018.toml::workflow-api-018.toml PASSED*"])
    result.stdout.fnmatch_lines(["reports.toml: reports: owner missing from remediation_workflow_catalog"])
    assert "Traceback" not in result.stdout.str()
    made = set(re.findall(r"/(migrate_pytest_[0-9a-f]{12})\b", result.stdout.str()))
    assert len(made) == 1, "one database for all contract items"
    assert not database_exists(made.pop()), "the contracts' database was not dropped at the end of the session"
