"""A long transaction holds a lock on the table a migration alters.

`migrate up --lock-timeout 200ms` must wait at most its lock_timeout per try,
retry with backoff (lock_retries), then fail with exit 3 naming the blocker
(pid, application_name), leaving nothing applied. Meanwhile another client's
queries on that table are never blocked longer than the lock_timeout (the
ALTER's queued AccessExclusive request makes them wait behind it, so the
bound is what protects the application). Measured, with a margin.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

import pytest

from helpers import GATE_WAIT, make_gate, open_gate
from reliability import harness
from reliability.harness import FIGURES, LatencyProbe, Spawned, db_args, run

LOCK_TIMEOUT = 0.2
MARGIN = 0.25  # scheduling, two cores shared with the runner's own start-up


def _setup(target, folder: Path, retries: int | None, tmp_path: Path) -> list[str]:
    harness.write(folder, {"001_busy.sql": "CREATE TABLE busy (id int PRIMARY KEY, v text);\n"
                                           "INSERT INTO busy SELECT g, 'v' || g FROM generate_series(1, 1000) g;\n"})
    first = run(*db_args(target.url, folder, "up", "--no-compat"))
    assert first.returncode == 0, first.describe()
    harness.write(folder, {"002_alter_busy.sql": "ALTER TABLE busy ADD COLUMN extra int;\n"})
    config = tmp_path / "migrate.toml"
    config.write_text("" if retries is None else f"lock_retries = {retries}\n", encoding="utf-8")
    return ["--config", str(config)]


def _retry_events(stderr: str) -> list[dict]:
    events = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("event") == "lock timeout, retrying":
                events.append(event)
    return events


def _per_try_waits(events: list[dict]) -> list[float]:
    """Time each try waited for the lock: gap between retry events minus the announced pause."""
    stamps = [datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")) for e in events]
    waits = []
    for i in range(1, len(stamps)):
        waits.append((stamps[i] - stamps[i - 1]).total_seconds() - events[i - 1]["retry_in_s"])
    return waits


def _hold_lock(target, application_name: str):
    conn = harness.connect(target.admin)
    conn.execute(f"SET application_name = '{application_name}'")
    conn.execute("BEGIN")
    conn.execute("SELECT count(*) FROM busy").fetchone()  # AccessShareLock until COMMIT
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    return conn, pid


def test_lock_timeout_retries_then_names_the_blocker(target, folder, tmp_path):
    retries = 3
    config = _setup(target, folder, retries, tmp_path)
    blocker, blocker_pid = _hold_lock(target, "rel-blocker")
    probe = LatencyProbe(target.admin, "SELECT count(*) FROM busy", "rel-probe")
    try:
        probe.start()
        time.sleep(0.2)
        result = run(*db_args(target.url, folder, "up", "--no-compat", "--lock-timeout", "200ms", *config))
    finally:
        blocker.close()  # rolls back
        probe.stop()
    line = harness.assert_one_line_error(result, 3, str(blocker_pid), "rel-blocker", "002_alter_busy")
    assert "lock_timeout" in line, line
    events = _retry_events(result.stderr)
    assert len(events) == retries, result.describe()
    assert [e["attempt"] for e in events] == list(range(1, retries + 1))
    # Backoff grows (0.5, 1, 2 s, jittered +-25%).
    pauses = [e["retry_in_s"] for e in events]
    assert all(0.5 * 2 ** i * 0.7 <= p <= 0.5 * 2 ** i * 1.3 for i, p in enumerate(pauses)), pauses
    waits = _per_try_waits(events)
    assert all(w <= LOCK_TIMEOUT + MARGIN for w in waits), waits
    assert result.seconds >= (retries + 1) * LOCK_TIMEOUT + sum(pauses) - 0.05, result.seconds
    # The other client: never blocked longer than lock_timeout, and it did meet the queued ALTER.
    assert not probe.errors, probe.errors[:3]
    assert len(probe.latencies) > 50
    worst = max(probe.latencies)
    assert worst <= LOCK_TIMEOUT + MARGIN, f"a query on the table waited {worst:.3f}s"
    assert worst >= LOCK_TIMEOUT * 0.5, f"the probe never waited behind the ALTER ({worst:.3f}s): not measuring"
    # Nothing applied.
    with target.admin_conn() as conn:
        assert harness.history_ids(conn) == ["001_busy"]
        assert harness.log_counts(conn).get("002_alter_busy", 0) == 0
        cols = [r[0] for r in conn.execute("SELECT attname FROM pg_attribute WHERE attrelid = 'busy'::regclass "
                                           "AND attnum > 0 AND NOT attisdropped")]
        assert "extra" not in cols
    FIGURES.add("lock_wait", injected=1, survived=1, tries=retries + 1, half_applied=0)
    FIGURES.maximum("lock_wait_worst_ms", "probe", round(worst * 1000))


def _alter_waits(target) -> set:
    """query_start of each try of 002's ALTER seen waiting on a lock (one value per try)."""
    return {row[0] for row in harness.rows(
        target.admin, "SELECT query_start FROM pg_catalog.pg_stat_activity WHERE datname = %s"
        " AND wait_event_type = 'Lock' AND query LIKE '%%ALTER TABLE busy%%'", (target.name,))}


