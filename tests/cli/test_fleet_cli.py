"""`migrate fleet ...` end to end on real PostgreSQL: databases and tenant schemas, JSON lines,
per-schema locks, waves and stopping, status by lag, the other fleet commands, exit codes."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from helpers import schema_history
from runner.dialects.postgresql import schema_lock_key

HEAD = "018_rename_execution_bundle_to_container_image"
ALL = ["001_create_remediation_workflow_catalog", "017_add_execution_bundle", HEAD]


def lines(stdout: str) -> tuple[dict[str, dict], dict]:
    """The per-target JSON lines by target name, and the summary."""
    found = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    summary = found[-1]["summary"]
    by_target = {item["target"]: item for item in found[:-1]}
    assert len(by_target) == len(found) - 1, "a target was reported twice"
    return by_target, summary


def tenant_args(url: str, ids: list[str], tmp_path: Path) -> list[str]:
    listing = tmp_path / "tenants.txt"
    listing.write_text("\n".join(ids) + "\n", encoding="utf-8")
    return ["--database", url, "--targets-cmd", f"cat {listing}", "--schema-template", "tenant_{id}"]


def test_fleet_file_of_databases_up_is_idempotent(migrate, databases, tmp_path, example_migrations):
    urls = databases(3)
    fleet = tmp_path / "fleet.toml"
    fleet.write_text("".join(f'[targets.db{i}]\nurl = "{u.replace("postgres@", "postgres:s3cret@")}"\n'
                             for i, u in enumerate(urls)), encoding="utf-8")
    args = ["--migrations", str(example_migrations), "--format", "json", "fleet", "up", "--fleet", str(fleet),
            "--parallel", "2"]
    first = migrate(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "s3cret" not in first.stdout + first.stderr
    by_target, summary = lines(first.stdout)
    assert sorted(by_target) == ["db0", "db1", "db2"]
    for item in by_target.values():
        assert item["outcome"] == "ok" and item["applied"] == ALL and item["pending"] == []
        assert ":***@" in item["url"] and item["schema"] is None and item["duration_s"] > 0
        assert item["shims"] and item["shims"][0]["name"].startswith("compat_017.")
    assert summary["succeeded"] == 3 and summary["applied"] == 9 and summary["ok"]
    for url in urls:
        assert schema_history(url, "public") == ALL
    again = migrate(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    by_target, summary = lines(again.stdout)
    assert all(item["applied"] == [] and item["outcome"] == "ok" for item in by_target.values())
    assert summary["applied"] == 0


def test_tenant_schemas_from_a_catalog_query(migrate, pg_url, pg_conn, tmp_path, example_migrations):
    pg_conn.execute("CREATE TABLE tenants (id int)")
    pg_conn.execute("INSERT INTO tenants VALUES (1), (2), (3)")
    result = migrate("--database", pg_url, "--migrations", str(example_migrations), "--format", "json",
                     "fleet", "up", "--targets-sql", "SELECT id FROM tenants ORDER BY id",
                     "--schema-template", "tenant_{id}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    by_target, _ = lines(result.stdout)
    assert sorted(by_target) == ["tenant_1", "tenant_2", "tenant_3"]
    for n in (1, 2, 3):
        schema = f"tenant_{n}"
        assert by_target[schema]["schema"] == schema
        assert schema_history(pg_url, schema) == ALL
        # The tenant's migrations ran with search_path = its schema; its shims are its own.
        assert pg_conn.execute("SELECT to_regclass(%s)", (f"{schema}.remediation_workflow_catalog",)).fetchone()[0]
        assert pg_conn.execute("SELECT to_regclass(%s)",
                               (f"{schema}_compat_017.remediation_workflow_catalog",)).fetchone()[0]
    assert pg_conn.execute("SELECT to_regclass('public.remediation_workflow_catalog')").fetchone()[0] is None
    assert pg_conn.execute("SELECT to_regclass('public._migrate_history')").fetchone()[0] is None


def test_each_tenant_has_its_own_lock(migrate, pg_url, tmp_path, example_migrations):
    """A runner holding tenant_1's lock does not stop tenant_2 in the same database."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with psycopg.connect(pg_url, autocommit=True, application_name="other-runner") as conn:
            conn.execute("SELECT pg_advisory_lock(%s, %s)", schema_lock_key("tenant_1"))
            held.set()
            release.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(10)
        result = migrate("--migrations", str(example_migrations), "--format", "json", "fleet", "up",
                         "--lock-wait", "1s", *tenant_args(pg_url, ["1", "2"], tmp_path), cwd=tmp_path)
    finally:
        release.set()
        holder.join()
    assert result.returncode == 1, result.stderr
    by_target, summary = lines(result.stdout)
    assert by_target["tenant_2"]["outcome"] == "ok" and by_target["tenant_2"]["applied"] == ALL
    locked = by_target["tenant_1"]
    assert locked["outcome"] == "failed" and locked["error_kind"] == "lock" and locked["exit_code"] == 3
    assert "other-runner" in locked["error"] and locked["pending"] == ALL
    assert summary["failing"] == ["tenant_1"]
    assert schema_history(pg_url, "tenant_1") == []


