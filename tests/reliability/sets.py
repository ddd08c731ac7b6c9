"""Migration sets the scenarios run, and the checks that say "nothing is half-applied".

The kill set: 20 migrations, each with several statements whose effects are
all visible in the catalog (a table, its rows, an added column, an index, a
row in ``ledger``), some slow (``pg_sleep`` between statements, so kills land
inside open transactions), and one that renames a column with a declared
compatibility shim. :func:`check_prefix` asserts that the database holds a
prefix of the set, each migration fully applied and recorded, or not at all.
"""

from __future__ import annotations

from pathlib import Path

import psycopg

from reliability import harness

KILL_SET_SIZE = 20
SLOW = {4: 0.1, 9: 0.1, 14: 0.15, 17: 0.1}
RENAME_AT = 14
ROWS = 200


def kill_set_ids() -> list[str]:
    return [_id(i) for i in range(1, KILL_SET_SIZE + 1)]


def _id(i: int) -> str:
    if i == 1:
        return "001_base"
    if i == RENAME_AT:
        return f"{i:03d}_rename_acct_name"
    return f"{i:03d}_table_m{i:03d}"


def write_kill_set(folder: Path) -> list[str]:
    files: dict[str, str] = {}
    files[_id(1) + ".sql"] = (
        "-- the ledger records each migration's last statement; accounts gets renamed later\n"
        "CREATE TABLE ledger (id text PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp());\n"
        "CREATE TABLE accounts (id int PRIMARY KEY, acct_name text NOT NULL, balance int NOT NULL DEFAULT 0);\n"
        "INSERT INTO accounts SELECT g, 'acct ' || g, g FROM generate_series(1, 50) g;\n"
        "INSERT INTO ledger (id) VALUES ('001_base');\n"
    )
    for i in range(2, KILL_SET_SIZE + 1):
        mid = _id(i)
        sleep = f"SELECT pg_sleep({SLOW[i]});\n" if i in SLOW else ""
        if i == RENAME_AT:
            files[mid + ".sql"] = (
                "-- compat: rename accounts.acct_name -> account_name window=14d\n"
                "ALTER TABLE accounts RENAME COLUMN acct_name TO account_name;\n"
                f"{sleep}"
                "UPDATE accounts SET balance = balance + 1000;\n"
                f"INSERT INTO ledger (id) VALUES ('{mid}');\n"
            )
            continue
        t = f"m{i:03d}"
        files[mid + ".sql"] = (
            f"CREATE TABLE {t} (id int PRIMARY KEY, v text NOT NULL);\n"
            f"INSERT INTO {t} SELECT g, 'v' || g FROM generate_series(1, {ROWS}) g;\n"
            f"{sleep}"
            f"ALTER TABLE {t} ADD COLUMN w int NOT NULL DEFAULT {i};\n"
            f"CREATE INDEX {t}_v ON {t} (v);\n"
            f"INSERT INTO ledger (id) VALUES ('{mid}');\n"
        )
    harness.write(folder, files)
    return kill_set_ids()


def _columns(conn: psycopg.Connection, schema: str, table: str) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped "
        "ORDER BY attnum", (f'"{schema}"."{table}"',))]


def shim_rows(conn: psycopg.Connection) -> list[tuple]:
    """Registry rows (compat's ``_migrate_shims``), [] when the table does not exist."""
    if harness.regclass(conn, "public._migrate_shims") is None:
        return []
    return conn.execute("SELECT migration_id, status FROM public._migrate_shims ORDER BY migration_id").fetchall()


