"""`migrate` on the example migrations: quickstart, status, verify, down, mark, new, JSON output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from helpers import EXAMPLE_MIGRATIONS, run_migrate
from helpers import history, tables, write_migrations


def test_quickstart_applies_examples_to_embedded_sqlite(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLE_MIGRATIONS, tmp_path / "migrations")
    result = run_migrate("up", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "migrate.db").is_file()
    assert "018_rename_execution_bundle_to_container_image" in result.stdout
    again = run_migrate("up", cwd=tmp_path)
    assert again.returncode == 0 and "nothing to apply" in again.stdout
    import sqlite3

    conn = sqlite3.connect(tmp_path / "migrate.db")
    columns = [r[1] for r in conn.execute("PRAGMA table_info(remediation_workflow_catalog)")]
    assert "container_image" in columns and "execution_bundle" not in columns


def test_status_json_and_global_options_after_command(pg_url: str, example_migrations: Path) -> None:
    first = run_migrate("up", "--to", "017_add_execution_bundle", "--database", pg_url,
                        "--migrations", str(example_migrations), "--format", "json")
    assert first.returncode == 0, first.stderr
    data = json.loads(first.stdout)
    assert data["applied"] == ["001_create_remediation_workflow_catalog", "017_add_execution_bundle"]
    assert len(data["pending_before"]) == 3 and data["duration_s"] >= 0
    before = run_migrate("--format", "json", "status", "--database", pg_url, "--migrations", str(example_migrations))
    after = run_migrate("status", "--format", "json", "--database", pg_url, "--migrations", str(example_migrations))
    assert json.loads(before.stdout) == json.loads(after.stdout)
    status = json.loads(after.stdout)
    assert [a["id"] for a in status["applied"]] == data["applied"]
    assert all(a["applied_at"] for a in status["applied"])
    assert status["pending"] == ["018_rename_execution_bundle_to_container_image"]
    assert status["head"] == "018_rename_execution_bundle_to_container_image"
    assert status["at_head"] is False and status["modified"] == [] and status["missing"] == []


def test_verify_is_the_gate(pg_url: str, example_migrations: Path) -> None:
    args = ("--database", pg_url, "--migrations", str(example_migrations))
    run_migrate("up", "--to", "017_add_execution_bundle", *args)
    behind = run_migrate("verify", *args)
    assert behind.returncode == 1
    assert "018_rename_execution_bundle_to_container_image" in behind.stderr
    assert run_migrate("up", *args).returncode == 0
    ok = run_migrate("verify", *args)
    assert ok.returncode == 0, ok.stderr


def test_dry_run_prints_plan_and_changes_nothing(pg_url: str, example_migrations: Path) -> None:
    result = run_migrate("up", "--dry-run", "--database", pg_url, "--migrations", str(example_migrations))
    assert result.returncode == 0, result.stderr
    assert "CREATE TABLE remediation_workflow_catalog" in result.stdout
    assert "RENAME COLUMN execution_bundle TO container_image" in result.stdout
    assert tables(pg_url) == set()


def test_down_steps_and_to(pg_url: str, example_migrations: Path) -> None:
    args = ("--database", pg_url, "--migrations", str(example_migrations), "--no-compat")
    assert run_migrate("up", *args).returncode == 0
    one = run_migrate("down", "--database", pg_url, "--migrations", str(example_migrations))
    assert one.returncode == 0, one.stderr
    assert history(pg_url) == ["001_create_remediation_workflow_catalog", "017_add_execution_bundle"]
    rest = run_migrate("down", "--to", "001_create_remediation_workflow_catalog", "--database", pg_url,
                       "--migrations", str(example_migrations))
    assert rest.returncode == 0, rest.stderr
    assert history(pg_url) == ["001_create_remediation_workflow_catalog"]
    assert "remediation_workflow_catalog" in tables(pg_url)


def test_mark_and_unmark_baseline_without_running(pg_url: str, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", {"001_a.sql": "CREATE TABLE a (id int);",
                                               "002_b.sql": "CREATE TABLE b (id int);"})
    args = ("--database", pg_url, "--migrations", str(folder))
    assert run_migrate("mark", "001_a", *args).returncode == 0
    assert "a" not in tables(pg_url)
    assert run_migrate("up", *args).returncode == 0
    assert tables(pg_url) >= {"b"} and "a" not in tables(pg_url)
    assert run_migrate("unmark", "002_b", *args).returncode == 0
    assert history(pg_url) == ["001_a"]
    unknown = run_migrate("mark", "999_nope", *args)
    assert unknown.returncode == 2 and "999_nope" in unknown.stderr


def test_new_scaffolds_next_number(tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", {"017_a.sql": "SELECT 1;", "018_b.sql": "SELECT 1;"})
    result = run_migrate("new", "Add Index On Status", "--migrations", str(folder), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (folder / "019_add_index_on_status.sql").is_file()
    goose = run_migrate("new", "x", "--goose", "--migrations", str(folder), cwd=tmp_path)
    assert goose.returncode == 0 and "-- +goose Up" in (folder / "020_x.sql").read_text()


def test_up_json_output_not_corrupted_by_result_rows(pg_url: str, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", {
        "001_select.sql": "CREATE TABLE t (id int);\nINSERT INTO t VALUES (1);\nSELECT id, 'row text' FROM t;",
        "002_print.py": "from yoyo import step\nprint('hello from python')\n"
                        "def go(conn):\n    print('printed during apply')\n"
                        "    cur = conn.cursor(); cur.execute('SELECT 42'); print(cur.fetchone())\n"
                        "step(go)\n",
    })
    result = run_migrate("up", "--format", "json", "--database", pg_url, "--migrations", str(folder))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["applied"] == ["001_select", "002_print"]


def test_order_is_numeric_and_depends_respected(pg_url: str, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", {
        "10_ten.sql": "INSERT INTO log VALUES ('ten');",
        "2_two.sql": "INSERT INTO log VALUES ('two');",
        "1_log.sql": "CREATE TABLE log (name text, at serial);",
    })
    result = run_migrate("up", "--database", pg_url, "--migrations", str(folder))
    assert result.returncode == 0, result.stderr
    import psycopg

    with psycopg.connect(pg_url) as conn:
        assert [r[0] for r in conn.execute("SELECT name FROM log ORDER BY at")] == ["two", "ten"]


def test_help_lists_commands() -> None:
    result = run_migrate("--help")
    assert result.returncode == 0
    for command in ("up", "status", "verify", "down", "new", "mark", "unmark", "rehash"):
        assert f"  {command}" in result.stdout


def test_down_runs_rollback_statements_in_file_order(pg_url: str, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", {
        "001_a.sql": "CREATE TABLE a (id int);",
        "001_a.rollback.sql": "CREATE TABLE a_archive AS SELECT * FROM a;\nDROP TABLE a;",
        "002_b.sql": "-- +goose Up\nCREATE TABLE b (id int);\n"
                     "-- +goose Down\nCREATE TABLE b_archive AS SELECT * FROM b;\nDROP TABLE b;\n",
    })
    for url in (pg_url, f"sqlite:///{tmp_path / 'x.db'}"):
        args = ("--database", url, "--migrations", str(folder))
        assert run_migrate("up", *args).returncode == 0
        result = run_migrate("down", "--steps", "2", *args)
        assert result.returncode == 0, result.stderr
    assert tables(pg_url) >= {"a_archive", "b_archive"} and not {"a", "b"} & tables(pg_url)


def test_one_log_event_per_migration_with_duration_and_outcome(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLE_MIGRATIONS, tmp_path / "migrations")
    secret_url = f"sqlite:///{tmp_path / 'x.db'}"
    result = run_migrate("up", "--log-format", "json", "--database", secret_url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    applied = [e for e in events if e["event"] == "applied"]
    assert [e["migration"] for e in applied] == [
        "001_create_remediation_workflow_catalog", "017_add_execution_bundle",
        "018_rename_execution_bundle_to_container_image"]
    assert all(e["outcome"] == "applied" and e["duration_ms"] >= 0 and e["total"] == 3 for e in applied)
    assert [e["n"] for e in applied] == [1, 2, 3] and all("elapsed_s" in e for e in applied)
    console = run_migrate("down", "--log-format", "console", "--database", secret_url, cwd=tmp_path)
    assert console.returncode == 0 and "rolled back" in console.stderr and not console.stderr.startswith("{")
