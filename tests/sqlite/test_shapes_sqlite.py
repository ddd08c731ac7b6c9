"""Shapes on SQLite: the same shapes as read-only `{table}__v{version}` views, and the story's counterpart."""

from __future__ import annotations

import json
import shutil
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest

from compat.registry import Registry
from helpers import run_migrate
from runner.config import CompatSettings, Settings
from runner.db import connect
from compat_support import Runner, migration, shims_of, sqlite_runner

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "shapes_story" / "sqlite"
CATALOG = "remediation_workflow_catalog"
RUNS = "workflow_runs"
SEEN = {
    "016": {CATALOG: ["workflow_id", "workflow_name", "status", "created_at"],
            RUNS: ["run_id", "workflow_id", "attempts", "legacy_note", "state"]},
    "017": {CATALOG: ["workflow_id", "workflow_name", "status", "created_at", "execution_bundle"],
            RUNS: ["run_id", "workflow_id", "attempts", "legacy_note", "state"]},
}
STEPS = ["017_add_execution_bundle", "018_rename_execution_bundle", "019_runs_drop_note_retype_attempts",
         "020_rename_runs_to_executions"]


def relation(conn, table: str, version: str) -> str:
    """What a consumer at ``version`` reads: the shim view when there is one, else the table."""
    view = f"{table}__v{version}"
    found = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'view' AND name = ?", (view,)).fetchone()
    return view if found else table


def strict_scan(conn, version: str, table: str) -> list[tuple]:
    cur = conn.execute(f"SELECT * FROM {relation(conn, table, version)} ORDER BY 1")
    names = [d[0] for d in cur.description]
    assert names == SEEN[version][table], f"{version} consumer scanning {table}: {names}"
    return cur.fetchall()


def test_story_sqlite(tmp_path: Path):
    folder = tmp_path / "story"
    shutil.copytree(FIXTURE, folder)
    path = tmp_path / "story.db"
    db = ("--database", f"sqlite:///{path}")
    result = run_migrate("up", *db, "--to", "016_create_catalog_and_runs", cwd=folder)
    assert result.returncode == 0, result.stderr
    admin = sqlite3.connect(path, isolation_level=None)
    admin.execute(f"INSERT INTO {CATALOG} (workflow_name) VALUES ('restart-pod')")
    admin.execute(f"INSERT INTO {RUNS} (workflow_id, attempts, legacy_note) VALUES (1, 2, 'old')")
    c16 = sqlite3.connect(path, isolation_level=None)
    c17 = sqlite3.connect(path, isolation_level=None)
    try:
        for step in STEPS:
            result = run_migrate("up", *db, "--to", step, cwd=folder)
            assert result.returncode == 0, result.stderr
            for version, conn in (("016", c16), ("017", c17)):
                for table in SEEN[version]:
                    strict_scan(conn, version, table)
        rows = strict_scan(c16, "016", RUNS)
        assert rows == [(1, 1, 2, None, "queued")] and type(rows[0][2]) is int
        assert strict_scan(c17, "017", CATALOG)[0][:2] == (1, "restart-pod")
        # SQLite shim views are read-only: old writers must move first
        with pytest.raises(sqlite3.OperationalError, match="cannot modify .* because it is a view"):
            c17.execute(f"UPDATE {CATALOG}__v017 SET execution_bundle = 'x'")
    finally:
        c16.close()
        c17.close()
        admin.close()
    listed = json.loads(run_migrate("shims", "list", *db, "--format", "json", cwd=folder).stdout)
    shapes = {e["name"]: e["shape"] for e in listed}
    assert shapes[f"{CATALOG}__v016"] == {"hides": ["container_image"]}
    assert shapes[f"{CATALOG}__v017"] == {"renames": ["container_image as execution_bundle"]}
    assert shapes[f"{RUNS}__v016"] == {"casts": ["attempts::INTEGER as attempts"],
                                        "fills": ["legacy_note with NULL::TEXT"]}
    assert sorted(shapes) == sorted([f"{CATALOG}__v016", f"{CATALOG}__v017", f"{RUNS}__v016", f"{RUNS}__v017",
                                     f"{RUNS}__v018", f"{RUNS}__v019"])
    verified = run_migrate("verify", *db, "--consumer", "consumer_016.toml", "--consumer", "consumer_017.toml",
                           "--format", "json", cwd=folder)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert all(c["ok"] for c in json.loads(verified.stdout)["consumers"])

    with connect(f"sqlite:///{path}") as d:
        registry = Registry(d)
        for shim in registry.shims("active"):
            if shim.as_of == "016":
                registry.set_expiry(shim, registry.now() - timedelta(hours=1), "test: window over")
        d.connection.commit()
    dropped = run_migrate("shims", "drop", "--expired", *db, "--format", "json", cwd=folder)
    assert dropped.returncode == 0, dropped.stderr
    assert sorted(d["name"] for d in json.loads(dropped.stdout)["dropped"]) == [f"{CATALOG}__v016", f"{RUNS}__v016"]
    with sqlite3.connect(path) as conn:
        views = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'view'")}
    assert views == {f"{CATALOG}__v017", f"{RUNS}__v017", f"{RUNS}__v018", f"{RUNS}__v019"}
    after = run_migrate("verify", *db, "--consumer", "consumer_016.toml", "--consumer", "consumer_017.toml",
                        "--format", "json", cwd=folder)
    assert after.returncode == 1
    ok = {c["consumer"]: c["ok"] for c in json.loads(after.stdout)["consumers"]}
    assert ok == {"workflow-api (016 code)": False, "workflow-api (017 code)": True}


