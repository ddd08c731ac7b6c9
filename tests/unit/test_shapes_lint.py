"""Lint rules for shape changes: windows in declared mode, defaults for hidden columns, dropped tables."""

from __future__ import annotations

from runner.lint import lint_migration
from compat_support import migration

CHANGES = ["ALTER TABLE orders ADD COLUMN status text", "ALTER TABLE orders DROP COLUMN note",
           "ALTER TABLE orders ALTER COLUMN qty TYPE bigint", "ALTER TABLE users RENAME TO accounts"]


def rules(findings):
    return [(f.rule, f.severity, f.line) for f in findings]


def test_declared_mode_reports_each_undeclared_shape_change_with_the_directive_to_add():
    found = lint_migration(migration("019_x", CHANGES), compat_mode="declared")
    assert rules(found) == [("shape-change-without-window", "warning", 1), ("shape-change-without-window", "warning", 2),
                            ("shape-change-without-window", "warning", 3), ("rename-without-compat", "error", 4)]
    assert "`-- compat: add orders.status window=14d`" in found[0].fix
    assert "`-- compat: drop orders.note window=14d`" in found[1].fix
    assert "`-- compat: retype orders.qty window=14d`" in found[2].fix
    assert "`-- compat: rename-table users -> accounts window=14d`" in found[3].fix


def test_declared_windows_and_auto_mode_are_clean():
    directives = ["add orders.status", "drop orders.note expr='gone'", "retype orders.qty window=3d",
                  "rename-table users -> accounts"]
    assert lint_migration(migration("019_x", CHANGES, directives), compat_mode="declared") == []
    assert lint_migration(migration("019_x", CHANGES), compat_mode="auto") == []
    # tables created by the same migration are not existing tables
    assert lint_migration(migration("019_x", ["CREATE TABLE n (id int)", "ALTER TABLE n ADD COLUMN x int"]),
                          compat_mode="declared") == []


def test_hidden_not_null_column_and_dropped_default_and_dropped_table():
    found = lint_migration(migration("019_x", ["ALTER TABLE orders ADD COLUMN s text NOT NULL",
                                               "ALTER TABLE orders ALTER COLUMN s DROP DEFAULT",
                                               "DROP TABLE users"]), compat_mode="auto")
    assert rules(found) == [("not-null-without-default", "error", 1), ("hidden-column-needs-default", "warning", 2),
                            ("drop-table", "warning", 3)]
    assert "older versions, so their inserts would fail too" in found[0].message
    assert "cannot be shimmed" in found[2].message


def test_compat_mode_config_is_checked(tmp_path):
    from helpers import run_migrate

    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "001_a.sql").write_text("ALTER TABLE t ADD COLUMN c int;\n")
    (tmp_path / "migrate.toml").write_text('migrations = "migrations"\n[compat]\nmode = "sometimes"\n')
    result = run_migrate("lint", "--offline", cwd=tmp_path)
    assert result.returncode == 2
    assert "[compat] mode: expected one of declared, auto, got 'sometimes'" in result.stderr
    assert "Traceback" not in result.stderr
    (tmp_path / "migrate.toml").write_text('migrations = "migrations"\n[compat]\nmode = "declared"\n')
    result = run_migrate("lint", "--offline", cwd=tmp_path)
    assert result.returncode == 0 and "[shape-change-without-window]" in result.stdout, result
