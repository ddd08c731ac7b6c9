"""Privileges: a shim never widens anyone's access; a runner without rights gets a clear error.

Consumer roles: one with full rights on the table, one with SELECT on some
columns only, one whose rows are limited by row-level security, one with no
rights at all. Every query is run against the table (new names) and against
the shim (old names): the shim may refuse what the table allows, but it must
never allow what the table refuses, nor return more rows. The full-rights role
must be able to use the shim (so the comparison is not vacuous).
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from reliability import harness
from reliability.harness import FIGURES, db_args, run

SCHEMA = "compat_001"


def _base(full: str, cols: str, rls: str) -> str:
    return (
        "CREATE TABLE accounts (id int PRIMARY KEY, acct_name text NOT NULL, secret text, tenant text NOT NULL);\n"
        f"INSERT INTO accounts VALUES (1, 'one', 's1', '{rls}'), (2, 'two', 's2', 'other'), "
        f"(3, 'three', 's3', '{rls}');\n"
        "ALTER TABLE accounts ENABLE ROW LEVEL SECURITY;\n"
        f'CREATE POLICY everything ON accounts TO "{full}", "{cols}" USING (true) WITH CHECK (true);\n'
        f'CREATE POLICY own_rows ON accounts FOR SELECT TO "{rls}" USING (tenant = current_user);\n'
        f'GRANT SELECT, INSERT, UPDATE, DELETE ON accounts TO "{full}";\n'
        f'GRANT SELECT (id, acct_name) ON accounts TO "{cols}";\n'
        f'GRANT SELECT ON accounts TO "{rls}";\n'
    )


RENAME = ("-- compat: rename accounts.acct_name -> account_name window=7d\n"
          "ALTER TABLE accounts RENAME COLUMN acct_name TO account_name;\n")

# (through the table with new names, through the shim with old names)
QUERIES = [
    ("SELECT id, account_name FROM public.accounts ORDER BY id", f"SELECT id, acct_name FROM {SCHEMA}.accounts ORDER BY id"),
    ("SELECT * FROM public.accounts ORDER BY id", f"SELECT * FROM {SCHEMA}.accounts ORDER BY id"),
    ("SELECT secret FROM public.accounts ORDER BY id", f"SELECT secret FROM {SCHEMA}.accounts ORDER BY id"),
    ("SELECT count(*) FROM public.accounts", f"SELECT count(*) FROM {SCHEMA}.accounts"),
    ("SELECT id FROM public.accounts WHERE tenant = 'other'", f"SELECT id FROM {SCHEMA}.accounts WHERE tenant = 'other'"),
    ("UPDATE public.accounts SET account_name = 'x' WHERE id = 2 RETURNING id",
     f"UPDATE {SCHEMA}.accounts SET acct_name = 'x' WHERE id = 2 RETURNING id"),
    ("INSERT INTO public.accounts (id, account_name, tenant) VALUES (9, 'n', 'other') RETURNING id",
     f"INSERT INTO {SCHEMA}.accounts (id, acct_name, tenant) VALUES (9, 'n', 'other') RETURNING id"),
    ("DELETE FROM public.accounts WHERE id = 3 RETURNING id", f"DELETE FROM {SCHEMA}.accounts WHERE id = 3 RETURNING id"),
]


def _attempt(url: str, query: str) -> tuple[str, object]:
    """('ok', rows) or ('denied', sqlstate); always rolled back."""
    with psycopg.connect(url) as conn:
        try:
            rows = conn.execute(query).fetchall()
            return "ok", sorted(rows)
        except psycopg.Error as err:
            return "denied", err.sqlstate
        finally:
            conn.rollback()


def test_shim_gives_no_more_than_the_table(target, folder, make_role):
    full, cols, rls, none = (make_role() for _ in range(4))
    harness.write(folder, {"001_accounts.sql": _base(full, cols, rls), "002_rename.sql": RENAME})
    result = run(*db_args(target.url, folder, "up"))
    assert result.returncode == 0, result.describe()
    assert harness.one(target.admin, "SELECT count(*) FROM pg_namespace WHERE nspname = %s", (SCHEMA,)) == 1
    compared = 0
    for role in (full, cols, rls, none):
        url = harness.with_user(target.admin, role, password=None)
        for table_query, shim_query in QUERIES:
            on_table = _attempt(url, table_query)
            on_shim = _attempt(url, shim_query)
            compared += 1
            if on_shim[0] == "ok":
                assert on_table[0] == "ok", f"{role}: the shim allowed what the table refuses: {shim_query}"
                assert on_shim[1] == on_table[1], f"{role}: {shim_query} -> {on_shim[1]} vs table {on_table[1]}"
            if role == full:
                assert on_shim == on_table, f"the full-rights role cannot use the shim: {shim_query} -> {on_shim}"
            if role == none:
                assert on_shim[0] == "denied"
    # The specific expectations, spelled out.
    cols_url = harness.with_user(target.admin, cols, password=None)
    assert _attempt(cols_url, f"SELECT secret FROM {SCHEMA}.accounts")[0] == "denied"
    # (PostgreSQL checks every column a security_invoker view references: a role with column
    # grants cannot use the shim at all. Safe; documented in README.md.)
    rls_url = harness.with_user(target.admin, rls, password=None)
    assert _attempt(rls_url, f"SELECT id FROM {SCHEMA}.accounts ORDER BY id") == ("ok", [(1,), (3,)])
    FIGURES.add("privileges", roles=4, query_pairs=compared, widened=0)


def test_runner_without_create_on_the_schema_gets_one_clear_line(pg_url, make_role, folder):
    role = make_role(password=harness.PASSWORD)
    with harness.connect(pg_url) as conn:
        conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
            sql.Identifier(harness.dbname(pg_url)), sql.Identifier(role)))
        conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    url = harness.with_user(pg_url, role)
    harness.write(folder, {"001_t.sql": "CREATE TABLE t (id int);\n"})
    result = run(*db_args(url, folder, "up"))
    line = harness.assert_one_line_error(result, {2, 4, 5}, "permission denied")
    assert role in line or "public" in line, line
    assert harness.one(pg_url, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == 0
    FIGURES.add("privileges", runner_without_create=1)


def test_runner_without_create_on_the_database_cannot_build_a_shim(pg_url, make_role, folder):
    """CREATE on the schema but not on the database: the rename needs a compat schema -> refused, rolled back."""
    role = make_role(password=harness.PASSWORD)
    name = harness.dbname(pg_url)
    with harness.connect(pg_url) as conn:
        conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(name), sql.Identifier(role)))
        conn.execute(sql.SQL("REVOKE CREATE ON DATABASE {} FROM PUBLIC").format(sql.Identifier(name)))
        conn.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA public TO {}").format(sql.Identifier(role)))
    url = harness.with_user(pg_url, role)
    harness.write(folder, {"001_accounts.sql": "CREATE TABLE accounts (id int PRIMARY KEY, acct_name text);\n",
                           "002_rename.sql": RENAME})
    result = run(*db_args(url, folder, "up"))
    line = harness.assert_one_line_error(result, {2, 4}, "002_rename", "permission denied")
    assert "database" in line, line
    with harness.connect(pg_url) as conn:
        assert harness.history_ids(conn) == ["001_accounts"]
        cols = [r[0] for r in conn.execute("SELECT attname FROM pg_attribute WHERE attrelid = 'accounts'::regclass "
                                           "AND attnum > 0")]
        assert "acct_name" in cols and "account_name" not in cols
    # --no-compat is the documented way out: the rename applies without a shim.
    again = run(*db_args(url, folder, "up", "--no-compat"))
    assert again.returncode == 0, again.describe()
    FIGURES.add("privileges", runner_without_create=1)


@pytest.mark.parametrize("command", [["verify"], ["status"], ["shims", "list"], ["shims", "audit"]])
def test_read_only_commands_need_no_create(pg_url, make_role, folder, command):
    """A read-only role (a pipeline's gate) can run the read-only commands on a migrated database."""
    harness.write(folder, {"001_accounts.sql": "CREATE TABLE accounts (id int PRIMARY KEY, acct_name text);\n",
                           "002_rename.sql": RENAME})
    assert run(*db_args(harness.admin_url_for(pg_url), folder, "up")).returncode == 0
    role = make_role(password=harness.PASSWORD)
    with harness.connect(pg_url) as conn:
        conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(sql.Identifier(role)))
    result = run(*db_args(harness.with_user(pg_url, role), folder, *command))
    assert result.returncode == 0, result.describe()
    FIGURES.add("privileges", read_only_commands=1)