def _poison(url: str, schema: str) -> None:
    """Make 001 fail on ``schema``: its table exists already."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("CREATE TABLE {}.remediation_workflow_catalog (x int)").format(sql.Identifier(schema)))


def test_a_failing_canary_stops_the_rest(migrate, pg_url, tmp_path, example_migrations):
    _poison(pg_url, "tenant_1")
    result = migrate("--migrations", str(example_migrations), "--format", "json", "fleet", "up", "--canary", "1",
                     *tenant_args(pg_url, ["1", "2", "3"], tmp_path), cwd=tmp_path)
    assert result.returncode == 1
    by_target, summary = lines(result.stdout)
    assert by_target["tenant_1"]["error_kind"] == "migration" and by_target["tenant_1"]["exit_code"] == 4
    assert "remediation_workflow_catalog" in by_target["tenant_1"]["error"]
    assert by_target["tenant_1"]["wave"] == "canary"
    for skipped in ("tenant_2", "tenant_3"):
        assert by_target[skipped]["outcome"] == "skipped" and "wave 'canary'" in by_target[skipped]["error"]
        assert schema_history(pg_url, skipped) == []
    assert summary["skipped"] == 2 and "canary" in summary["stopped"]
    # A healthy canary lets the rest run.
    ok = migrate("--migrations", str(example_migrations), "--format", "json", "fleet", "up", "--canary", "1",
                 *tenant_args(pg_url, ["2", "3", "4"], tmp_path), cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout
    assert sorted(lines(ok.stdout)[0]) == ["tenant_2", "tenant_3", "tenant_4"]


@pytest.mark.parametrize("flags, ran", [(["--on-error", "stop"], 1), (["--max-failures", "2"], 3), ([], 5)])
def test_on_error_and_max_failures(migrate, pg_url, tmp_path, example_migrations, flags, ran):
    for n in (1, 3):
        _poison(pg_url, f"tenant_{n}")
    result = migrate("--migrations", str(example_migrations), "--format", "json", "fleet", "up", "--parallel", "1",
                     *flags, *tenant_args(pg_url, ["1", "2", "3", "4", "5"], tmp_path), cwd=tmp_path)
    assert result.returncode == 1
    by_target, summary = lines(result.stdout)
    assert len(by_target) == 5
    started = [t for t, item in by_target.items() if item["outcome"] != "skipped"]
    assert started == [f"tenant_{n}" for n in range(1, ran + 1)]
    assert summary["skipped"] == 5 - ran


def test_status_by_lag_verify_doctor_audit_and_lint(migrate, pg_url, tmp_path, example_migrations):
    args = tenant_args(pg_url, ["1", "2", "3"], tmp_path)
    up = migrate("--migrations", str(example_migrations), "fleet", "up", *args, cwd=tmp_path)
    assert up.returncode == 0, up.stderr
    assert "fleet: 3/3 at head" in up.stdout
    # tenant_2 lags: a new migration applied everywhere but there.
    (example_migrations / "019_add_owner.sql").write_text(
        "ALTER TABLE remediation_workflow_catalog ADD COLUMN owner text;\n", encoding="utf-8")
    for n in ("1", "3"):
        one = migrate("--database", pg_url, "--migrations", str(example_migrations), "up", cwd=tmp_path,
                      env={"MIGRATE_SCHEMA": f"tenant_{n}"})
        assert one.returncode == 0, one.stderr
    status = migrate("--migrations", str(example_migrations), "fleet", "status", *args, cwd=tmp_path)
    assert status.returncode == 1
    rows = [line.split()[0] for line in status.stdout.splitlines()[1:4]]
    assert rows[0] == "tenant_2", status.stdout  # most behind first
    assert "fleet: 2/3 at head" in status.stdout
    as_json = migrate("--migrations", str(example_migrations), "--format", "json", "fleet", "status", *args,
                      cwd=tmp_path)
    by_target, _ = lines(as_json.stdout)
    assert by_target["tenant_2"]["pending"] == ["019_add_owner"]
    assert by_target["tenant_2"]["head_applied"] == HEAD and by_target["tenant_2"]["since"]
    assert by_target["tenant_1"]["outcome"] == "ok"
    verify = migrate("--migrations", str(example_migrations), "--format", "json", "fleet", "verify", *args,
                     cwd=tmp_path)
    assert verify.returncode == 1
    assert lines(verify.stdout)[1]["failing"] == ["tenant_2"]
    doctor = migrate("--migrations", str(example_migrations), "--format", "json", "fleet", "doctor", *args,
                     cwd=tmp_path)
    assert lines(doctor.stdout)[1]["failing"] == ["tenant_2"], doctor.stdout
    lint = migrate("--migrations", str(example_migrations), "--format", "json", "fleet", "lint", *args, cwd=tmp_path)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert lines(lint.stdout)[0]["tenant_2"]["linted"] == ["019_add_owner"]
    # tenant_3's shim has expired: the audit names it, and only there.
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE tenant_3._migrate_shims SET expires_at = now() - interval '1 day'")
        conn.execute("UPDATE tenant_1._migrate_shims SET expires_at = now() + interval '2 days'")
    audit = migrate("--migrations", str(example_migrations), "fleet", "shims", "audit", *args, cwd=tmp_path)
    assert audit.returncode == 1
    assert "EXPIRED   tenant_3  tenant_3_compat_017" in audit.stdout
    assert "expiring  tenant_1  tenant_1_compat_017" in audit.stdout
    assert "tenant_2  " not in audit.stdout.split("fleet:")[0]


def test_unreachable_target_and_usage_errors(migrate, tmp_path, example_migrations):
    fleet = tmp_path / "fleet.toml"
    fleet.write_text('[targets.gone]\nurl = "postgresql://u:hunter2@127.0.0.1:1/db"\n', encoding="utf-8")
    result = migrate("--migrations", str(example_migrations), "--format", "json", "fleet", "up", "--fleet",
                     str(fleet), cwd=tmp_path)
    assert result.returncode == 1
    item = lines(result.stdout)[0]["gone"]
    assert item["error_kind"] == "unreachable" and item["exit_code"] == 5
    assert "hunter2" not in result.stdout + result.stderr
    for args, message in [
        ([], "give exactly one of --fleet FILE, --targets-sql QUERY, --targets-cmd COMMAND"),
        (["--fleet", str(fleet), "--targets-cmd", "true"], "(got --fleet, --targets-cmd)"),
        (["--fleet", str(tmp_path / "nope.toml")], "fleet file not found"),
        (["--fleet", str(fleet), "--parallel", "0"], "--parallel: expected a number >= 1"),
        (["--targets-cmd", "echo 1", "--schema-template", "t_{x}"], "--schema-template: schema template"),
        (["--fleet", str(fleet), "--shard-count", "2", "--shard-index", "2"], "--shard-index: shard index 2"),
    ]:
        bad = migrate("--migrations", str(example_migrations), "fleet", "up", *args, cwd=tmp_path)
        assert bad.returncode == 2, (args, bad.stderr)
        assert bad.stderr.strip().splitlines()[-1].startswith("migrate: error: ") and message in bad.stderr
        assert "Traceback" not in bad.stderr
