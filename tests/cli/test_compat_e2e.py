"""The compat story end to end through the real `migrate` CLI, on PostgreSQL and SQLite."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from helpers import ROOT, Result, expire_shims, run_migrate, url_as
from compat_support import COLUMNS_017, TABLE

SHIM = f"compat_017.{TABLE}"
M017 = "017_add_execution_bundle"
M018 = "018_rename_execution_bundle_to_container_image"

def shims_cli(*args: str, cwd: Path | None = None) -> Result:
    return run_migrate("shims", *args, cwd=cwd)


def consumer(url: str, search_path: str, **kwargs) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=True, options=f"-c search_path={search_path}", **kwargs)


def up(url: str, folder: Path, *extra: str) -> Result:
    result = run_migrate("up", "--database", url, "--migrations", str(folder), *extra)
    assert result.returncode == 0, result.stderr
    return result


def seed(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"INSERT INTO {TABLE} (workflow_id, workflow_name, execution_bundle) VALUES "
                     "('wf-1', 'restart-pod', 'quay.io/x/restart:1'), ('wf-2', 'scale-up', 'quay.io/x/scale:2')")


def test_shims_group_is_registered_in_migrate():
    result = run_migrate("shims", "--help")
    assert result.returncode == 0, result.stderr
    assert "audit" in result.stdout and "route" in result.stdout


def test_story(pg_url: str, example_migrations: Path):
    up(pg_url, example_migrations, "--to", M017)
    seed(pg_url)
    db = ["--database", pg_url]
    # the old consumer is configured with the compat search_path BEFORE the rollout
    with consumer(pg_url, "compat_017,public", application_name="catalog-v017") as old:
        assert old.execute(f"SELECT execution_bundle FROM {TABLE} WHERE workflow_id = 'wf-1'").fetchone() == (
            "quay.io/x/restart:1",)
        result = up(pg_url, example_migrations)
        assert f"active shim {SHIM}" in result.stdout
        cur = old.execute(f"SELECT * FROM {TABLE} ORDER BY workflow_id")
        assert [d.name for d in cur.description] == COLUMNS_017
        assert [r[-1] for r in cur.fetchall()] == ["quay.io/x/restart:1", "quay.io/x/scale:2"]
        old.execute(f"INSERT INTO {TABLE} (workflow_id, workflow_name, execution_bundle) VALUES ('wf-3', 'drain', 'quay.io/x/drain:1')")
        old.execute(f"UPDATE {TABLE} SET execution_bundle = 'quay.io/x/scale:3' WHERE workflow_id = 'wf-2'")
        with consumer(pg_url, "public") as new:
            rows = new.execute(f"SELECT workflow_id, container_image, status FROM {TABLE} ORDER BY 1").fetchall()
            assert rows == [("wf-1", "quay.io/x/restart:1", "draft"), ("wf-2", "quay.io/x/scale:3", "draft"),
                            ("wf-3", "quay.io/x/drain:1", "draft")]
        listed = shims_cli("list", "--format", "json", *db)
        assert listed.returncode == 0, listed.stderr
        (entry,) = json.loads(listed.stdout)
        assert {k: entry[k] for k in ("name", "table", "old", "new", "schema", "status")} == {
            "name": SHIM, "table": f"public.{TABLE}", "old": "execution_bundle", "new": "container_image",
            "schema": "compat_017", "status": "active"}
        assert entry["expires_at"]
        # in a transaction the old consumer holds a lock on the view: drop refuses and names it
        old.execute("BEGIN")
        old.execute(f"SELECT 1 FROM {TABLE} LIMIT 1").fetchall()
        refused = shims_cli("drop", SHIM, *db)
        assert refused.returncode == 3
        assert f"pid {old.info.backend_pid} (postgres, catalog-v017@" in refused.stderr
        assert "Traceback" not in refused.stderr
        old.execute("COMMIT")
        dropped = shims_cli("drop", SHIM, "--reason", "catalog-v017 retired", *db)
        assert dropped.returncode == 0, dropped.stderr
        assert f"dropped {SHIM}" in dropped.stdout and "dropped schema compat_017" in dropped.stdout
        with pytest.raises(psycopg.errors.UndefinedColumn, match='column "execution_bundle" does not exist'):
            old.execute(f"SELECT execution_bundle FROM {TABLE}")
    (entry,) = json.loads(shims_cli("list", "--format", "json", *db).stdout)
    assert entry["status"] == "dropped" and entry["reason"] == "catalog-v017 retired"
    assert entry["dropped_by"].startswith("postgres (") and entry["dropped_at"]
    text = shims_cli("list", *db).stdout
    assert "dropped" in text and SHIM in text


def test_expiry_makes_audit_exit_1(pg_url: str, example_migrations: Path):
    up(pg_url, example_migrations)
    assert shims_cli("audit", "--database", pg_url).returncode == 0
    assert expire_shims(pg_url) == 1
    late = shims_cli("audit", "--database", pg_url, "--format", "json")
    assert late.returncode == 1
    assert json.loads(late.stdout)["expired"][0]["name"] == SHIM
    assert f"1 shim(s) past expiry: {SHIM}" in late.stderr and "Traceback" not in late.stderr
    extended = shims_cli("extend", SHIM, "--by", "1h", "--reason", "waiting for billing", "--database", pg_url)
    assert extended.returncode == 0, extended.stderr
    ok = shims_cli("audit", "--database", pg_url)
    assert ok.returncode == 0, ok.stderr
    assert "1 active shim(s); 0 past expiry; 1 expiring within 7d" in ok.stdout
    (entry,) = json.loads(shims_cli("list", "--format", "json", "--database", pg_url).stdout)
    assert entry["extensions"][0]["reason"] == "waiting for billing"


def test_role_with_only_table_privileges(pg_url: str, example_migrations: Path, make_role):
    up(pg_url, example_migrations, "--to", M017)
    seed(pg_url)
    app, limited = make_role(), make_role()
    with psycopg.connect(pg_url, autocommit=True) as admin:
        for role in (app, limited):
            admin.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE ON {} TO {}").format(sql.Identifier(TABLE), sql.Identifier(role)))
        admin.execute(f"ALTER TABLE {TABLE} ENABLE ROW LEVEL SECURITY")
        admin.execute(sql.SQL("CREATE POLICY app_all ON {} TO {} USING (true)").format(sql.Identifier(TABLE), sql.Identifier(app)))
        admin.execute(sql.SQL("CREATE POLICY limited_one ON {} TO {} USING (workflow_id = 'wf-1')").format(
            sql.Identifier(TABLE), sql.Identifier(limited)))
    up(pg_url, example_migrations)
    with consumer(url_as(pg_url, app), "compat_017,public") as c:
        assert [d.name for d in c.execute(f"SELECT * FROM {TABLE}").description] == COLUMNS_017
        c.execute(f"UPDATE {TABLE} SET execution_bundle = 'x' WHERE workflow_id = 'wf-2'")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute(f"DELETE FROM {TABLE}")
    with consumer(url_as(pg_url, limited), "compat_017,public") as c:
        assert c.execute(f"SELECT workflow_id FROM {TABLE}").fetchall() == [("wf-1",)]
        assert c.execute(f"UPDATE {TABLE} SET execution_bundle = 'y'").rowcount == 1


def test_connect_route_and_down(pg_url: str, example_migrations: Path, make_role):
    up(pg_url, example_migrations)
    info = shims_cli("connect", "--as-of", "017", "--database", pg_url, "--format", "json")
    assert info.returncode == 0, info.stderr
    data = json.loads(info.stdout)
    assert data["search_path"] == "compat_017,public" and "options=-c%20search_path%3Dcompat_017%2Cpublic" in data["url"]
    role = make_role()
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(sql.Identifier(TABLE), sql.Identifier(role)))
        admin.execute(sql.SQL("GRANT SELECT ON compat_017.{} TO {}").format(sql.Identifier(TABLE), sql.Identifier(role)))
        admin.execute(sql.SQL("GRANT USAGE ON SCHEMA compat_017 TO {}").format(sql.Identifier(role)))
    routed = shims_cli("route", role, "--as-of", "017", "--database", pg_url)
    assert routed.returncode == 0, routed.stderr
    with psycopg.connect(url_as(pg_url, role), autocommit=True) as svc:
        assert svc.execute("SHOW search_path").fetchone()[0] == 'compat_017, "$user", public'
    down = run_migrate("down", "--database", pg_url, "--migrations", str(example_migrations))
    assert down.returncode == 0, down.stderr
    (entry,) = json.loads(shims_cli("list", "--format", "json", "--database", pg_url).stdout)
    assert entry["status"] == "dropped" and entry["reason"] == f"migration {M018} rolled back"
    with psycopg.connect(url_as(pg_url, role), autocommit=True) as svc:
        assert svc.execute("SHOW search_path").fetchone()[0] == '"$user", public'  # route undone with the shim
    assert shims_cli("route", role, "--database", pg_url).returncode == 2


def test_failed_rename_rolls_back_with_file_and_line(pg_url: str, example_migrations: Path):
    path = example_migrations / f"{M018}.sql"
    path.write_text(path.read_text().replace("RENAME COLUMN execution_bundle TO container_image",
                                             "ADD COLUMN container_image VARCHAR(512)"))
    up(pg_url, example_migrations, "--to", M017)
    result = run_migrate("up", "--database", pg_url, "--migrations", str(example_migrations))
    assert result.returncode == 4
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "compat:" in text)
    assert f"{M018}.sql:{line}: declared rename {TABLE}.execution_bundle -> container_image did not happen: " \
           f"column execution_bundle still exists" in result.stderr
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT to_regnamespace('compat_017')").fetchone()[0] is None
        assert conn.execute("SELECT count(*) FROM _migrate_history").fetchone()[0] == 2


def test_no_compat_creates_no_shim(pg_url: str, example_migrations: Path):
    up(pg_url, example_migrations, "--no-compat")
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT to_regnamespace('compat_017')").fetchone()[0] is None


def test_sqlite_quickstart_gets_a_read_shim(tmp_path: Path):
    shutil.copytree(ROOT / "migrations", tmp_path / "migrations")
    assert run_migrate("up", cwd=tmp_path).returncode == 0
    conn = sqlite3.connect(tmp_path / "migrate.db")
    cur = conn.execute(f"SELECT * FROM {TABLE}__v017")
    assert [d[0] for d in cur.description] == COLUMNS_017
    listed = shims_cli("list", "--format", "json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)[0]["name"] == f"{TABLE}__v017"
