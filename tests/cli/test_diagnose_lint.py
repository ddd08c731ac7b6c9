"""`migrate lint`: each rule, line numbers, disabling, parse errors; against real PostgreSQL for pending
migrations, active shims and `migrate up --lint`."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from helpers import error_lines, migrate_json_logs as migrate, sql, write_migrations

from runner.errors import ConfigError, MigrationFileError  # noqa: E402
from compat.model import Shim  # noqa: E402
from runner.lint import lint_migration, lint_migrations  # noqa: E402
from runner.sources import read_migration  # noqa: E402


def lint_text(tmp_path: Path, text: str, name: str = "005_change.sql", **kwargs):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return lint_migration(read_migration(path), **kwargs)


def rules(findings) -> list[tuple[str, int]]:
    return [(f.rule, f.line) for f in findings]


def test_rename_without_compat_names_file_line_and_suggests_the_directive(tmp_path):
    found = lint_text(tmp_path, "-- rename it\n\nALTER TABLE remediation_workflow_catalog\n"
                                "  RENAME COLUMN execution_bundle TO container_image;\n")
    assert rules(found) == [("rename-without-compat", 3)]
    assert found[0].file.endswith("005_change.sql")
    assert "-- compat: rename remediation_workflow_catalog.execution_bundle -> container_image window=14d" \
        in found[0].fix


def test_declared_rename_is_clean_in_file_and_in_config(tmp_path):
    declared = ("-- compat: rename public.t.a -> b window=14d\nALTER TABLE public.t RENAME COLUMN a TO b;\n")
    assert lint_text(tmp_path, declared) == []
    plain = "ALTER TABLE t RENAME COLUMN a TO b;\n"
    entry = {"migration": "006_r", "table": "t", "old": "a", "new": "b"}
    assert lint_text(tmp_path, plain, "006_r.sql", renames=[entry]) == []
    # A declaration for another column does not cover this one.
    assert rules(lint_text(tmp_path, "-- compat: rename t.x -> y\nALTER TABLE t RENAME COLUMN a TO b;\n",
                           "007_r.sql")) == [("rename-without-compat", 2)]


def test_table_rename_is_flagged(tmp_path):
    assert rules(lint_text(tmp_path, "ALTER TABLE accounts RENAME TO customers;")) == [("rename-without-compat", 1)]


def test_index_rules_distinguish_new_and_existing_tables(tmp_path):
    text = ("CREATE TABLE invoices (id int);\n"
            "CREATE INDEX invoices_id ON invoices (id);\n"
            "CREATE INDEX accounts_email ON accounts (email);\n")
    found = lint_text(tmp_path, text)
    assert rules(found) == [("index-not-concurrent", 3)]
    assert "CREATE INDEX CONCURRENTLY accounts_email ON accounts" in found[0].fix


def test_not_null_rules(tmp_path):
    text = ("ALTER TABLE accounts ADD COLUMN plan text NOT NULL;\n"
            "ALTER TABLE accounts ADD COLUMN tier text NOT NULL DEFAULT 'free';\n"
            "ALTER TABLE accounts ADD COLUMN n bigint GENERATED ALWAYS AS IDENTITY;\n"
            "ALTER TABLE accounts ALTER COLUMN email SET NOT NULL;\n"
            "CREATE TABLE fresh (id int);\n"
            "ALTER TABLE fresh ADD COLUMN x int NOT NULL, ALTER COLUMN id SET NOT NULL;\n")
    assert rules(lint_text(tmp_path, text)) == [("not-null-without-default", 1), ("set-not-null", 4)]


def test_non_transactional_statements_in_a_transactional_migration(tmp_path):
    text = ("CREATE INDEX CONCURRENTLY a_idx ON accounts (a);\n"
            "DROP INDEX CONCURRENTLY b_idx;\n"
            "REINDEX INDEX CONCURRENTLY c_idx;\n"
            "VACUUM accounts;\n"
            "ALTER TABLE p DETACH PARTITION p1 CONCURRENTLY;\n"
            "COMMIT;\n"
            "ANALYZE accounts;\n")
    found = lint_text(tmp_path, text)
    assert rules(found) == [("non-transactional-statement", n) for n in range(1, 7)]
    assert "-- transactional: false" in found[0].fix


def test_the_same_statements_are_fine_in_a_non_transactional_migration(tmp_path):
    text = "-- transactional: false\nCREATE INDEX CONCURRENTLY a_idx ON accounts (a);\n"
    assert lint_text(tmp_path, text) == []
    goose = "-- +goose NO TRANSACTION\n-- +goose Up\nCREATE INDEX CONCURRENTLY a_idx ON accounts (a);\n"
    assert lint_text(tmp_path, goose, "008_g.sql") == []


def test_enum_add_value_depends_on_the_server_version(tmp_path):
    text = "ALTER TYPE status ADD VALUE 'x';\n"
    unknown = lint_text(tmp_path, text)
    assert [(f.rule, f.severity) for f in unknown] == [("non-transactional-statement", "warning")]
    assert rules(lint_text(tmp_path, text, server_version=110000)) == [("non-transactional-statement", 1)]
    assert lint_text(tmp_path, text, server_version=150000) == []


def test_shim_exposed_columns(tmp_path):
    now = datetime.now(timezone.utc)
    shim = Shim(id=1, name="compat_017.t", migration_id="018_x", table_schema="public", table_name="t", old="x",
                new="y", renames=[{"old": "x", "new": "y"}], expose="old", as_of="017", compat_schema="compat_017",
                view_name="t", columns=[{"name": "a", "attnum": 1}, {"name": "b", "attnum": 2}], created_at=now,
                created_by="x", created_client=None, expires_at=now, status="active")
    assert set(shim.exposed) == {"a", "b"}
    text = ("ALTER TABLE t DROP COLUMN a;\nALTER TABLE t ALTER COLUMN b TYPE bigint;\n"
            "ALTER TABLE t DROP COLUMN z;\nDROP TABLE t;\n")
    found = lint_text(tmp_path, text, shims=[shim])
    assert rules(found) == [("shim-exposed-column", 1), ("shim-exposed-column", 2), ("shim-exposed-column", 4)]
    assert "migrate shims drop compat_017.t" in found[0].fix
    assert lint_text(tmp_path, text) == []  # no shim, no finding


def test_goose_file_lines_and_down_section_ignored(tmp_path):
    text = ("-- +goose Up\n-- +goose StatementBegin\nCREATE FUNCTION f() RETURNS int AS $$ SELECT 1 $$ "
            "LANGUAGE sql;\n-- +goose StatementEnd\nALTER TABLE t ALTER COLUMN c SET NOT NULL;\n"
            "-- +goose Down\nALTER TABLE t RENAME COLUMN c TO d;\n")
    assert rules(lint_text(tmp_path, text)) == [("set-not-null", 5)]


def test_disable_per_file_and_in_config(tmp_path):
    text = "-- lint: disable=set-not-null, index-not-concurrent\nALTER TABLE t ALTER COLUMN c SET NOT NULL;\n" \
           "CREATE INDEX i ON t (c);\nALTER TABLE t ADD COLUMN d int NOT NULL;\n"
    assert rules(lint_text(tmp_path, text)) == [("not-null-without-default", 4)]
    later = "ALTER TABLE t ALTER COLUMN c SET NOT NULL;\n-- lint: disable=all\n"
    assert lint_text(tmp_path, later, "009_x.sql") == []
    plain = "ALTER TABLE t ALTER COLUMN c SET NOT NULL;\n"
    assert lint_text(tmp_path, plain, "010_x.sql", settings_disable=["set-not-null"]) == []


def test_unknown_rule_names_are_errors_not_silent(tmp_path):
    with pytest.raises(MigrationFileError) as err:
        lint_text(tmp_path, "-- lint: disable=set-not-nul\nSELECT 1;\n")
    assert "005_change.sql:1: unknown lint rule 'set-not-nul'" in str(err.value)
    with pytest.raises(ConfigError, match="unknown lint rule 'nope'"):
        lint_migrations([], settings_disable=["nope"])


def test_unparseable_migration_is_one_line_with_file_and_line(tmp_path):
    with pytest.raises(MigrationFileError) as err:
        lint_text(tmp_path, "-- bad\nCREATE TABLE ok (id int);\n\nALTER TABLE ok ADD COLUM y int;\n")
    message = str(err.value)
    assert "\n" not in message
    assert message.endswith('005_change.sql:4: PostgreSQL parser (pglast): syntax error at or near "int"') or \
        "005_change.sql:4: PostgreSQL parser (pglast): syntax error" in message


def test_python_migrations_are_listed_as_skipped(tmp_path):
    path = tmp_path / "011_py.py"
    path.write_text("from yoyo import step\nstep('SELECT 1')\n", encoding="utf-8")
    report = lint_migrations([read_migration(path)])
    assert report.skipped == ["011_py"] and report.linted == [] and not report.findings


def test_example_migrations_lint_clean(example_migrations):
    from runner.sources import load_migrations

    report = lint_migrations(load_migrations(example_migrations))
    assert report.findings == [] and len(report.linted) == 3


# ----------------------------------------------------------------------------- CLI, real PostgreSQL

def test_cli_lints_only_pending_and_knows_active_shims(pg_url, example_migrations):
    assert migrate("up", "--database", pg_url, "--migrations", str(example_migrations)).returncode == 0
    write_migrations(example_migrations, {
        "019_drop_execution_bundle_shimmed.sql":
            "-- Drops the new column while compat_017 still exposes it.\n"
            "ALTER TABLE remediation_workflow_catalog ALTER COLUMN container_image TYPE text;\n",
    })
    result = migrate("lint", "--database", pg_url, "--migrations", str(example_migrations))
    assert result.returncode == 1, result
    assert "019_drop_execution_bundle_shimmed.sql:2: error [shim-exposed-column]" in result.stdout
    assert "compat_017" in result.stdout
    assert "1 migration linted" in result.stdout  # 001..018 are applied: not linted again
    js = migrate("lint", "--format", "json", "--database", pg_url, "--migrations", str(example_migrations))
    data = js.json()
    assert js.returncode == 1 and data["errors"] == 1
    assert data["findings"][0]["rule"] == "shim-exposed-column" and data["findings"][0]["line"] == 2


def test_cli_unparseable_pending_migration_exit_2(pg_url, tmp_path):
    folder = write_migrations(tmp_path / "m", {"001_bad.sql": "CREATE TABLE t (id int);\nALTER TABLE t ADD COLUM y int;\n"})
    result = migrate("lint", "--database", pg_url, "--migrations", str(folder))
    assert result.returncode == 2, result
    lines = [ln for ln in error_lines(result.stderr) if ln.startswith("migrate:")]
    assert len(lines) == 1 and "001_bad.sql:2: PostgreSQL parser (pglast): syntax error" in lines[0]
    assert "Traceback" not in result.stderr


def test_cli_offline_all_and_config_disable(tmp_path):
    folder = write_migrations(tmp_path / "m", {"001_a.sql": "ALTER TABLE t ALTER COLUMN c SET NOT NULL;\n"})
    result = migrate("lint", "--offline", "--migrations", str(folder), cwd=tmp_path)
    assert result.returncode == 1 and "[set-not-null]" in result.stdout, result
    (tmp_path / "migrate.toml").write_text('[lint]\ndisable = ["set-not-null"]\n', encoding="utf-8")
    assert migrate("lint", "--offline", "--migrations", str(folder), cwd=tmp_path).returncode == 0
    (tmp_path / "migrate.toml").write_text('[lint]\ndisable = ["set-not-nul"]\n', encoding="utf-8")
    bad = migrate("lint", "--offline", "--migrations", str(folder), cwd=tmp_path)
    assert bad.returncode == 2 and "unknown lint rule 'set-not-nul'" in bad.stderr


def test_cli_lint_refuses_sqlite_database(sqlite_url, example_migrations):
    result = migrate("lint", "--database", sqlite_url, "--migrations", str(example_migrations))
    assert result.returncode == 2 and "lint checks PostgreSQL migrations" in result.stderr


def test_up_with_lint_applies_nothing_when_lint_fails(pg_url, tmp_path):
    folder = write_migrations(tmp_path / "m", {
        "001_t.sql": "CREATE TABLE t (id int, c int);\n",
        "002_idx.sql": "CREATE INDEX t_c ON t (c);\n",
    })
    result = migrate("up", "--lint", "--database", pg_url, "--migrations", str(folder))
    assert result.returncode == 1, result
    assert "002_idx.sql:1: error [index-not-concurrent]" in result.stderr
    assert sql(pg_url, "SELECT to_regclass('public.t') IS NULL")[0][0]
    (folder / "002_idx.sql").write_text("-- lint: disable=index-not-concurrent\nCREATE INDEX t_c ON t (c);\n")
    ok = migrate("up", "--lint", "--database", pg_url, "--migrations", str(folder))
    assert ok.returncode == 0, ok
    assert sql(pg_url, "SELECT to_regclass('public.t_c') IS NOT NULL")[0][0]
