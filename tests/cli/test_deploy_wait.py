"""`migrate wait` and `up --wait` against a private PostgreSQL cluster started after the command.

The cluster is the suite's throwaway one (helpers.new_private_cluster: initdb + pg_ctl of
PostgreSQL 15 as the ``postgres`` OS user, in a temporary directory, on a free port), so those
tests are marked ``private_cluster``. The first progress line on stderr is read before the server
(or the database) is made, so the command is known to have been waiting: no sleeps, no timed
assertions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from helpers import ADMIN_URL, ROOT, PrivateCluster, admin_connect, free_port, new_private_cluster, run_migrate
from helpers import history, with_database as _with_database

PASSWORD = "s3cret-wait"


def with_password(url: str) -> str:
    return url.replace("postgresql://postgres@", f"postgresql://postgres:{PASSWORD}@", 1)


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivateCluster]:
    """A cluster of this module's own (not started: the tests start it after the command), since they
    leave it stopped and put standby copies next to it."""
    with new_private_cluster(start=False) as made:
        yield made


def start_migrate(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    full_env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "MIGRATE_MIGRATIONS", "MIGRATE_CONFIG")}
    full_env.update(env or {}, MIGRATE_LOG_FORMAT="json")
    return subprocess.Popen([sys.executable, "-m", "runner", *args], cwd=ROOT, env=full_env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def first_event(proc: subprocess.Popen[str]) -> dict:
    """The first JSON log line the command writes (blocks until it is written)."""
    line = proc.stderr.readline()
    assert line, f"the command ended without logging (exit {proc.wait()})"
    return json.loads(line)


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


@pytest.mark.private_cluster
def test_wait_until_a_server_started_later_accepts_connections(cluster: PrivateCluster) -> None:
    if cluster.running():
        cluster.stop()
    proc = start_migrate("wait", "--timeout", "60s", "--format", "json", "--database",
                         with_password(cluster.admin_url()))
    try:
        event = first_event(proc)
        assert event["event"] == "waiting for the database"
        assert f"127.0.0.1:{cluster.port}" in event["database"] and PASSWORD not in event["database"]
        cluster.start()
        code, out, err = finish(proc)
    finally:
        proc.kill()
    assert code == 0, err
    assert json.loads(out)["ready"] is True and json.loads(out)["attempts"] > 1
    assert any(json.loads(line)["event"] == "database ready" for line in err.splitlines())
    assert PASSWORD not in out + err + json.dumps(event)


def test_up_wait_until_the_database_is_created(example_migrations) -> None:
    name = f"migrate_test_{uuid.uuid4().hex[:12]}"
    url = _with_database(ADMIN_URL, name)
    proc = start_migrate("up", "--wait", "60s", "--database", url, "--migrations", str(example_migrations))
    try:
        event = first_event(proc)
        assert event["event"] == "waiting for the database"
        assert "does not exist" in event["reason"]
        with admin_connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        code, out, err = finish(proc)
        assert code == 0, err
        assert "applied" in out
        assert history(url), "up --wait applied nothing"
    finally:
        proc.kill()
        with admin_connect() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.mark.private_cluster
def test_a_standby_is_waited_for_until_promoted(cluster: PrivateCluster) -> None:
    if cluster.running():
        cluster.stop()
    standby = cluster.standby_copy()
    standby.start()
    with psycopg.connect(standby.admin_url(), autocommit=True) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
    proc = start_migrate("wait", "--timeout", "60s", "--database", standby.admin_url())
    try:
        event = first_event(proc)
        assert "in recovery" in event["reason"]
        standby.promote()
        code, _, err = finish(proc)
    finally:
        proc.kill()
        standby.stop()
    assert code == 0, err


def test_timeout_exits_5_with_one_clear_line() -> None:
    port = free_port()  # nothing listens there
    result = run_migrate("wait", "--timeout", "1s",
                         "--database", f"postgresql://postgres:{PASSWORD}@127.0.0.1:{port}/postgres",
                         env={"MIGRATE_LOG_FORMAT": "json"})
    assert result.returncode == 5
    assert result.stdout == ""
    errors = result.error_lines  # with JSON logs the final error is an `error` event
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("migrate: error: database postgresql://postgres:***@127.0.0.1:")
    assert f":{port}/postgres not ready after 1s" in errors[0]
    assert PASSWORD not in result.stderr


def test_up_wait_times_out_with_exit_5_and_applies_nothing(example_migrations) -> None:
    port = free_port()
    result = run_migrate("up", "--wait", "1s", "--database", f"postgresql://postgres@127.0.0.1:{port}/postgres",
                         "--migrations", str(example_migrations))
    assert result.returncode == 5, result.stderr
    assert "not ready after 1s" in result.stderr


def test_bad_timeout_is_a_usage_error() -> None:
    result = run_migrate("wait", "--timeout", "soon", "--database", "sqlite:///never.db")
    assert result.returncode == 2
    assert result.stderr.strip() == "migrate: error: --timeout: expected a duration like 500ms, 5s, 36h or 14d, got 'soon'"


def test_sqlite_wait_never_creates_the_file(tmp_path) -> None:
    path = tmp_path / "app.db"
    result = run_migrate("wait", "--timeout", "500ms", "--database", f"sqlite:///{path}")
    assert result.returncode == 5
    assert "no database file" in result.stderr
    assert not path.exists()
    ok = run_migrate("up", "--wait", "5s", "--database", f"sqlite:///{path}", "--migrations",
                     str(ROOT / "migrations"))
    assert ok.returncode == 0, ok.stderr
    assert run_migrate("wait", "--database", f"sqlite:///{path}").returncode == 0


def test_backoff_is_capped_and_progress_is_logged_every_few_seconds() -> None:
    """The library function against a port where nothing listens (real refused connections), with
    a simulated clock: the sleeps double from 0.25 s up to the 2 s cap, a progress event comes at
    the first failure and then every 5 simulated seconds, and the timeout raises exit 5."""
    from datetime import timedelta

    import structlog

    from runner.errors import DatabaseUnreachable
    from runner.waiting import wait_for_database

    now = [0.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{free_port()}/postgres"
    with structlog.testing.capture_logs() as events, pytest.raises(DatabaseUnreachable) as raised:
        wait_for_database(url, timeout=timedelta(seconds=20), clock=lambda: now[0], sleep=sleep)
    assert raised.value.exit_code == 5
    assert sleeps[:5] == [0.25, 0.5, 1.0, 2.0, 2.0] and max(sleeps) == 2.0
    assert abs(sum(sleeps) - 20.0) < 1e-9  # the last sleep ends at the deadline, not past it
    progress = [e["waited_s"] for e in events if e["event"] == "waiting for the database"]
    assert progress[0] == 0.0 and len(progress) == 4  # at 0 s, then every 5 s: 5.75, 11.75, 17.75
    assert all(b - a >= 5 for a, b in zip(progress, progress[1:]))
    assert PASSWORD not in str(raised.value) + repr(events)
