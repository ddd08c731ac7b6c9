"""Hostile names and config values: exactly the declared objects, or a refusal; nothing else runs.

Rename declarations (``-- compat:`` directives and ``[[renames]]`` config
entries) and config values carrying quotes, semicolons, ``"; DROP TABLE``,
unicode, names at and past PostgreSQL's 63-byte limit, reserved words and
format-string braces. After each run the catalog is compared with a snapshot
taken before: either the run succeeded and the only new objects are the
compat schema, its view and the runner's own tables, with byte-exact names,
or it was refused with one clear line and the catalog is unchanged. A canary
table must survive everything.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from reliability import harness
from reliability.harness import FIGURES, db_args, run

INJECT = "; DROP TABLE canary; --"
NAMES = {
    "double quote": ('we"ird', 'old"' + INJECT, 'new"' + INJECT),
    "single quote": ("o'brien" + INJECT, "it's", "'" + INJECT),
    "semicolons": ("semi;colon", "a;b", "c;d"),
    "unicode": ("naïve_列_🙂", "ünïcode_列", "nouveau_名前_✓"),
    "reserved words": ("select", "user", "order"),
    "mixed case, spaces, dots, arrows": ("Mixed Case", "a.b -> c", "New.Name -> x"),
    "backslashes and format braces": ("back\\slash", "{version}", "%s{0}$1"),
    "63 bytes": ("t" * 63, "o" * 63, "é" * 31 + "n"),
    "64 bytes new name": ("t64", "old", "n" * 64),
    "64 bytes multibyte old name": ("t64mb", "é" * 32, "new"),
}


def q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _base(table: str, old: str) -> str:
    return (f"CREATE TABLE canary (id int);\nINSERT INTO canary VALUES (1), (2), (3);\n"
            f"CREATE TABLE {q(table)} (id int PRIMARY KEY, {q(old)} text DEFAULT 'd', other int);\n"
            f"INSERT INTO {q(table)} (id, {q(old)}) VALUES (1, 'one');\n")


def _rename_sql(table: str, old: str, new: str) -> str:
    return f"ALTER TABLE {q(table)} RENAME COLUMN {q(old)} TO {q(new)};\n"


def _columns(conn, schema: str, table: str) -> list[str]:
    oid = conn.execute("SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                       "WHERE n.nspname = %s AND c.relname = %s", (schema, table)).fetchone()
    if oid is None:
        return []
    return [r[0] for r in conn.execute("SELECT attname FROM pg_attribute WHERE attrelid = %s AND attnum > 0 "
                                       "AND NOT attisdropped ORDER BY attnum", (oid[0],))]


def _check_outcome(target, before: set, result, table: str, old: str, new: str, schema: str) -> str:
    """'created' (exact names) or 'refused' (nothing changed); asserts either way."""
    with target.admin_conn() as conn:
        after = harness.catalog_snapshot(conn)
        canary = conn.execute("SELECT count(*) FROM canary").fetchone()[0]
        assert canary == 3, "the canary table lost rows"
        removed = before - after
        added = after - before
        if result.returncode == 0:
            assert not removed, f"objects disappeared: {removed}"
            unexpected = {o for o in added if not (o[1] == "public" and o[2].startswith("_migrate"))
                          and o[1] != schema}
            assert not unexpected, f"unexpected objects: {unexpected}"
            assert ("schema", schema, schema) in added, (schema, added)
            assert ("v", schema, table) in added, (table, added)
            assert _columns(conn, "public", table) == ["id", new, "other"], _columns(conn, "public", table)
            assert _columns(conn, schema, table) == ["id", old, "other"], _columns(conn, schema, table)
            registry = conn.execute("SELECT table_name, old_name, new_name, compat_schema FROM _migrate_shims "
                                    "WHERE status = 'active'").fetchall()
            assert registry == [(table, old, new, schema)], registry
            # The shim works: reads and writes through the old name.
            conn.execute(f"INSERT INTO {q(schema)}.{q(table)} (id, {q(old)}) VALUES (2, 'two')")
            got = conn.execute(f"SELECT {q(new)} FROM public.{q(table)} ORDER BY id").fetchall()
            assert got == [("one",), ("two",)], got
            return "created"
        assert result.returncode in (2, 4), result.describe()
        harness.assert_one_line_error(result, {2, 4})
        assert not {o for o in added if not o[2].startswith("_migrate")} and not removed, (added, removed)
        assert new not in _columns(conn, "public", table), "the rename stayed applied"
        return "refused"


@pytest.mark.parametrize("case", list(NAMES))
def test_hostile_names_in_a_rename_directive(target, folder, case):
    table, old, new = NAMES[case]
    harness.write(folder, {"001_base.sql": _base(table, old)})
    first = run(*db_args(target.url, folder, "up"))
    assert first.returncode == 0, first.describe()
    with target.admin_conn() as conn:
        before = harness.catalog_snapshot(conn)
    directive = f"-- compat: rename {q(table)}.{q(old)} -> {q(new)} window=7d\n"
    harness.write(folder, {"002_rename.sql": directive + _rename_sql(table, old, new)})
    result = run(*db_args(target.url, folder, "up"))
    outcome = _check_outcome(target, before, result, table, old, new, "compat_001")
    # PostgreSQL truncates identifiers past 63 bytes: such names can only be refused.
    if max(len(n.encode()) for n in (table, old, new)) > 63:
        assert outcome == "refused", "a name past 63 bytes was accepted (PostgreSQL would truncate it)"
        assert f"{folder / '002_rename.sql'}:1:" in result.error_lines[0], result.error_lines
    else:
        assert outcome == "created", result.describe()
    FIGURES.add("hostile_inputs", names=1, **{outcome: 1})


CONFIG_CASES = {
    "injection in every field": ('x"' + INJECT, "o'" + INJECT, "n;" + INJECT),
    "unicode and reserved": ("table", "naïve", "select"),
}


def _toml(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_hostile_names_in_config_renames(target, folder, tmp_path, case):
    table, old, new = CONFIG_CASES[case]
    harness.write(folder, {"001_base.sql": _base(table, old)})
    assert run(*db_args(target.url, folder, "up")).returncode == 0
    with target.admin_conn() as conn:
        before = harness.catalog_snapshot(conn)
    harness.write(folder, {"002_rename.sql": _rename_sql(table, old, new)})
    config = tmp_path / "migrate.toml"
    # Config names follow the directive grammar: quote them to keep them exact.
    config.write_text("[[renames]]\nmigration = \"002_rename\"\n"
                      f"table = {_toml(q(table))}\nold = {_toml(q(old))}\nnew = {_toml(q(new))}\nwindow = \"3d\"\n",
                      encoding="utf-8")
    result = run(*db_args(target.url, folder, "up", "--config", str(config)))
    assert _check_outcome(target, before, result, table, old, new, "compat_001") == "created", result.describe()
    FIGURES.add("hostile_inputs", config_values=1, created=1)


TEMPLATES = {
    "injection": 'x"' + INJECT + "{version}",
    "quote and unicode": "compat'é_{version}",
    "positional braces": "compat_{}",
    "unknown field": "compat_{other}",
    "attribute access": "compat_{version.__class__}",
    "long": "c" * 70 + "_{version}",
}


@pytest.mark.parametrize("case", list(TEMPLATES))
def test_hostile_schema_templates(target, folder, tmp_path, case):
    template = TEMPLATES[case]
    table, old, new = "accounts", "acct_name", "account_name"
    harness.write(folder, {"001_base.sql": _base(table, old)})
    assert run(*db_args(target.url, folder, "up")).returncode == 0
    with target.admin_conn() as conn:
        before = harness.catalog_snapshot(conn)
    harness.write(folder, {"002_rename.sql": f"-- compat: rename {table}.{old} -> {new}\n" + _rename_sql(table, old, new)})
    config = tmp_path / "migrate.toml"
    config.write_text(f"[compat]\nschema_template = {_toml(template)}\n", encoding="utf-8")
    result = run(*db_args(target.url, folder, "up", "--config", str(config)))
    if result.returncode == 0:
        expected = template.replace("{version}", "001")
        assert "{" not in template.replace("{version}", ""), f"template {template!r} was accepted"
        if len(expected.encode()) > 63:
            from compat.dialects.postgresql import shorten  # documented: long generated names are shortened with a hash

            expected = shorten(expected)
        outcome = _check_outcome(target, before, result, table, old, new, expected)
    else:
        outcome = _check_outcome(target, before, result, table, old, new, "-")
        assert result.returncode == 2, "a bad template is a config error"
    FIGURES.add("hostile_inputs", config_values=1, **{outcome: 1})


def test_hostile_names_on_sqlite(tmp_path, folder):
    """SQLite shims: view names from the template, quoted; the canary survives."""
    url = f"sqlite:///{tmp_path / 'h.db'}"
    table, old, new = 'we"ird' + INJECT, "o'ld", "ne;w"
    harness.write(folder, {"001_base.sql": _base(table, old)})
    assert run(*db_args(url, folder, "up")).returncode == 0
    harness.write(folder, {"002_rename.sql": f"-- compat: rename {q(table)}.{q(old)} -> {q(new)}\n"
                                             + _rename_sql(table, old, new)})
    result = run(*db_args(url, folder, "up"))
    assert result.returncode == 0, result.describe()
    with sqlite3.connect(tmp_path / "h.db") as conn:
        assert conn.execute("SELECT count(*) FROM canary").fetchone()[0] == 3
        views = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'view'")]
        assert views == [f"{table}__v001"], views
        cols = [r[1] for r in conn.execute(f"PRAGMA table_info({q(views[0])})")]
        assert cols == ["id", old, "other"], cols
        assert conn.execute(f"SELECT {q(old)} FROM {q(views[0])}").fetchall() == [("one",)]
    FIGURES.add("hostile_inputs", names=1, created=1)


# ------------------------------------------------------------------ runner-only hostile input
FILE_NAMES = ["002_o'brien;drop.sql", '003_we"ird --.sql', "004_ünïcode_列.sql", "005_a b$1%s{0}.sql"]


def test_hostile_migration_file_names(target, folder):
    harness.write(folder, {"001_canary.sql": "CREATE TABLE canary (id int);\nINSERT INTO canary VALUES (1), (2), (3);\n"})
    for i, name in enumerate(FILE_NAMES, 2):
        harness.write(folder, {name: f"CREATE TABLE t{i} (id int);\n"})
    result = run(*db_args(target.url, folder, "up", "--format", "json"))
    assert result.returncode == 0, result.describe()
    ids = ["001_canary"] + [Path(n).stem for n in FILE_NAMES]
    assert result.json()["applied"] == ids
    with target.admin_conn() as conn:
        assert harness.history_ids(conn) == sorted(ids)
        assert conn.execute("SELECT count(*) FROM canary").fetchone()[0] == 3
    for to in ("x'; DROP TABLE canary; --", FILE_NAMES[0]):
        bad = run(*db_args(target.url, folder, "up", "--to", to))
        harness.assert_one_line_error(bad, 2)
    status = run(*db_args(target.url, folder, "verify"))
    assert status.returncode == 0, status.describe()
    FIGURES.add("hostile_inputs", file_names=len(FILE_NAMES))


RUNNER_CONFIG = {
    "lock_timeout": '"200ms\'; DROP TABLE canary; --"',
    "lock_wait": '"1s; SELECT pg_sleep(10)"',
    "lock_retries": '"5; DROP TABLE canary"',
    "database": '"postgresql://x\'; DROP TABLE canary; --@127.0.0.1:1/db"',
    "migrations": '"migrations\'; DROP TABLE canary; --"',
    "format": '"json\'; --"',
}


@pytest.mark.parametrize("key", list(RUNNER_CONFIG))
def test_hostile_runner_config_values(target, folder, tmp_path, key):
    harness.write(folder, {"001_canary.sql": "CREATE TABLE canary (id int);\nINSERT INTO canary VALUES (1), (2), (3);\n"})
    assert run(*db_args(target.url, folder, "up")).returncode == 0
    harness.write(folder, {"002_more.sql": "CREATE TABLE more (id int);\n"})
    config = tmp_path / "migrate.toml"
    config.write_text(f"{key} = {RUNNER_CONFIG[key]}\n", encoding="utf-8")
    args = ["--config", str(config), "--log-format", "json", "up"]
    if key != "database":
        args += ["--database", target.url]
    if key != "migrations":
        args += ["--migrations", str(folder)]
    result = run(*args)
    harness.assert_one_line_error(result, {2, 5})
    with target.admin_conn() as conn:
        assert conn.execute("SELECT count(*) FROM canary").fetchone()[0] == 3
        assert harness.history_ids(conn) == ["001_canary"]
    FIGURES.add("hostile_inputs", config_values=1, refused=1)
