"""Consumer contracts: `migrate verify --consumer FILE` against real PostgreSQL (and SQLite).

The story: a Go service scanning SELECT * with sqlx failed with "missing destination name
execution_bundle" because a test environment had 017 applied but not 018.
"""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from helpers import error_lines, columns, CONTRACTS, migrate_json_logs as migrate, sql

from runner.contracts import load_contract  # noqa: E402
from runner.errors import ConfigError  # noqa: E402

OLD = str(CONTRACTS / "workflow-api-017.toml")
NEW = str(CONTRACTS / "workflow-api-018.toml")
EXPLICIT = str(CONTRACTS / "catalog-report.json")


def up(url: str, folder: Path, *extra: str) -> None:
    result = migrate("up", "--database", url, "--migrations", str(folder), *extra)
    assert result.returncode == 0, result


def verify(url: str, folder: Path, *files: str, fmt: str | None = None):
    args = ["verify", "--database", url, "--migrations", str(folder)]
    for f in files:
        args += ["--consumer", f]
    if fmt:
        args += ["--format", fmt]
    return migrate(*args)


def test_example_contracts_describe_the_real_017_and_018_shapes(pg_url, example_migrations):
    up(pg_url, example_migrations, "--to", "017_add_execution_bundle")
    old = load_contract(Path(OLD)).tables[0]
    assert sorted(old.columns) == sorted(columns(pg_url, "remediation_workflow_catalog"))
    up(pg_url, example_migrations, "--no-compat")
    new = load_contract(Path(NEW)).tables[0]
    assert sorted(new.columns) == sorted(columns(pg_url, "remediation_workflow_catalog"))
    assert old.strict_select_star and new.strict_select_star


def test_story_new_strict_consumer_against_a_database_at_017(pg_url, example_migrations):
    """New code (strict SELECT *) against a database stuck at 017: exit 1 with the precise reason."""
    up(pg_url, example_migrations, "--to", "017_add_execution_bundle")
    result = verify(pg_url, example_migrations, NEW)
    assert result.returncode == 1, result
    assert ("container_image missing from remediation_workflow_catalog: database is at 017; 018 is pending "
            "(018_rename_execution_bundle_to_container_image adds it): run `migrate up`") in result.stderr
    assert ("strict SELECT * on remediation_workflow_catalog would get extra column execution_bundle"
            in result.stderr)
    assert 'missing destination name execution_bundle' in result.stderr
    # The same database serves the old consumer and the explicit-column one directly.
    ok = verify(pg_url, example_migrations, OLD, EXPLICIT)
    assert ok.returncode == 0, ok
    assert "search_path=public" in ok.stdout


def test_story_reproduces_the_sqlx_failure_it_predicts(pg_url, example_migrations):
    """What verify predicts is what a strict scanner sees: the real column set differs exactly so."""
    up(pg_url, example_migrations, "--to", "017_add_execution_bundle")
    wanted = set(load_contract(Path(NEW)).tables[0].columns)
    with psycopg.connect(pg_url) as conn:
        cur = conn.execute("SELECT * FROM remediation_workflow_catalog")
        got = {d.name for d in cur.description}
    assert got - wanted == {"execution_bundle"}  # sqlx: missing destination name execution_bundle
    assert wanted - got == {"container_image", "container_digest"}


def test_after_018_old_consumer_is_served_through_the_shim_and_new_one_directly(pg_url, example_migrations):
    up(pg_url, example_migrations)
    result = verify(pg_url, example_migrations, OLD, NEW, EXPLICIT, fmt="json")
    assert result.returncode == 0, result
    data = result.json()
    by_name = {c["consumer"]: c for c in data["consumers"]}
    assert by_name["workflow-api (017 code)"]["search_path"] == "compat_017,public"
    assert by_name["workflow-api (017 code)"]["via_shim"]
    assert by_name["workflow-api (018 code)"]["search_path"] == "public"
    assert by_name["catalog-report"]["search_path"] == "public"
    # The search_path it prints really gives the old consumer exactly its columns.
    with psycopg.connect(pg_url, options="-c search_path=compat_017,public") as conn:
        cur = conn.execute("SELECT * FROM remediation_workflow_catalog")
        assert {d.name for d in cur.description} == set(load_contract(Path(OLD)).tables[0].columns)


def test_without_a_shim_the_old_strict_consumer_fails_on_missing_and_extra_columns(pg_url, example_migrations):
    up(pg_url, example_migrations, "--no-compat")
    result = verify(pg_url, example_migrations, OLD)
    assert result.returncode == 1, result
    assert "execution_bundle missing from remediation_workflow_catalog: 018" in result.stderr
    assert "renamed it to container_image" in result.stderr
    assert "strict SELECT * on remediation_workflow_catalog would get extra column container_digest" in result.stderr
    assert "strict SELECT * on remediation_workflow_catalog would get extra column container_image" in result.stderr
    # The explicit-column consumer does not care.
    assert verify(pg_url, example_migrations, EXPLICIT).returncode == 0


