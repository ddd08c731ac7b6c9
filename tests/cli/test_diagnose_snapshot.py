"""Schema snapshots: what they capture and exclude, the diff, and the hook's transaction semantics."""

from __future__ import annotations


import sqlite3

import psycopg

from helpers import migrate_json_logs as migrate, sql

from runner.config import Settings  # noqa: E402
from runner.db import Database, connect, transaction  # noqa: E402
from runner.hooks import MigrationContext  # noqa: E402
from runner.migration import MigrationFile  # noqa: E402
from runner.snapshot import (  # noqa: E402
    SnapshotHook,
    diff_snapshots,
    latest_snapshot,
    store_snapshot,
    take_snapshot,
)


def snap_of(url: str, schema: str | None = None) -> dict:
    """The runner's snapshot of the database at ``url`` (of ``schema``: the runner's schema)."""
    with connect(url, schema=schema) as db:
        return take_snapshot(db)


def test_postgres_snapshot_content_and_exclusions(pg_conn, pg_url):
    pg_conn.execute("CREATE TABLE a (id bigint PRIMARY KEY, name varchar(20) NOT NULL, note text)")
    pg_conn.execute("CREATE INDEX a_name ON a (name)")
    pg_conn.execute("CREATE VIEW a_names AS SELECT name FROM a")
    pg_conn.execute("CREATE TABLE _migrate_history (x int)")
    pg_conn.execute("CREATE TABLE _yoyo_log (x int)")
    pg_conn.execute("CREATE TABLE yoyo_lock (x int)")
    pg_conn.execute("CREATE SCHEMA compat_017")
    pg_conn.execute("CREATE VIEW compat_017.a AS SELECT id FROM public.a")
    snap = snap_of(pg_url)
    assert snap["tables"] == {"a": {"kind": "table", "columns": [
        {"name": "id", "type": "bigint", "nullable": False, "num": 1},
        {"name": "name", "type": "character varying(20)", "nullable": False, "num": 2},
        {"name": "note", "type": "text", "nullable": True, "num": 3}]}}
    assert snap["views"] == {"a_names": {"kind": "view", "columns": [
        {"name": "name", "type": "character varying(20)", "nullable": True, "num": 1}]}}
    assert set(snap["indexes"]) == {"a_pkey", "a_name"}
    assert snap["indexes"]["a_name"]["definition"] == "CREATE INDEX a_name ON public.a USING btree (name)"


