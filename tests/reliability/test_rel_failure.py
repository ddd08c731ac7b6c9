"""A migration failing at its third statement of five: rolled back entirely, exit 4, file and line named.

In every format (yoyo SQL, goose SQL, yoyo Python), and with a declared rename
whose shim and registry rows must roll back with it. The migrations before it
stay applied; the ones after it are not attempted; the next run, once the file
is fixed, completes.
"""

from __future__ import annotations


import pytest

from reliability import harness, sets
from reliability.harness import FIGURES, db_args, run

BASE = {"001_base.sql": "CREATE TABLE ledger (id text PRIMARY KEY);\n"
                       "CREATE TABLE accounts (id int PRIMARY KEY, acct_name text NOT NULL);\n"
                       "INSERT INTO accounts VALUES (1, 'one'), (2, 'two');\n"}

YOYO = (
    "-- five statements, the third fails\n"
    "CREATE TABLE f_a (id int);\n"                       # line 2
    "INSERT INTO f_a VALUES (1);\n"                      # line 3
    "INSERT INTO f_missing_table VALUES (1);\n"          # line 4  <- fails
    "CREATE TABLE f_b (id int);\n"                       # line 5
    "INSERT INTO ledger VALUES ('002');\n"               # line 6
)
GOOSE = (
    "-- +goose Up\n"                                     # 1
    "CREATE TABLE f_a (id int);\n"                       # 2
    "-- +goose StatementBegin\n"                         # 3
    "CREATE FUNCTION f_fn() RETURNS int LANGUAGE plpgsql AS $body$\n"  # 4
    "BEGIN RETURN 1; END;\n"                             # 5
    "$body$;\n"                                          # 6
    "-- +goose StatementEnd\n"                           # 7
    "\n"                                                 # 8
    "-- a comment before the failing statement\n"        # 9
    "SELECT 1 / (SELECT count(*) FROM f_a);\n"           # 10 <- fails (division by zero)
    "CREATE TABLE f_b (id int);\n"                       # 11
    "INSERT INTO ledger VALUES ('002');\n"               # 12
    "-- +goose Down\n"
    "DROP TABLE f_b;\n"
)
PYTHON = (
    "from yoyo import step\n"                            # 1
    "\n"
    "steps = [\n"
    "    step('CREATE TABLE f_a (id int)'),\n"           # 4
    "    step('INSERT INTO f_a VALUES (1)'),\n"          # 5
    "    step('INSERT INTO f_missing_table VALUES (1)'),\n"  # 6 <- fails
    "    step('CREATE TABLE f_b (id int)'),\n"
    "    step(\"INSERT INTO ledger VALUES ('002')\"),\n"
    "]\n"
)
CASES = {
    # name: (file name, content, line named, statement text named)
    "yoyo": ("002_fails.sql", YOYO, 4, "f_missing_table"),
    "goose": ("002_fails.sql", GOOSE, 10, "SELECT 1 / (SELECT count(*) FROM f_a)"),
    "python": ("002_fails.py", PYTHON, None, "f_missing_table"),
}
AFTER = {"003_after.sql": "CREATE TABLE f_after (id int);\nINSERT INTO ledger VALUES ('003');\n"}


def _objects(conn) -> set[str]:
    return {r[0] for r in conn.execute(
        "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relname LIKE 'f\\_%%' "
        "UNION ALL SELECT proname FROM pg_proc WHERE proname LIKE 'f\\_%%'")}


@pytest.mark.parametrize("fmt", list(CASES))
def test_third_of_five_fails_rolls_back_everything(target, folder, fmt):
    name, content, line, statement = CASES[fmt]
    harness.write(folder, {**BASE, name: content, **AFTER})
    result = run(*db_args(target.url, folder, "up", "--no-compat"))
    message = harness.assert_one_line_error(result, 4, str(folder / name), "002_fails", statement)
    if line is not None:
        assert f"{folder / name}:{line}:" in message, f"line {line} not named: {message}"
    with target.admin_conn() as conn:
        assert harness.history_ids(conn) == ["001_base"]
        assert harness.yoyo_ids(conn) == ["001_base"]
        assert set(harness.log_counts(conn)) == {"001_base"}
        assert _objects(conn) == set(), "statements of the failed migration stayed applied"
        assert [r[0] for r in conn.execute("SELECT id FROM ledger")] == []
    assert harness.advisory_locks(target.admin, target.name) == []
    # Fixed, the next run applies it and the one after it.
    (folder / name).unlink()
    harness.write(folder, {"002_fixed.sql": "INSERT INTO ledger VALUES ('002');\n"})
    again = run(*db_args(target.url, folder, "up", "--no-compat"))
    assert again.returncode == 0, again.describe()
    with target.admin_conn() as conn:
        assert harness.history_ids(conn) == ["001_base", "002_fixed", "003_after"]
    FIGURES.add("failing_migration", injected=1, survived=1, half_applied=0)


def test_failure_on_sqlite_rolls_back_everything(tmp_path, folder):
    """The embedded default: the same all-or-nothing guarantee on SQLite."""
    url = f"sqlite:///{tmp_path / 'rel.db'}"
    sqlite_yoyo = YOYO.replace("f_missing_table", "f_missing_table_sqlite")
    harness.write(folder, {**BASE, "002_fails.sql": sqlite_yoyo})
    result = run(*db_args(url, folder, "up", "--no-compat"))
    harness.assert_one_line_error(result, 4, f"{folder / '002_fails.sql'}:4:", "f_missing_table_sqlite")
    import sqlite3

    with sqlite3.connect(tmp_path / "rel.db") as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert not {"f_a", "f_b"} & names, names
        assert [r[0] for r in conn.execute("SELECT migration_id FROM _migrate_history")] == ["001_base"]
    FIGURES.add("failing_migration", injected=1, survived=1, half_applied=0)


