"""`migrate doctor` and `migrate snapshot` against real PostgreSQL (and SQLite)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg

from helpers import migrate_json_logs as migrate, sql

CATALOG = "remediation_workflow_catalog"
M018 = "018_rename_execution_bundle_to_container_image"


def args(url: str, folder: Path) -> list[str]:
    return ["--database", url, "--migrations", str(folder)]


def up(url: str, folder: Path, *extra: str) -> None:
    result = migrate("up", *args(url, folder), *extra)
    assert result.returncode == 0, result


def doctor(url: str, folder: Path, json: bool = False):
    return migrate("doctor", *args(url, folder), *(["--format", "json"] if json else []))


def kinds(result) -> list[str]:
    return [f["kind"] for f in result.json()]


def test_healthy_database_exits_0(pg_url, example_migrations):
    up(pg_url, example_migrations)
    result = doctor(pg_url, example_migrations)
    assert result.returncode == 0, result
    assert "healthy: database is at 018 (head)" in result.stdout
    assert "schema matches the snapshot" in result.stdout
    assert doctor(pg_url, example_migrations, json=True).json() == []


def test_rollback_keeps_the_snapshot_in_step(pg_url, example_migrations):
    up(pg_url, example_migrations)
    assert migrate("down", *args(pg_url, example_migrations)).returncode == 0
    result = doctor(pg_url, example_migrations, json=True)
    assert kinds(result) == ["pending"], result  # no false drift: the snapshot now describes 017
    assert sql(pg_url, "SELECT migration_id FROM _migrate_snapshot ORDER BY id DESC LIMIT 1")[0][0] == \
        "017_add_execution_bundle"


def test_pending_migration_in_plain_words_with_the_fix(pg_url, example_migrations):
    up(pg_url, example_migrations, "--to", "017_add_execution_bundle")
    result = doctor(pg_url, example_migrations)
    assert result.returncode == 1, result
    assert f"PENDING: database is at 017; {M018} is pending\n    fix: run `migrate up`" in result.stdout
    data = doctor(pg_url, example_migrations, json=True).json()
    assert data == [{"kind": "pending", "object": M018, "detail": f"database is at 017; {M018} is pending",
                     "fix": "run `migrate up`", "severity": "error"}]


def test_recorded_migration_whose_effect_was_reverted_by_hand(pg_url, example_migrations):
    up(pg_url, example_migrations)
    sql(pg_url, f"ALTER TABLE {CATALOG} RENAME COLUMN container_image TO execution_bundle")
    result = doctor(pg_url, example_migrations, json=True)
    assert result.returncode == 1, result
    [finding] = result.json()
    assert finding["kind"] == "effect-missing" and finding["object"] == M018
    assert (f"{M018} is recorded as applied but its effect is missing: column {CATALOG}.execution_bundle is "
            "present and container_image is missing (reverted by hand?)") == finding["detail"]
    assert f"ALTER TABLE {CATALOG} RENAME COLUMN execution_bundle TO container_image" in finding["fix"]


def test_dropped_column_is_attributed_to_the_migration_that_added_it(pg_url, example_migrations):
    up(pg_url, example_migrations)
    sql(pg_url, f"ALTER TABLE {CATALOG} DROP COLUMN container_digest CASCADE")
    [finding] = doctor(pg_url, example_migrations, json=True).json()
    assert finding["kind"] == "effect-missing" and finding["object"] == M018
    assert f"column {CATALOG}.container_digest is missing" in finding["detail"]


def test_changes_made_outside_migrations_are_drift(pg_url, example_migrations):
    up(pg_url, example_migrations, "--no-compat")  # a shim view would forbid retyping its columns
    sql(pg_url, f"ALTER TABLE {CATALOG} ADD COLUMN owner text",
        f"ALTER TABLE {CATALOG} ALTER COLUMN content SET NOT NULL",
        f"ALTER TABLE {CATALOG} ALTER COLUMN labels TYPE varchar(100)",
        f"CREATE INDEX catalog_name_idx ON {CATALOG} (workflow_name)",
        "CREATE TABLE scratch (id int)")
    result = doctor(pg_url, example_migrations, json=True)
    assert result.returncode == 1
    details = {f["object"]: f["detail"] for f in result.json() if f["kind"] == "drift"}
    assert details == {
        "scratch": "changed outside migrations: table scratch exists but no migration created it",
        f"{CATALOG}.owner": f"changed outside migrations: column {CATALOG}.owner (text) exists but no migration added it",
        f"{CATALOG}.content": f"changed outside migrations: column {CATALOG}.content is NOT NULL, expected nullable",
        f"{CATALOG}.labels": f"changed outside migrations: column {CATALOG}.labels is character varying(100), "
                             "expected text",
        "catalog_name_idx": f"changed outside migrations: index catalog_name_idx on {CATALOG} exists but no "
                            "migration created it",
    }
    # Accepting the live schema on purpose clears it.
    recorded = migrate("snapshot", *args(pg_url, example_migrations))
    assert recorded.returncode == 0 and f"after {M018}" in recorded.stdout, recorded
    assert doctor(pg_url, example_migrations).returncode == 0


def test_modified_and_missing_files(pg_url, example_migrations):
    up(pg_url, example_migrations)
    (example_migrations / "017_add_execution_bundle.sql").write_text("-- edited\nSELECT 1;\n")
    (example_migrations / f"{M018}.sql").unlink()
    (example_migrations / f"{M018}.rollback.sql").unlink()
    result = doctor(pg_url, example_migrations, json=True)
    assert result.returncode == 1
    by_kind = {f["kind"]: f for f in result.json()}
    assert by_kind["modified-file"]["object"] == "017_add_execution_bundle"
    assert "migrate rehash 017_add_execution_bundle" in by_kind["modified-file"]["fix"]
    assert by_kind["missing-file"]["object"] == M018
    assert f"migrate unmark {M018}" in by_kind["missing-file"]["fix"]


def test_expired_shim(pg_url, example_migrations):
    up(pg_url, example_migrations)
    sql(pg_url, "UPDATE _migrate_shims SET expires_at = now() - interval '1 day'")
    result = doctor(pg_url, example_migrations, json=True)
    assert result.returncode == 1
    [finding] = result.json()
    assert finding["kind"] == "shim-expired"
    assert "execution_bundle -> container_image" in finding["detail"] and "compat_017" in finding["detail"]
    assert f"migrate shims drop {finding['object']}" in finding["fix"]


def test_lock_held_and_by_whom(pg_url, example_migrations):
    up(pg_url, example_migrations)
    from runner.db import connect
    from runner.dialects.postgresql import DIALECT as POSTGRESQL

    with connect(pg_url) as db:
        classid, objid = POSTGRESQL.lock_key(db)
    with psycopg.connect(pg_url, autocommit=True, application_name="deploy-job-42") as holder:
        holder.execute("SELECT pg_advisory_lock(%s, %s)", (classid, objid))
        pid = holder.info.backend_pid
        result = doctor(pg_url, example_migrations)
        assert result.returncode == 1, result
        assert f"LOCK-HELD: the migration lock is held by pid {pid}" in result.stdout
        assert "application_name='deploy-job-42'" in result.stdout
        assert f"SELECT pg_terminate_backend({pid})" in result.stdout
    assert doctor(pg_url, example_migrations).returncode == 0


def test_never_touched_databases(pg_url, example_migrations):
    empty = doctor(pg_url, example_migrations, json=True)
    assert empty.returncode == 1
    [finding] = empty.json()
    assert finding["kind"] == "not-managed" and "it is empty" in finding["detail"]
    assert finding["fix"] == "`migrate up` applies every migration"
    sql(pg_url, "CREATE TABLE legacy (id int)")
    result = doctor(pg_url, example_migrations)
    assert result.returncode == 1
    assert "the runner has never touched this database (no _migrate_history in schema public)" in result.stdout
    assert "migrate mark ID..." in result.stdout and "migrate adopt" in result.stdout
    # Read-only: doctor created nothing.
    assert sql(pg_url, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")[0][0] == 1


def test_missing_snapshot_is_information_not_failure(pg_url, example_migrations):
    up(pg_url, example_migrations)
    sql(pg_url, "DELETE FROM _migrate_snapshot")
    result = doctor(pg_url, example_migrations, json=True)
    assert result.returncode == 0, result
    assert [(f["kind"], f["severity"]) for f in result.json()] == [("no-snapshot", "info")]
    sql(pg_url, "INSERT INTO _migrate_snapshot (migration_id, snapshot) VALUES ('017_add_execution_bundle', '{}')")
    stale = doctor(pg_url, example_migrations, json=True)
    assert stale.returncode == 0 and kinds(stale) == ["stale-snapshot"]


def test_sqlite_doctor(sqlite_url, example_migrations):
    up(sqlite_url, example_migrations)
    assert doctor(sqlite_url, example_migrations).returncode == 0
    path = sqlite_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        conn.execute(f"ALTER TABLE {CATALOG} ADD COLUMN owner TEXT")
    result = doctor(sqlite_url, example_migrations, json=True)
    assert result.returncode == 1
    assert [(f["kind"], f["object"]) for f in result.json()] == [("drift", f"{CATALOG}.owner")]


def test_unreachable_database_exit_5(example_migrations):
    result = doctor("postgresql://postgres:s3cret@127.0.0.1:1/nowhere", example_migrations)
    assert result.returncode == 5, result
    assert "s3cret" not in result.stderr + result.stdout