def test_sqlite_snapshot_excludes_runner_tables_and_shim_views(tmp_path):
    conn = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    conn.execute("CREATE TABLE a (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
    conn.execute("CREATE INDEX a_name ON a (name)")
    conn.execute("CREATE VIEW a__v017 AS SELECT id FROM a")
    conn.execute("CREATE VIEW report AS SELECT name FROM a")
    conn.execute("CREATE TABLE _migrate_history (x)")
    snap = snap_of(f"sqlite:///{tmp_path / 'x.db'}")
    assert list(snap["tables"]) == ["a"] and list(snap["views"]) == ["report"]
    assert snap["tables"]["a"]["columns"][1] == {"name": "name", "type": "text", "nullable": False, "num": 2}
    assert list(snap["indexes"]) == ["a_name"]


def test_diff_reports_every_kind_of_change(pg_conn, pg_url):
    pg_conn.execute("CREATE TABLE t (id int, a text, b int NOT NULL, gone int)")
    pg_conn.execute("CREATE TABLE dropped (id int)")
    pg_conn.execute("CREATE INDEX t_b ON t (b)")
    before = snap_of(pg_url)
    pg_conn.execute("ALTER TABLE t RENAME COLUMN a TO a2")
    pg_conn.execute("ALTER TABLE t ALTER COLUMN b TYPE bigint, ALTER COLUMN b DROP NOT NULL")
    pg_conn.execute("ALTER TABLE t DROP COLUMN gone, ADD COLUMN extra int")
    pg_conn.execute("DROP TABLE dropped")
    pg_conn.execute("DROP INDEX t_b")
    pg_conn.execute("CREATE INDEX t_id ON t (id)")
    changes = {(c.change, c.object) for c in diff_snapshots(before, snap_of(pg_url))}
    assert changes == {
        ("table-dropped", "dropped"), ("column-renamed", "t.a"), ("column-dropped", "t.gone"),
        ("column-added", "t.extra"), ("column-retyped", "t.b"), ("nullability-changed", "t.b"),
        ("index-dropped", "t_b"), ("index-added", "t_id"),
    }
    assert diff_snapshots(before, before) == []


def ctx(db: Database, migration_id: str, previous: str | None = None, direction: str = "apply") -> MigrationContext:
    def mf(i: str) -> MigrationFile:
        return MigrationFile(i, f"{i}.sql", "sql", "0" * 64, None, None)

    return MigrationContext(db, mf(migration_id), mf(previous) if previous else None, Settings(), direction)


def test_hook_snapshots_only_the_final_migration_inside_its_transaction(pg_url):
    with connect(pg_url) as db:
        hook = SnapshotHook(final_migration_id="003")
        for mid in ("001", "002"):
            with transaction(db):
                db.execute(f"CREATE TABLE public.t{mid} (id int)")
                hook.after(ctx(db, mid))
        assert latest_snapshot(db) is None  # nothing stored, not even the table
        try:
            with transaction(db):
                db.execute("CREATE TABLE public.t003 (id int)")
                hook.after(ctx(db, "003"))
                raise RuntimeError("the migration's bookkeeping failed")
        except RuntimeError:
            pass
        assert latest_snapshot(db) is None  # rolled back with the migration
        with transaction(db):
            db.execute("CREATE TABLE public.t003 (id int)")
            hook.after(ctx(db, "003"))
        stored = latest_snapshot(db)
        assert stored.migration_id == "003" and set(stored.snapshot["tables"]) == {"t001", "t002", "t003"}
        # A rollback stores the shape under the migration that stays applied.
        down = SnapshotHook(final_migration_id="003")
        with transaction(db):
            db.execute("DROP TABLE public.t003")
            down.after(ctx(db, "003", previous="002", direction="rollback"))
        stored = latest_snapshot(db)
        assert stored.migration_id == "002" and set(stored.snapshot["tables"]) == {"t001", "t002"}


def test_hook_every_snapshots_every_migration_sqlite(tmp_path):
    db = connect(f"sqlite:///{tmp_path / 'x.db'}")
    hook = SnapshotHook(every=True)
    for mid in ("001", "002"):
        with transaction(db):
            db.execute(f"CREATE TABLE t{mid} (id int)")
            hook.after(ctx(db, mid))
    rows = db.execute("SELECT migration_id FROM _migrate_snapshot ORDER BY id").fetchall()
    assert rows == [("001",), ("002",)]
    assert set(latest_snapshot(db).snapshot["tables"]) == {"t001", "t002"}


def test_hook_default_snapshots_only_the_head_of_the_folder(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    for name in ("2_b.sql", "10_c.sql", "10_c.rollback.sql", "1_a.py", "notes.txt"):
        (folder / name).write_text("SELECT 1;\n")
    db = connect(f"sqlite:///{tmp_path / 'x.db'}")
    hook = SnapshotHook()
    settings = Settings(migrations=folder)
    for mid in ("1_a", "2_b", "10_c"):
        c = ctx(db, mid)
        c.settings = settings
        with transaction(db):
            db.execute(f"CREATE TABLE t{mid} (id int)")
            hook.after(c)
    assert db.execute("SELECT migration_id FROM _migrate_snapshot").fetchall() == [("10_c",)]


def test_store_uses_quoted_schema(pg_url):
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute('CREATE SCHEMA "Odd Schema"')
        conn.execute('CREATE TABLE "Odd Schema"."T" (id int)')
    with connect(pg_url, schema="Odd Schema") as db:
        snap = take_snapshot(db)
        with transaction(db):
            store_snapshot(db, "001", snap)
        assert latest_snapshot(db).snapshot["tables"]["T"]["columns"][0]["name"] == "id"


def test_migrate_up_stores_the_snapshot_of_the_last_migration(pg_url, example_migrations):
    result = migrate("up", "--format", "json", "--database", pg_url, "--migrations", str(example_migrations))
    assert result.returncode == 0, result
    last = sql(pg_url, "SELECT migration_id, snapshot FROM _migrate_snapshot ORDER BY id DESC LIMIT 1")[0]
    assert last[0] == "018_rename_execution_bundle_to_container_image"
    names = [c["name"] for c in last[1]["tables"]["remediation_workflow_catalog"]["columns"]]
    assert "container_image" in names and "execution_bundle" not in names
    assert set(last[1]["tables"]) == {"remediation_workflow_catalog"}  # no runner or registry tables
    assert last[1]["views"] == {}  # the compat_017 shim lives in its own schema
