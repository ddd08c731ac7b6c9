"""Issue 13 part 3: machine-readable results, also when things fail.

With ``--format json`` every command prints one document on stdout on failure too (``ok`` false,
``error`` with kind, message, file, line, exit code; for `up` what was applied, what failed, what
is pending); with ``--log-format json`` every stderr line is a JSON event, the last one the error.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from helpers import ROOT, Result, run_migrate
from helpers import hold_table, history, write_migrations

UNREACHABLE = "postgresql://postgres@127.0.0.1:1/nowhere"


def _document(result, code: int, kind: str) -> dict:
    assert result.returncode == code, result.stderr
    doc = json.loads(result.stdout)
    assert doc["ok"] is False
    assert doc["error"]["kind"] == kind
    assert doc["error"]["exit_code"] == code
    assert doc["error"]["message"] and "Traceback" not in result.stderr
    assert set(doc["error"]) == {"kind", "message", "file", "line", "exit_code"}
    return doc


def _json_lines(stderr: str) -> list[dict]:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines
    return [json.loads(line) for line in lines]  # every line is a JSON event


def test_up_migration_failure_says_what_was_applied_failed_and_pending(pg_url: str, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", {
        "010_one.sql": "CREATE TABLE one (id int);",
        "011_two.sql": "CREATE TABLE two (id int);",
        "012_bad.sql": "CREATE TABLE three (id int);\nINSERT INTO nowhere VALUES (1);\n",
        "013_four.sql": "CREATE TABLE four (id int);",
    })
    result = run_migrate("up", "--format", "json", "--log-format", "json", "--database", pg_url,
                         "--migrations", str(folder))
    doc = _document(result, 4, "migration_failed")
    assert doc["command"] == "up"
    assert doc["error"]["file"] == str(folder / "012_bad.sql") and doc["error"]["line"] == 2
    assert "nowhere" in doc["error"]["message"]
    assert doc["applied"] == ["010_one", "011_two"]
    assert doc["failed"]["id"] == "012_bad" and doc["failed"]["line"] == 2
    assert doc["pending"] == ["013_four"]
    assert doc["unconfirmed"] == []
    assert history(pg_url) == ["010_one", "011_two"]
    events = _json_lines(result.stderr)
    failed = [e for e in events if e["event"] == "failed"]
    assert len(failed) == 1
    assert failed[0]["migration"] == "012_bad" and failed[0]["line"] == 2
    assert failed[0]["file"] == str(folder / "012_bad.sql") and "nowhere" in failed[0]["error"]
    assert events[-1]["event"] == "error" and events[-1]["exit_code"] == 4 and events[-1]["line"] == 2


def test_up_lock_timeout_names_the_statement_and_keeps_what_was_applied(pg_url: str, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", {"001_accounts.sql": "CREATE TABLE accounts (id int);"})
    assert run_migrate("up", "--database", pg_url, "--migrations", str(folder)).returncode == 0
    write_migrations(folder, {"002_side.sql": "CREATE TABLE side (id int);",
                              "003_alter.sql": "CREATE TABLE other (id int);\nALTER TABLE accounts ADD note text;",
                              "004_after.sql": "CREATE TABLE after (id int);"})
    (tmp_path / "migrate.toml").write_text("lock_retries = 0\n")
    ready, release = threading.Event(), threading.Event()
    thread = threading.Thread(target=hold_table, args=(pg_url, "accounts", ready, release))
    thread.start()
    try:
        assert ready.wait(10)
        result = run_migrate("up", "--format", "json", "--lock-timeout", "200ms", "--database", pg_url,
                             "--migrations", str(folder), cwd=tmp_path)
    finally:
        release.set()
        thread.join()
    doc = _document(result, 3, "lock_timeout")
    assert doc["error"]["file"] == str(folder / "003_alter.sql") and doc["error"]["line"] == 2
    assert doc["applied"] == ["002_side"]
    assert doc["failed"]["id"] == "003_alter"
    assert doc["pending"] == ["004_after"]


def test_up_losing_the_connection_leaves_the_migrations_in_doubt_unconfirmed(pg_url: str, tmp_path: Path) -> None:
    """A migration whose connection is lost may have committed: it is neither applied nor failed."""
    folder = write_migrations(tmp_path / "m", {"001_one.sql": "CREATE TABLE one (id int);",
                                               "002_slow.sql": "SELECT pg_sleep(60);",
                                               "003_three.sql": "CREATE TABLE three (id int);"})
    proc = subprocess.Popen([sys.executable, "-m", "runner", "up", "--format", "json", "--database", pg_url,
                             "--migrations", str(folder)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    with psycopg.connect(pg_url, autocommit=True) as admin:
        killed = False
        deadline = time.monotonic() + 60
        while not killed and time.monotonic() < deadline and proc.poll() is None:
            killed = admin.execute("SELECT bool_or(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = current_database() AND query "
                                   "LIKE '%%pg_sleep(60)%%' AND pid <> pg_backend_pid()").fetchone()[0] or False
            time.sleep(0.1)
    out, err = proc.communicate(timeout=60)
    assert killed, err
    doc = _document(Result([], proc.returncode, out, err), 5, "unreachable")
    assert doc["error"]["file"] == str(folder / "002_slow.sql")
    assert doc["failed"] is None
    assert doc["pending"] == ["003_three"]
    assert sorted(doc["applied"] + doc["unconfirmed"]) == ["001_one", "002_slow"]
    assert "002_slow" in doc["unconfirmed"]
    assert history(pg_url) in (["001_one"], [])  # 002 was killed mid-statement


def test_up_runner_lock_timeout(pg_url: str, tmp_path: Path) -> None:
    from runner.db import connect
    from runner.dialects.postgresql import DIALECT as POSTGRESQL

    folder = write_migrations(tmp_path / "m", {"001_one.sql": "CREATE TABLE one (id int);"})
    with connect(pg_url) as db:
        classid, objid = POSTGRESQL.lock_key(db)
    with psycopg.connect(pg_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s, %s)", (classid, objid))
        result = run_migrate("up", "--format", "json", "--lock-wait", "300ms", "--database", pg_url,
                             "--migrations", str(folder))
    doc = _document(result, 3, "lock_timeout")
    assert doc["applied"] == [] and doc["failed"] is None


def test_up_drift_is_refused_with_a_document(pg_url: str, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", {"001_one.sql": "CREATE TABLE one (id int);"})
    assert run_migrate("up", "--database", pg_url, "--migrations", str(folder)).returncode == 0
    write_migrations(folder, {"001_one.sql": "CREATE TABLE one (id bigint);", "002_two.sql": "SELECT 1;"})
    doc = _document(run_migrate("up", "--format", "json", "--database", pg_url, "--migrations", str(folder)),
                    1, "drift")
    assert "001_one" in doc["error"]["message"]
    assert doc["applied"] == [] and doc["pending"] == []


def test_a_config_error_gives_a_document_and_a_json_event(tmp_path: Path) -> None:
    (tmp_path / "migrate.toml").write_text("lock_timeout = 'soon'\n")
    result = run_migrate("status", "--format", "json", cwd=tmp_path, env={"MIGRATE_LOG_FORMAT": "json"})
    doc = _document(result, 2, "config")
    assert doc["command"] == "status" and "soon" in doc["error"]["message"]
    events = _json_lines(result.stderr)
    assert events[-1]["event"] == "error" and events[-1]["kind"] == "config"


def test_a_bad_command_line_gives_a_document(tmp_path: Path) -> None:
    result = run_migrate("up", "--no-such-option", "--format", "json", cwd=tmp_path)
    doc = _document(result, 2, "usage")
    assert "--no-such-option" in doc["error"]["message"]


def test_format_json_from_the_environment(tmp_path: Path) -> None:
    write_migrations(tmp_path / "migrations", {"001_one.sql": "CREATE TABLE one (id int);"})
    result = run_migrate("status", "--database", UNREACHABLE, cwd=tmp_path, env={"MIGRATE_FORMAT": "json"})
    _document(result, 5, "unreachable")


@pytest.mark.parametrize("args", [
    ["up"], ["up", "--dry-run"], ["status"], ["verify"], ["down"], ["mark", "001_one"], ["unmark", "001_one"],
    ["rehash", "001_one"], ["doctor"], ["snapshot"], ["adopt", "yoyo"], ["lint"], ["shims", "list"],
    ["shims", "audit"], ["shims", "drop", "x"], ["shims", "extend", "x", "--by", "1d", "--reason", "r"],
], ids=lambda a: "-".join(a))
def test_every_command_prints_a_document_when_the_database_is_unreachable(tmp_path: Path, args: list[str]) -> None:
    write_migrations(tmp_path / "migrations", {"001_one.sql": "CREATE TABLE one (id int);"})
    result = run_migrate(*args, "--format", "json", "--database", UNREACHABLE, cwd=tmp_path)
    doc = _document(result, 5, "unreachable")
    assert doc["command"] == args[0] and "127.0.0.1:1" in doc["error"]["message"]


@pytest.mark.parametrize("args,kind", [
    (["new", "!!!"], "usage"),
    (["mark", "999_nope"], "usage"),
    (["down", "--to", "999_nope"], "usage"),
    (["envs"], "usage"),
], ids=lambda a: "-".join(a) if isinstance(a, list) else a)
def test_usage_errors_of_other_commands(tmp_path: Path, sqlite_url: str, args: list[str], kind: str) -> None:
    write_migrations(tmp_path / "migrations", {"001_one.sql": "CREATE TABLE one (id int);"})
    result = run_migrate(*args, "--format", "json", "--database", sqlite_url, cwd=tmp_path)
    _document(result, 2, kind)


def test_a_migration_file_error_names_file_and_line(tmp_path: Path, sqlite_url: str) -> None:
    write_migrations(tmp_path / "migrations", {"001_one.sql": "-- compat: rename nonsense\nSELECT 1;\n"})
    result = run_migrate("up", "--format", "json", "--database", sqlite_url, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    doc = json.loads(result.stdout)
    assert doc["error"]["file"] and doc["error"]["file"].endswith("001_one.sql")


def test_verify_problems_are_json_events_and_the_document_says_why(tmp_path: Path, sqlite_url: str) -> None:
    write_migrations(tmp_path / "migrations", {"001_one.sql": "CREATE TABLE one (id int);"})
    assert run_migrate("up", "--database", sqlite_url, "--to", "001_one", cwd=tmp_path).returncode == 0
    write_migrations(tmp_path / "migrations", {"002_two.sql": "CREATE TABLE two (id int);"})
    result = run_migrate("verify", "--format", "json", "--log-format", "json", "--database", sqlite_url,
                         cwd=tmp_path)
    assert result.returncode == 1
    doc = json.loads(result.stdout)
    assert doc["ok"] is False and doc["pending"] == ["002_two"]
    events = _json_lines(result.stderr)
    assert [e["problem"] for e in events if e["event"] == "problem"] == ["002_two: pending: run `migrate up`"]


def test_with_automatic_log_format_the_error_stays_a_line(tmp_path: Path) -> None:
    """`auto` (JSON lines when stderr is no terminal) keeps the final error a line a person reads;
    only an explicit --log-format json makes it an event."""
    write_migrations(tmp_path / "migrations", {"001_one.sql": "CREATE TABLE one (id int);"})
    result = run_migrate("status", "--database", UNREACHABLE, cwd=tmp_path)
    assert result.returncode == 5
    assert result.stderr.strip().splitlines()[-1].startswith("migrate: error: ")