def test_sqlite_shapes_follow_renames_and_tell_drops(tmp_path: Path):
    r = sqlite_runner(str(tmp_path / "db.sqlite"), Settings(compat=CompatSettings(mode="auto")))
    r.apply(migration("001_t", "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b TEXT)"))
    r.connection.execute("INSERT INTO t (a, b) VALUES ('x', 'y')")
    r.connection.commit()
    r.apply(migration("002_rename", "ALTER TABLE t RENAME COLUMN a TO c"))
    r.apply(migration("003_add_a", ["ALTER TABLE t ADD COLUMN a TEXT", "ALTER TABLE t DROP COLUMN b"]))
    shims = {s.name: s for s in shims_of(r.db)}
    # the new column a is not the old a (renamed to c): version 001 still reads c as a
    assert shims["t__v001"].shape == {"renames": ["c as a"], "fills": ["b with NULL::TEXT"], "hides": ["a"]}
    assert r.connection.execute("SELECT * FROM t__v001").fetchall() == [(1, "x", None)]
    assert r.connection.execute("SELECT * FROM t__v002").fetchall() == [(1, "x", None)]
    assert [d[0] for d in r.connection.execute("SELECT * FROM t__v002").description] == ["id", "c", "b"]


def _swapped(tmp_path: Path) -> Runner:
    """Auto mode; 001 creates t with a row, 002 renames it to t_old and creates a new t."""
    r = sqlite_runner(str(tmp_path / "db.sqlite"), Settings(compat=CompatSettings(mode="auto")))
    r.apply(migration("001_t", "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b TEXT)"))
    r.connection.execute("INSERT INTO t (a, b) VALUES ('x', 'y')")
    r.connection.commit()
    r.apply(migration("002_swap", ["ALTER TABLE t RENAME TO t_old", "CREATE TABLE t (id INTEGER PRIMARY KEY, z TEXT)"]))
    return r


def test_sqlite_table_renamed_and_recreated_under_its_name_keeps_a_view_of_the_old_one(tmp_path: Path):
    # the rename comes before the CREATE of the new t, so it is followed (compat.shapes.touched_tables)
    r = _swapped(tmp_path)
    (shim,) = shims_of(r.db)
    assert (shim.name, shim.table_name, shim.shape) == ("t__v001", "t_old", {})
    assert r.connection.execute("SELECT * FROM t__v001").fetchall() == [(1, "x", "y")]


def test_sqlite_table_swapped_then_changed_keeps_the_old_view_and_adds_one_for_the_new_table(tmp_path: Path):
    # version 001 is served by the view over t_old; changing the new t must not open a second 001
    # (it used to fail: UNIQUE constraint failed: _migrate_shims.name)
    r = _swapped(tmp_path)
    r.apply(migration("003_add", "ALTER TABLE t ADD COLUMN w TEXT"))
    assert [(s.name, s.table_name, s.shape) for s in shims_of(r.db)] == [
        ("t__v001", "t_old", {}), ("t__v002", "t", {"hides": ["w"]})]
    assert r.connection.execute("SELECT * FROM t__v001").fetchall() == [(1, "x", "y")]
    assert [c[1] for c in r.connection.execute("PRAGMA table_info(t__v002)")] == ["id", "z"]
    r.apply(migration("004_swap", ["ALTER TABLE t RENAME TO t_old2", "CREATE TABLE t (id INTEGER PRIMARY KEY, q TEXT)"]))
    assert [(s.name, s.table_name) for s in shims_of(r.db)] == [
        ("t__v001", "t_old"), ("t__v002", "t_old2"), ("t__v003", "t_old2")]
    assert [c[1] for c in r.connection.execute("PRAGMA table_info(t__v003)")] == ["id", "z", "w"]
