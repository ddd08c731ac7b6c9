"""Status of several environments at once: `migrate status --database A --database B`, `migrate envs`."""

from __future__ import annotations

from pathlib import Path

from helpers import migrate_json_logs as migrate, sql

UNREACHABLE = "postgresql://postgres:hunter2@127.0.0.1:1/nowhere"


def up(url: str, folder: Path, *extra: str) -> None:
    result = migrate("up", "--format", "json", "--database", url, "--migrations", str(folder), *extra)
    assert result.returncode == 0, result


def test_one_row_per_environment_unreachable_is_reported_not_fatal(pg_url, sqlite_url, example_migrations,
                                                                   tmp_path):
    up(pg_url, example_migrations, "--to", "017_add_execution_bundle")
    up(sqlite_url, example_migrations)
    result = migrate("status", "--database", pg_url, "--database", sqlite_url, "--database", UNREACHABLE,
                     "--migrations", str(example_migrations), "--format", "json")
    assert result.returncode == 5, result  # one environment unreachable; the others are still reported
    rows = result.json()["environments"]
    assert [r["reachable"] for r in rows] == [True, True, False]
    pg, lite, down = rows
    assert pg["head_applied"] == "017_add_execution_bundle" and pg["pending"] == 1
    assert pg["pending_ids"] == ["018_rename_execution_bundle_to_container_image"] and not pg["healthy"]
    assert lite["head_applied"] == "018_rename_execution_bundle_to_container_image" and lite["pending"] == 0
    assert lite["healthy"] and lite["drift"] == [] and lite["expired_shims"] == []
    assert "cannot connect" in down["error"]
    assert "hunter2" not in result.stdout + result.stderr


def test_text_table_with_drift_expired_shims_and_lock(pg_url, example_migrations, tmp_path):
    import psycopg

    from runner.db import connect
    from runner.dialects.postgresql import DIALECT as POSTGRESQL

    up(pg_url, example_migrations)
    sql(pg_url, "ALTER TABLE remediation_workflow_catalog ADD COLUMN owner text",
        "UPDATE _migrate_shims SET expires_at = now() - interval '1 hour'")
    (tmp_path / "migrate.toml").write_text(
        f'migrations = "{example_migrations}"\n[environments]\nstaging = "{pg_url}"\nlegacy = "{UNREACHABLE}"\n',
        encoding="utf-8")
    with connect(pg_url) as db:
        key = POSTGRESQL.lock_key(db)
    with psycopg.connect(pg_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s, %s)", key)
        result = migrate("envs", cwd=tmp_path)
        pid = holder.info.backend_pid
    assert result.returncode == 5, result
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["ENVIRONMENT", "HEAD", "APPLIED", "PENDING", "DRIFT", "EXPIRED", "SHIMS", "LOCK",
                                "STATE"]
    staging = next(line for line in lines if line.startswith("staging"))
    assert "018_rename_execution_bundle_to_container_image" in staging
    assert " 1 " in staging  # one drift item
    assert "compat_017.remediation_workflow_catalog" in staging
    assert f"pid {pid}" in staging and "needs attention" in staging
    legacy = next(line for line in lines if line.startswith("legacy"))
    assert "UNREACHABLE" in legacy and "hunter2" not in legacy
    # Named environments, one at a time; all healthy -> exit 0.
    sql(pg_url, "ALTER TABLE remediation_workflow_catalog DROP COLUMN owner",
        "UPDATE _migrate_shims SET expires_at = now() + interval '1 day'")
    one = migrate("envs", "staging", "--format", "json", cwd=tmp_path)
    assert one.returncode == 0, one
    assert [r["name"] for r in one.json()["environments"]] == ["staging"]
    assert one.json()["environments"][0]["healthy"]


def test_unknown_environment_name_is_a_usage_error(tmp_path, example_migrations):
    (tmp_path / "migrate.toml").write_text('[environments]\nstaging = "sqlite:///s.db"\n', encoding="utf-8")
    result = migrate("envs", "prod", cwd=tmp_path)
    assert result.returncode == 2
    assert "unknown environment 'prod' (configured: staging; or give a database URL)" in result.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    none = migrate("envs", cwd=empty)
    assert none.returncode == 2 and "no [environments]" in none.stderr


def test_never_migrated_environment(pg_url, example_migrations):
    result = migrate("status", "--database", pg_url, "--database", pg_url, "--migrations", str(example_migrations))
    assert result.returncode == 0, result
    assert result.stdout.count("NOT MANAGED") == 2
