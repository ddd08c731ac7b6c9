"""CompatHook on SQLite: shim views named by the template, reads through old names, upkeep."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from runner.config import CompatSettings, Settings
from runner.errors import MigrationFailed
from compat_support import COLUMNS_017, TABLE, m018, migration, shims_of, sqlite_runner, story_to_017

VIEW = f"{TABLE}__v017"


def columns(conn, name):
    return [r[1] for r in conn.execute(f'PRAGMA table_xinfo("{name}")').fetchall()]


def test_story_on_sqlite(tmp_path: Path):
    r = sqlite_runner(str(tmp_path / "db.sqlite"))
    story_to_017(r)
    r.apply(m018())
    conn = r.connection
    assert columns(conn, VIEW) == COLUMNS_017
    cur = conn.execute(f"SELECT * FROM {VIEW} ORDER BY workflow_id")
    assert [d[0] for d in cur.description] == COLUMNS_017
    assert [row[-1] for row in cur.fetchall()] == ["quay.io/x/restart:1", "quay.io/x/scale:2"]
    # writes through the view fail with SQLite's own message (documented)
    with pytest.raises(sqlite3.OperationalError, match="cannot modify .* because it is a view"):
        conn.execute(f"UPDATE {VIEW} SET execution_bundle = 'x'")
    conn.execute(f"UPDATE {TABLE} SET container_image = 'new' WHERE workflow_id = 1")
    assert conn.execute(f"SELECT execution_bundle FROM {VIEW} WHERE workflow_id = 1").fetchone() == ("new",)
    (shim,) = shims_of(r.db)
    assert (shim.name, shim.view_name, shim.compat_schema, shim.old, shim.new, shim.status) == (
        VIEW, VIEW, None, "execution_bundle", "container_image", "active")
    assert (shim.expires_at - shim.created_at).days == 14


def test_template_and_expose_both(tmp_path: Path):
    settings = Settings(compat=CompatSettings(sqlite_view_template="v{version}_{table}"))
    r = sqlite_runner(str(tmp_path / "db.sqlite"), settings)
    story_to_017(r)
    r.apply(m018(f"rename {TABLE}.execution_bundle -> container_image expose=both"))
    assert columns(r.connection, f"v017_{TABLE}") == COLUMNS_017 + ["container_image"]


def test_rename_not_done_rolls_back(tmp_path: Path):
    r = sqlite_runner(str(tmp_path / "db.sqlite"))
    story_to_017(r)
    bad = migration("018_rename", f"ALTER TABLE {TABLE} ADD COLUMN container_digest TEXT",
                    [f"rename {TABLE}.execution_bundle -> container_image"])
    with pytest.raises(MigrationFailed, match=r"^migrations/018_rename.sql:1: declared rename .* column execution_bundle still exists"):
        r.apply(bad)
    assert "container_digest" not in columns(r.connection, TABLE)
    bad = migration("018_rename", [f"ALTER TABLE {TABLE} DROP COLUMN execution_bundle",
                                   f"ALTER TABLE {TABLE} ADD COLUMN container_image TEXT"],
                    [f"rename {TABLE}.execution_bundle -> content2"])
    with pytest.raises(MigrationFailed, match="column content2 does not exist"):
        r.apply(bad)
    moved = migration("018_rename", [f"ALTER TABLE {TABLE} RENAME COLUMN content TO body_old",
                                     f"ALTER TABLE {TABLE} DROP COLUMN body_old",
                                     f"ALTER TABLE {TABLE} ADD COLUMN body TEXT"],
                      [f"rename {TABLE}.content -> body"])
    with pytest.raises(MigrationFailed, match="the column moved"):
        r.apply(moved)


def test_table_rebuild_later_keeps_the_shim(tmp_path: Path):
    """SQLite's 12-step table rebuild (new table, copy, drop, rename) works with a shim present."""
    r = sqlite_runner(str(tmp_path / "db.sqlite"))
    story_to_017(r)
    r.apply(m018())
    rebuild = [
        f"CREATE TABLE {TABLE}_new (workflow_id INTEGER PRIMARY KEY, workflow_name TEXT NOT NULL UNIQUE, "
        "version TEXT NOT NULL DEFAULT '1.0.0', status TEXT NOT NULL DEFAULT 'draft', labels TEXT NOT NULL DEFAULT '{}', "
        "content TEXT, created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP, container_image TEXT, container_digest TEXT)",
        f"INSERT INTO {TABLE}_new SELECT * FROM {TABLE}",
        f"DROP TABLE {TABLE}",
        f"ALTER TABLE {TABLE}_new RENAME TO {TABLE}",
    ]
    r.apply(migration("019_unique_name", rebuild))
    assert columns(r.connection, VIEW) == COLUMNS_017
    assert r.connection.execute(f"SELECT count(*) FROM {VIEW}").fetchone() == (2,)


def test_later_declared_rename_is_followed_and_drop_is_filled(tmp_path: Path):
    r = sqlite_runner(str(tmp_path / "db.sqlite"))
    story_to_017(r)
    r.apply(m018())
    r.apply(migration("019_rename_again", f"ALTER TABLE {TABLE} RENAME COLUMN container_image TO image_ref",
                      [f"rename {TABLE}.container_image -> image_ref"]))
    assert r.connection.execute(f"SELECT execution_bundle FROM {VIEW} WHERE workflow_id = 1").fetchone() == (
        "quay.io/x/restart:1",)
    assert r.connection.execute(f"SELECT container_image FROM {TABLE}__v018 WHERE workflow_id = 1").fetchone() == (
        "quay.io/x/restart:1",)
    # a dropped column the shim shows reads as NULL (see tests/test_shapes_sqlite.py)
    r.apply(migration("020_drop", f"ALTER TABLE {TABLE} DROP COLUMN content"))
    assert "content" not in columns(r.connection, TABLE) and columns(r.connection, VIEW) == COLUMNS_017
    assert r.connection.execute(f"SELECT DISTINCT content FROM {VIEW}").fetchall() == [(None,)]