def compat_schemas(conn: psycopg.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'compat%%' ORDER BY 1")]


def check_prefix(conn: psycopg.Connection, ids: list[str], shims: bool) -> int:
    """Assert the database holds a prefix of ``ids``, each all-or-nothing; returns its length."""
    applied = harness.history_ids(conn)
    k = len(applied)
    assert applied == ids[:k], f"history is not a prefix of the set: {applied}"
    assert harness.yoyo_ids(conn) == applied, "yoyo's _yoyo_migration disagrees with _migrate_history"
    log = harness.log_counts(conn)
    for mid in ids:
        assert log.get(mid, 0) == (1 if mid in applied else 0), f"{mid}: {log.get(mid, 0)} 'apply' log rows"
    has_ledger = harness.regclass(conn, "public.ledger") is not None
    assert has_ledger == (k >= 1), "001 is half-applied (ledger vs history)"
    if has_ledger:
        ledger = [r[0] for r in conn.execute("SELECT id FROM ledger ORDER BY id")]
        assert ledger == applied, f"ledger {ledger} != history {applied}"
        accounts = _columns(conn, "public", "accounts")
        balance = conn.execute("SELECT sum(balance) FROM accounts").fetchone()[0]
        renamed = ids[RENAME_AT - 1] in applied
        assert accounts == (["id", "account_name", "balance"] if renamed else ["id", "acct_name", "balance"]), accounts
        assert balance == sum(range(1, 51)) + (50_000 if renamed else 0), "the rename migration is half-applied"
        if shims:
            registry = shim_rows(conn)
            assert [r[0] for r in registry] == ([ids[RENAME_AT - 1]] if renamed else []), registry
            schemas = compat_schemas(conn)
            assert schemas == ([f"compat_{RENAME_AT - 1:03d}"] if renamed else []), schemas
            if renamed:
                assert _columns(conn, schemas[0], "accounts") == ["id", "acct_name", "balance"]
        else:
            assert compat_schemas(conn) == []
    for i in range(2, KILL_SET_SIZE + 1):
        if i == RENAME_AT:
            continue
        t = f"m{i:03d}"
        exists = harness.regclass(conn, f"public.{t}") is not None
        assert exists == (ids[i - 1] in applied), f"{ids[i - 1]}: table {t} exists={exists}, recorded={not exists}"
        if exists:
            assert _columns(conn, "public", t) == ["id", "v", "w"], f"{t} half-altered"
            assert conn.execute(f"SELECT count(*), min(w), max(w) FROM {t}").fetchone() == (ROWS, i, i)
            assert harness.regclass(conn, f"public.{t}_v") is not None, f"index {t}_v missing"
    return k


def reset(admin: str, role: str) -> None:
    """Empty the database again (public schema recreated, compat schemas dropped)."""
    with harness.connect(admin) as conn:
        for schema in compat_schemas(conn):
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public AUTHORIZATION pg_database_owner")
        conn.execute(f'GRANT USAGE, CREATE ON SCHEMA public TO "{role}"')


def numbered(folder: Path, start: int, count: int, slow: dict[int, float] | None = None,
             prefix: str = "r") -> list[str]:
    """Simple migrations ``NNN_<prefix>NNN``: a table plus a ledger row each (ledger created by the first)."""
    slow = slow or {}
    files: dict[str, str] = {}
    ids = []
    for i in range(start, start + count):
        mid = f"{i:03d}_{prefix}{i:03d}"
        ids.append(mid)
        body = ""
        if i == 1:
            body += "CREATE TABLE ledger (id text PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp());\n"
        body += f"CREATE TABLE {prefix}{i:03d} (id int PRIMARY KEY);\n"
        if i in slow:
            body += f"SELECT pg_sleep({slow[i]});\n"
        body += f"INSERT INTO {prefix}{i:03d} VALUES (1);\nINSERT INTO ledger (id) VALUES ('{mid}');\n"
        files[mid + ".sql"] = body
    harness.write(folder, files)
    return ids


# ----------------------------------------------------------------------------- SQLite (the embedded default)
SQLITE_BURN = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 400000) "
               "SELECT count(*) FROM c;\n")  # ~0.1 s of work inside the transaction