# ------------------------------------------------------------------ with a declared rename (compat)
RENAME_THEN_FAIL = (
    "-- compat: rename accounts.acct_name -> account_name window=7d\n"   # 1
    "ALTER TABLE accounts RENAME COLUMN acct_name TO account_name;\n"    # 2
    "INSERT INTO ledger VALUES ('002');\n"                               # 3
    "UPDATE accounts SET account_name = account_name || 1 / 0;\n"        # 4 <- fails (division by zero)
    "CREATE TABLE f_b (id int);\n"                                       # 5
    "CREATE TABLE f_c (id int);\n"                                       # 6
)
# Everything succeeds, the shim and its registry row are written, then COMMIT fails
# (a deferred constraint trigger): all of it must roll back.
FAIL_AT_COMMIT = (
    "-- compat: rename accounts.acct_name -> account_name window=7d\n"
    "ALTER TABLE accounts RENAME COLUMN acct_name TO account_name;\n"
    "CREATE FUNCTION f_refuse() RETURNS trigger LANGUAGE plpgsql AS $$\n"
    "BEGIN RAISE EXCEPTION 'refused at commit'; END $$;\n"
    "CREATE CONSTRAINT TRIGGER f_at_commit AFTER INSERT ON ledger DEFERRABLE INITIALLY DEFERRED\n"
    "  FOR EACH ROW EXECUTE FUNCTION f_refuse();\n"
    "INSERT INTO ledger VALUES ('002');\n"
    "CREATE TABLE f_b (id int);\n"
)
DECLARED_NOT_DONE = (
    "-- compat: rename accounts.acct_name -> account_name window=7d\n"
    "CREATE TABLE f_a (id int);\n"
    "ALTER TABLE accounts ADD COLUMN account_name text;\n"
    "INSERT INTO ledger VALUES ('002');\n"
)
PYTHON_RENAME_THEN_FAIL = (
    "from yoyo import step\n"
    "from compat.python import rename_column\n"
    "\n"
    "rename_column('accounts', 'acct_name', 'account_name', window='7d')\n"
    "step(\"INSERT INTO ledger VALUES ('002')\")\n"
    "step('UPDATE accounts SET account_name = account_name || 1 / 0')\n"
    "step('CREATE TABLE f_b (id int)')\n"
    "step('CREATE TABLE f_c (id int)')\n"
)
SHIM_CASES = {
    "third of five fails after the rename": ("002_rename.sql", RENAME_THEN_FAIL, ":4:", "division by zero"),
    "commit fails after the shim was written": ("002_rename.sql", FAIL_AT_COMMIT, "", "refused at commit"),
    "declared rename not performed": ("002_rename.sql", DECLARED_NOT_DONE, ":1:", "account_name"),
    "python rename_column then a failing step": ("002_rename.py", PYTHON_RENAME_THEN_FAIL, "", "division by zero"),
}


def _shim_state(conn) -> dict:
    registry = []
    if harness.regclass(conn, "public._migrate_shims") is not None:
        registry = conn.execute("SELECT name, status FROM public._migrate_shims").fetchall()
    return {
        "history": harness.history_ids(conn),
        "log": dict(harness.log_counts(conn)),
        "compat schemas": sets.compat_schemas(conn),
        "registry": registry,
        "accounts": [r[0] for r in conn.execute("SELECT attname FROM pg_attribute WHERE attrelid = 'accounts'::regclass "
                                                "AND attnum > 0 AND NOT attisdropped ORDER BY attnum")],
        "ledger": [r[0] for r in conn.execute("SELECT id FROM ledger")],
        "f objects": sorted(_objects(conn)),
    }


@pytest.mark.parametrize("case", list(SHIM_CASES))
def test_failure_rolls_back_shim_and_registry_rows(target, folder, case):
    name, content, line, needle = SHIM_CASES[case]
    harness.write(folder, BASE)
    assert run(*db_args(target.url, folder, "up")).returncode == 0
    with target.admin_conn() as conn:
        before = _shim_state(conn)
    harness.write(folder, {name: content})
    result = run(*db_args(target.url, folder, "up"))
    harness.assert_one_line_error(result, 4, f"{folder / name}{line}", "002_rename", needle)
    with target.admin_conn() as conn:
        after = _shim_state(conn)
    assert after == before, f"changed by a failed migration: {after} vs {before}"
    assert after["compat schemas"] == [] and after["registry"] == []
    FIGURES.add("failing_migration", injected=1, survived=1, half_applied=0)


def test_committed_shim_survives_a_later_failure_in_the_same_run(target, folder):
    """002 (rename + shim) commits; 003 fails: 002 and its shim stay, 003 leaves nothing."""
    harness.write(folder, {**BASE, "002_rename.sql": RENAME_THEN_FAIL.split("INSERT INTO ledger")[0],
                           "003_fails.sql": YOYO.replace("'002'", "'003'")})
    result = run(*db_args(target.url, folder, "up"))
    harness.assert_one_line_error(result, 4, f"{folder / '003_fails.sql'}:4:")
    with target.admin_conn() as conn:
        state = _shim_state(conn)
    assert state["history"] == ["001_base", "002_rename"]
    assert state["compat schemas"] == ["compat_001"]
    assert [r[1] for r in state["registry"]] == ["active"]
    assert state["f objects"] == [] and state["ledger"] == []
    FIGURES.add("failing_migration", injected=1, survived=1, half_applied=0)
