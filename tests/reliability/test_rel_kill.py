"""SIGKILL of `migrate up` at random moments: never half-applied, never wedged, no stale lock.

Each run starts `migrate up` of the 20-migration kill set on an empty database
in a subprocess, waits until its history holds a chosen number of rows (each
count in turn) and SIGKILLs it a random part of one migration's time later
(startup, lock, inside slow statements, between migrations, around COMMIT).
After each kill: the killed session disappears and leaves no advisory lock;
the database holds a prefix of the set, each migration fully applied and
recorded or not at all (catalog vs _migrate_history, _migrate_log, yoyo's rows,
the ledger, the shim and its registry row); the next `migrate up` completes
with no manual step and `migrate verify` passes.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest

from reliability import harness, sets
from reliability.harness import FIGURES, Spawned, db_args, run

KILLS = harness.scaled(50, 300)
SQLITE_KILLS = harness.scaled(10, 100)


def _compat_args() -> list[str]:
    return [] if harness.compat_ready() else ["--no-compat"]


def _phase(target) -> str:
    """Where the runner is right now, as seen by the server."""
    found = harness.rows(target.admin, "SELECT state, xact_start IS NOT NULL FROM pg_stat_activity "
                                       "WHERE datname = %s AND application_name = 'migrate'", (target.name,))
    if not found:
        return "not connected"
    state, in_xact = found[0]
    return "inside a migration transaction" if in_xact else f"connected, {state}"


@dataclass
class _LaneStats:
    landed: int = 0
    attempts: int = 0
    phases: Counter = field(default_factory=Counter)
    prefixes: set[int] = field(default_factory=set)


def _kill_lane(target, folder, ids: list[str], kills: int, full: float, seed: int) -> _LaneStats:
    """Kill, check, complete, check, reset: ``kills`` times on one database."""
    shims = harness.compat_ready()
    args = db_args(target.url, folder, "up", *_compat_args())
    rng = random.Random(seed)
    stats = _LaneStats()
    while stats.landed < kills:
        stats.attempts += 1
        assert stats.attempts <= kills * 3, f"only {stats.landed} of {stats.attempts} kills landed during a run"
        # Killed once the history holds `committed` rows (what the server reports), then a random
        # part of one migration's time later: spread over every prefix by construction, where a
        # random delay over the whole run bunched up on a loaded machine.
        committed = stats.attempts % len(ids)
        proc = Spawned(*args)
        with target.admin_conn() as conn:
            harness.wait_until(lambda: len(harness.history_ids(conn)) >= committed or not proc.alive(),
                               timeout=60, interval=0.002, what=f"{committed} migrations committed")
        time.sleep(rng.uniform(0.0, full / len(ids)))
        phase = _phase(target)
        if not proc.kill():
            # It finished first: a normal, complete run.
            assert proc.wait().returncode == 0, proc.result.describe()
            sets.reset(target.admin, target.role)
            continue
        stats.landed += 1
        stats.phases[phase] += 1
        harness.wait_for_sessions_gone(target.admin, target.name)
        assert harness.advisory_locks(target.admin, target.name) == [], "a lock outlived the killed runner"
        with target.admin_conn() as conn:
            stats.prefixes.add(sets.check_prefix(conn, ids, shims))
        # The next run finishes the job, with no manual step.
        again = run(*args)
        assert again.returncode == 0, again.describe()
        with target.admin_conn() as conn:
            assert sets.check_prefix(conn, ids, shims) == len(ids)
        if stats.landed % 10 == 0:
            verify = run(*db_args(target.url, folder, "verify"))
            assert verify.returncode == 0, verify.describe()
        assert harness.advisory_locks(target.admin, target.name) == []
        sets.reset(target.admin, target.role)
    return stats


def test_sigkill_at_random_moments_leaves_a_clean_prefix(target, more_targets, folder):
    ids = sets.write_kill_set(folder)
    shims = harness.compat_ready()
    # How long a full run takes here: each kill lands within one migration's share of it.
    baseline = run(*db_args(target.url, folder, "up", *_compat_args()))
    assert baseline.returncode == 0, baseline.describe()
    with target.admin_conn() as conn:
        assert sets.check_prefix(conn, ids, shims) == len(ids)
    sets.reset(target.admin, target.role)
    # Two lanes (two databases) at once: the kill loop mostly waits, and CI has two cores.
    lanes = [target, *more_targets(1)]
    seed = int(time.time())
    with ThreadPoolExecutor(len(lanes)) as pool:
        futures = [pool.submit(_kill_lane, lane, folder, ids, KILLS // len(lanes) + (i < KILLS % len(lanes)),
                               baseline.seconds, seed + i) for i, lane in enumerate(lanes)]
        results = [f.result() for f in futures]
    landed = sum(r.landed for r in results)
    phases = sum((r.phases for r in results), Counter())
    prefixes = set().union(*(r.prefixes for r in results))
    assert landed >= KILLS
    # The kills really were spread over the run: inside transactions and at several prefixes.
    inside = phases["inside a migration transaction"]
    assert inside >= max(3, KILLS // 10), phases
    assert len(prefixes) >= 5, f"kills landed at too few points of the run: {sorted(prefixes)}"
    FIGURES.add("sigkill", injected=landed, survived=landed, inside_transaction=inside,
                distinct_prefixes=len(prefixes), half_applied=0)


def test_sigkill_inside_a_slow_statement_and_right_after_a_commit(target, folder):
    """The two moments the runner issue names, hit deliberately rather than by chance."""
    ids = sets.write_kill_set(folder)
    shims = harness.compat_ready()
    args = db_args(target.url, folder, "up", *_compat_args())

    # 1. Inside the slow statement of the rename migration (its shim is being built in the same transaction).
    proc = Spawned(*args)
    harness.wait_until(lambda: harness.runner_backend(target.admin, target.name,
                                                      "query LIKE '%%pg_sleep%%' AND state = 'active'"),
                       timeout=30, what="the runner inside pg_sleep")
    assert proc.kill()
    harness.wait_for_sessions_gone(target.admin, target.name)
    assert harness.advisory_locks(target.admin, target.name) == []
    with target.admin_conn() as conn:
        k = sets.check_prefix(conn, ids, shims)
    assert 0 < k < len(ids)

    # 2. Right after a commit: as soon as the history grows, kill.
    proc = Spawned(*args)
    with target.admin_conn() as conn:
        harness.wait_until(lambda: len(harness.history_ids(conn)) > k, timeout=30, interval=0.002,
                           what="one more migration committed")
    assert proc.kill()
    harness.wait_for_sessions_gone(target.admin, target.name)
    assert harness.advisory_locks(target.admin, target.name) == []
    with target.admin_conn() as conn:
        k2 = sets.check_prefix(conn, ids, shims)
    assert k2 > k

    again = run(*args)
    assert again.returncode == 0, again.describe()
    with target.admin_conn() as conn:
        assert sets.check_prefix(conn, ids, shims) == len(ids)
    FIGURES.add("sigkill", injected=2, survived=2, inside_transaction=1, half_applied=0)


def _sqlite_applied(path) -> int:
    """How many history rows the SQLite file holds now (0 while it is locked or not there yet)."""
    import sqlite3

    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0) as conn:
            return conn.execute("SELECT count(*) FROM _migrate_history").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_sigkill_on_sqlite_the_embedded_default(tmp_path, folder):
    """The quickstart's database: kills leave a prefix, the file lock dies with the process."""
    ids = sets.write_kill_set_sqlite(folder)
    shims = harness.compat_ready()
    db = tmp_path / "kill.db"
    args = db_args(f"sqlite:///{db}", folder, "up", *_compat_args())
    baseline = run(*args)
    assert baseline.returncode == 0, baseline.describe()
    assert sets.check_prefix_sqlite(db, ids, shims) == len(ids)
    landed, prefixes = 0, set()
    for attempt in range(SQLITE_KILLS * 3):
        if landed >= SQLITE_KILLS:
            break
        for leftover in tmp_path.glob("kill.db*"):
            leftover.unlink()
        # Killed once the history holds `target` rows (what the file says, not a timer: on a
        # loaded machine a random delay landed before the first commit or after the last).
        target = attempt % len(ids)
        proc = Spawned(*args)
        harness.wait_until(lambda: _sqlite_applied(db) >= target or not proc.alive(), timeout=60, interval=0.002,
                           what=f"{target} migrations committed")
        if not proc.kill():
            assert proc.wait().returncode == 0
            continue
        landed += 1
        prefixes.add(sets.check_prefix_sqlite(db, ids, shims))
        again = run(*db_args(f"sqlite:///{db}", folder, "up", "--lock-wait", "2s", *_compat_args()))
        assert again.returncode == 0, again.describe()  # no stale lock: it did not wait 2 s and fail
        assert sets.check_prefix_sqlite(db, ids, shims) == len(ids)
    assert landed >= SQLITE_KILLS and len(prefixes) >= 3, (landed, prefixes)
    FIGURES.add("sigkill_sqlite", injected=landed, survived=landed, distinct_prefixes=len(prefixes), half_applied=0)


@pytest.mark.slow
def test_sigkill_chained_without_completing_in_between(target, folder):
    """Long variant: kill after kill on the same database, each run resuming where the last died."""
    ids = sets.write_kill_set(folder)
    shims = harness.compat_ready()
    args = db_args(target.url, folder, "up", *_compat_args())
    rng = random.Random()
    kills = 0
    for _ in range(200):
        proc = Spawned(*args)
        time.sleep(rng.uniform(0.2, 0.8))
        if proc.kill():
            kills += 1
        harness.wait_for_sessions_gone(target.admin, target.name)
        assert harness.advisory_locks(target.admin, target.name) == []
        with target.admin_conn() as conn:
            if sets.check_prefix(conn, ids, shims) == len(ids):
                sets.reset(target.admin, target.role)
    FIGURES.add("sigkill", injected=kills, survived=kills, half_applied=0)