def write_kill_set_sqlite(folder: Path) -> list[str]:
    """The kill set in SQLite's dialect: a CPU-bound statement stands in for pg_sleep."""
    files: dict[str, str] = {}
    files[_id(1) + ".sql"] = (
        "CREATE TABLE ledger (id TEXT PRIMARY KEY);\n"
        "CREATE TABLE accounts (id INTEGER PRIMARY KEY, acct_name TEXT NOT NULL, balance INTEGER NOT NULL DEFAULT 0);\n"
        "WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < 50) "
        "INSERT INTO accounts SELECT x, 'acct ' || x, x FROM g;\n"
        "INSERT INTO ledger (id) VALUES ('001_base');\n"
    )
    for i in range(2, KILL_SET_SIZE + 1):
        mid = _id(i)
        burn = SQLITE_BURN if i in SLOW else ""
        if i == RENAME_AT:
            files[mid + ".sql"] = (
                "-- compat: rename accounts.acct_name -> account_name window=14d\n"
                "ALTER TABLE accounts RENAME COLUMN acct_name TO account_name;\n"
                f"{burn}"
                "UPDATE accounts SET balance = balance + 1000;\n"
                f"INSERT INTO ledger (id) VALUES ('{mid}');\n"
            )
            continue
        t = f"m{i:03d}"
        files[mid + ".sql"] = (
            f"CREATE TABLE {t} (id INTEGER PRIMARY KEY, v TEXT NOT NULL);\n"
            f"WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < {ROWS}) "
            f"INSERT INTO {t} SELECT x, 'v' || x FROM g;\n"
            f"{burn}"
            f"ALTER TABLE {t} ADD COLUMN w INTEGER NOT NULL DEFAULT {i};\n"
            f"CREATE INDEX {t}_v ON {t} (v);\n"
            f"INSERT INTO ledger (id) VALUES ('{mid}');\n"
        )
    harness.write(folder, files)
    return kill_set_ids()


def check_prefix_sqlite(path: Path, ids: list[str], shims: bool) -> int:
    """:func:`check_prefix` for a SQLite file."""
    import sqlite3

    with sqlite3.connect(path) as conn:
        names = {r[0]: r[1] for r in conn.execute("SELECT name, type FROM sqlite_master")}

        def ids_of(table: str) -> list[str]:
            if table not in names:
                return []
            return [r[0] for r in conn.execute(f"SELECT migration_id FROM {table} ORDER BY migration_id")]

        applied = ids_of("_migrate_history")
        k = len(applied)
        assert applied == ids[:k], f"history is not a prefix of the set: {applied}"
        assert ids_of("_yoyo_migration") == applied
        if "_migrate_log" in names:
            log = dict(conn.execute("SELECT migration_id, count(*) FROM _migrate_log WHERE operation = 'apply' "
                                    "GROUP BY 1").fetchall())
            assert log == {mid: 1 for mid in applied}, log
        assert ("ledger" in names) == (k >= 1)
        if k:
            assert [r[0] for r in conn.execute("SELECT id FROM ledger ORDER BY id")] == applied
            renamed = ids[RENAME_AT - 1] in applied
            cols = [r[1] for r in conn.execute("PRAGMA table_info(accounts)")]
            assert cols == (["id", "account_name", "balance"] if renamed else ["id", "acct_name", "balance"]), cols
            balance = conn.execute("SELECT sum(balance) FROM accounts").fetchone()[0]
            assert balance == sum(range(1, 51)) + (50_000 if renamed else 0)
            view = f"accounts__v{RENAME_AT - 1:03d}"
            assert (view in names) == (renamed and shims), (view, sorted(names))
        for i in range(2, KILL_SET_SIZE + 1):
            if i == RENAME_AT:
                continue
            t = f"m{i:03d}"
            assert (t in names) == (ids[i - 1] in applied), f"{ids[i - 1]}: table {t} vs history"
            if t in names:
                assert [r[1] for r in conn.execute(f"PRAGMA table_info({t})")] == ["id", "v", "w"]
                assert conn.execute(f"SELECT count(*), min(w), max(w) FROM {t}").fetchone() == (ROWS, i, i)
                assert f"{t}_v" in names
    return k