def test_after_the_shim_is_dropped_the_old_consumer_fails(pg_url, example_migrations):
    up(pg_url, example_migrations)
    from compat.lifecycle import drop
    from runner.db import connect

    name = sql(pg_url, "SELECT name FROM _migrate_shims WHERE status = 'active'")[0][0]
    with connect(pg_url) as db:
        drop(db, [name], force=True)
    assert sql(pg_url, "SELECT status FROM _migrate_shims")[0][0] == "dropped"
    result = verify(pg_url, example_migrations, OLD)
    assert result.returncode == 1 and "no active shim presents the old name" in result.stderr, result


# ----------------------------------------------------------------------------- bad contract files

@pytest.mark.parametrize("content, suffix, expected", [
    ('[tables.remediation_workflow_catalog]\ncolums = ["workflow_id"]\n', ".toml",
     "tables.remediation_workflow_catalog.colums: unknown key (did you mean 'columns'?)"),
    ('[tables.remediation_workflow_catalog]\ncolumns = ["workflow_id"]\nstrict_select_star = "yes"\n', ".toml",
     "tables.remediation_workflow_catalog.strict_select_star: expected true or false"),
    ('[consumer]\nnmae = "x"\n[tables.t]\ncolumns = ["a"]\n', ".toml", "consumer.nmae: unknown key"),
    ('{"tables": {"t": {"columns": []}}}', ".json", "tables.t.columns: expected a non-empty list"),
    ('{"tables": {"t": {"columns": ["a"]}', ".json", "invalid JSON"),
    ('[consumer]\nname = "x"\n', ".toml", "tables: expected at least one [tables.<name>] entry"),
    ('tables = 1', ".yaml", "contract files must end in .toml or .json"),
])
def test_bad_contract_files_give_one_line_naming_file_and_key(tmp_path, content, suffix, expected):
    path = tmp_path / f"bad{suffix}"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_contract(path)
    assert str(path) in str(err.value) and expected in str(err.value)
    assert "\n" not in str(err.value)


def test_cli_contract_with_a_typo_exits_2_before_touching_the_database(tmp_path, example_migrations):
    path = tmp_path / "typo.toml"
    path.write_text('[tables.remediation_workflow_catalog]\ncolums = ["workflow_id"]\n', encoding="utf-8")
    # An unreachable database: the file error must come first (exit 2, not 5).
    result = verify("postgresql://postgres@127.0.0.1:1/nowhere", example_migrations, str(path))
    assert result.returncode == 2, result
    assert error_lines(result.stderr)[-1] == (
        f"migrate: error: {path}: tables.remediation_workflow_catalog.colums: unknown key (did you mean 'columns'?)")


def test_cli_contract_with_an_unknown_table_exits_2(pg_url, tmp_path, example_migrations):
    up(pg_url, example_migrations)
    path = tmp_path / "unknown.json"
    path.write_text(json.dumps({"tables": {"remediation_workflow_catalg": {"columns": ["workflow_id"]}}}))
    result = verify(pg_url, example_migrations, str(path))
    assert result.returncode == 2, result
    line = error_lines(result.stderr)[-1]
    assert line.startswith(f"migrate: error: {path}: tables.remediation_workflow_catalg: unknown table")
    assert "did you mean 'remediation_workflow_catalog'?" in line


def test_table_created_by_a_pending_migration_is_a_verify_failure_not_a_bad_file(pg_url, tmp_path,
                                                                                 example_migrations):
    up(pg_url, example_migrations)
    (example_migrations / "019_create_runs.sql").write_text("CREATE TABLE workflow_runs (id bigint, workflow_id text);\n")
    path = tmp_path / "runs.toml"
    path.write_text('[tables.workflow_runs]\ncolumns = ["id"]\n', encoding="utf-8")
    result = verify(pg_url, example_migrations, str(path))
    assert result.returncode == 1, result
    assert "table workflow_runs missing: database is at 018; 019 is pending (019_create_runs)" in result.stderr


def test_sqlite_contracts(sqlite_url, example_migrations):
    up(sqlite_url, example_migrations, "--to", "017_add_execution_bundle")
    assert verify(sqlite_url, example_migrations, OLD).returncode == 0
    result = verify(sqlite_url, example_migrations, NEW)
    assert result.returncode == 1 and "database is at 017; 018 is pending" in result.stderr, result
