"""The connection lost under the runner: pg_terminate_backend, and a PostgreSQL restart.

Expected every time: exit 5 with one clear line on stderr (no traceback, no
password), nothing half-applied, and the next `migrate up` completes.
The restart scenario uses a private throwaway cluster (the shared server is
never restarted): see the ``private_cluster`` fixture.
"""

from __future__ import annotations

import random
import time

import pytest

from reliability import harness, sets
from reliability.harness import FIGURES, Spawned, db_args, run

RANDOM_TERMINATES = harness.scaled(8, 60)


def _compat_args() -> list[str]:
    return [] if harness.compat_ready() else ["--no-compat"]


def _terminate(admin: str, pid: int) -> bool:
    return bool(harness.one(admin, "SELECT pg_terminate_backend(%s)", (pid,)))


def _wait_in_sleep(target) -> int:
    found = harness.wait_until(
        lambda: harness.runner_backend(target.admin, target.name, "query LIKE '%%pg_sleep%%' AND state = 'active'"),
        timeout=30, what="the runner inside a slow statement")
    return found[0]


def _lost_connection_error(result, ids: list[str], k: int) -> None:
    """Exit 5 with one line naming the first migration not applied, ``ids[k]``: the one that was
    running, or, after a crash, a migration in the range the line gives of those that had
    committed without being confirmed on disk yet (everything before that range is applied)."""
    line = harness.assert_one_line_error(result, 5)
    assert "connection" in line.lower(), line
    assert "migrate up" in line, f"the message should say what to do next: {line}"
    named = [n for n, i in enumerate(ids) if i in line]
    assert named and min(named) <= k <= max(named), (k, ids[k], line)


def test_terminated_mid_migration_exits_5_and_rerun_completes(target, folder):
    ids = sets.write_kill_set(folder)
    shims = harness.compat_ready()
    args = db_args(target.url, folder, "up", *_compat_args())
    proc = Spawned(*args)
    pid = _wait_in_sleep(target)
    assert _terminate(target.admin, pid)
    result = proc.wait(timeout=30)
    with target.admin_conn() as conn:
        k = sets.check_prefix(conn, ids, shims)
    assert 0 < k < len(ids)
    _lost_connection_error(result, ids, k)
    assert harness.advisory_locks(target.admin, target.name) == []
    again = run(*args)
    assert again.returncode == 0, again.describe()
    with target.admin_conn() as conn:
        assert sets.check_prefix(conn, ids, shims) == len(ids)
    FIGURES.add("terminate_backend", injected=1, survived=1, half_applied=0)


def test_terminated_at_random_moments(target, folder):
    """pg_terminate_backend at random moments of the run: exit 0 or 5, never a traceback."""
    ids = sets.write_kill_set(folder)
    shims = harness.compat_ready()
    args = db_args(target.url, folder, "up", *_compat_args())
    rng = random.Random()
    codes: dict[int, int] = {}
    for i in range(RANDOM_TERMINATES):
        proc = Spawned(*args)
        found = harness.wait_until(lambda: harness.runner_backend(target.admin, target.name), timeout=30,
                                   interval=0.002, what="the runner's session")
        # Half of them early (lock, bookkeeping set-up, first migration), half anywhere in the run.
        time.sleep(rng.uniform(0.0, 0.06) if i % 2 == 0 else rng.uniform(0.0, 0.9))
        _terminate(target.admin, found[0])
        result = proc.wait(timeout=30)
        codes[result.returncode] = codes.get(result.returncode, 0) + 1
        assert result.returncode in (0, 5), result.describe()
        if result.returncode == 5:
            harness.assert_one_line_error(result, 5)
        harness.wait_for_sessions_gone(target.admin, target.name)
        assert harness.advisory_locks(target.admin, target.name) == []
        with target.admin_conn() as conn:
            sets.check_prefix(conn, ids, shims)
        again = run(*args)
        assert again.returncode == 0, again.describe()
        with target.admin_conn() as conn:
            assert sets.check_prefix(conn, ids, shims) == len(ids)
        sets.reset(target.admin, target.role)
    assert codes.get(5, 0) >= 1, codes
    FIGURES.add("terminate_backend", injected=RANDOM_TERMINATES, survived=RANDOM_TERMINATES, half_applied=0)


@pytest.mark.private_cluster
@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_postgres_restarted_during_a_run(private_cluster, private_target, folder, mode):
    """The server restarts (clean shutdown, or crash-like) while a migration is running."""
    target = private_target
    ids = sets.write_kill_set(folder)
    shims = harness.compat_ready()
    args = db_args(target.url, folder, "up", *_compat_args())
    proc = Spawned(*args)
    _wait_in_sleep(target)
    private_cluster.restart(mode)
    result = proc.wait(timeout=60)
    with target.admin_conn() as conn:
        k = sets.check_prefix(conn, ids, shims)
    assert 0 < k < len(ids)
    _lost_connection_error(result, ids, k)
    again = run(*args)
    assert again.returncode == 0, again.describe()
    with target.admin_conn() as conn:
        assert sets.check_prefix(conn, ids, shims) == len(ids)
    verify = run(*db_args(target.url, folder, "verify"))
    assert verify.returncode == 0, verify.describe()
    FIGURES.add("postgres_restart", injected=1, survived=1, half_applied=0)


@pytest.mark.private_cluster
def test_postgres_down_then_back(private_cluster, private_target, folder):
    """Stopped during a run and still down: exit 5 naming the server (not the password); back up: completes."""
    target = private_target
    ids = sets.write_kill_set(folder)
    shims = harness.compat_ready()
    args = db_args(target.url, folder, "up", *_compat_args())
    proc = Spawned(*args)
    _wait_in_sleep(target)
    private_cluster.stop("fast")
    try:
        result = proc.wait(timeout=60)
        harness.assert_one_line_error(result, 5)
        down = run(*args)
        line = harness.assert_one_line_error(down, 5, "127.0.0.1")
        assert "cannot connect" in line or "connect" in line.lower(), line
    finally:
        private_cluster.start()
    with target.admin_conn() as conn:
        k = sets.check_prefix(conn, ids, shims)
    assert 0 < k < len(ids)
    again = run(*args)
    assert again.returncode == 0, again.describe()
    FIGURES.add("postgres_restart", injected=1, survived=1, half_applied=0)


def test_wrong_password_is_exit_5_without_the_password(private_target, folder):
    """The private cluster really checks passwords (scram-sha-256)."""
    sets.numbered(folder, 1, 1)
    wrong = harness.with_user(private_target.admin, private_target.role, password=harness.PASSWORD + "-wrong")
    result = run(*db_args(wrong, folder, "up", "--no-compat"))
    harness.assert_one_line_error(result, 5, "password authentication failed")
    ok = run(*db_args(private_target.url, folder, "up", "--no-compat"))
    assert ok.returncode == 0, ok.describe()