def test_lock_released_during_retries_then_applies(target, folder, tmp_path):
    """The blocker goes away after the runner's first retry (seen by the server, not by a timer): it applies."""
    config = _setup(target, folder, 4, tmp_path)
    blocker, _ = _hold_lock(target, "rel-blocker")
    probe = LatencyProbe(target.admin, "SELECT count(*) FROM busy", "rel-probe")
    probe.start()
    tries: set = set()
    try:
        runner = Spawned(*db_args(target.url, folder, "up", "--no-compat", "--lock-timeout", "200ms", *config))

        def second_try() -> bool:
            tries.update(_alter_waits(target))
            return len(tries) >= 2 or not runner.alive()

        harness.wait_until(second_try, timeout=30, interval=0.02, what="the ALTER waiting on its second try")
        blocker.execute("ROLLBACK")
        result = runner.wait()
    finally:
        blocker.close()
        probe.stop()
    assert result.returncode == 0, result.describe()
    assert len(tries) >= 2, tries
    assert 1 <= len(_retry_events(result.stderr)) < 4, result.describe()
    worst = max(probe.latencies)
    assert worst <= LOCK_TIMEOUT + MARGIN, f"a query on the table waited {worst:.3f}s"
    FIGURES.maximum("lock_wait_worst_ms", "probe", round(worst * 1000))
    with target.admin_conn() as conn:
        assert harness.history_ids(conn) == ["001_busy", "002_alter_busy"]
    FIGURES.add("lock_wait", injected=1, survived=1, half_applied=0)


def test_concurrent_runner_waits_for_the_lock_bounded_by_lock_wait(target, folder, tmp_path):
    """A second runner while the first holds the advisory lock: --lock-wait bounds it (exit 3, names the holder)."""
    harness.write(folder, {"001_slow.sql": GATE_WAIT + "CREATE TABLE slow_done (id int);\n"})
    make_gate(target.admin, target.role)
    first = Spawned(*db_args(target.url, folder, "up", "--no-compat"))
    harness.wait_until(lambda: harness.runner_backend(target.admin, target.name,
                                                      "query LIKE '%%pg_sleep%%' AND state = 'active'"),
                       timeout=30, what="first runner in its migration")
    second = run(*db_args(target.url, folder, "up", "--no-compat", "--lock-wait", "500ms"))
    harness.assert_one_line_error(second, 3, "migrate")
    assert first.alive(), "the second runner waited for the first to finish instead of --lock-wait"
    open_gate(target.admin)
    assert first.wait().returncode == 0, first.result.describe()
    FIGURES.add("lock_wait", injected=1, survived=1, half_applied=0)


@pytest.mark.slow
def test_default_lock_retries_is_five(target, folder, tmp_path):
    """Long variant: without config, 5 retries (0.5 + 1 + 2 + 4 + 8 s of backoff)."""
    config = _setup(target, folder, None, tmp_path)
    blocker, blocker_pid = _hold_lock(target, "rel-blocker")
    probe = LatencyProbe(target.admin, "SELECT count(*) FROM busy", "rel-probe")
    try:
        probe.start()
        result = run(*db_args(target.url, folder, "up", "--no-compat", "--lock-timeout", "200ms", *config))
    finally:
        blocker.close()  # rolls back
        probe.stop()
    harness.assert_one_line_error(result, 3, str(blocker_pid), "rel-blocker")
    assert len(_retry_events(result.stderr)) == 5
    assert max(probe.latencies) <= LOCK_TIMEOUT + MARGIN
    FIGURES.add("lock_wait", injected=1, survived=1, tries=6, half_applied=0)
