"""Load: many runners at once, and readers hammering the database while `up` runs.

* 8 concurrent `migrate up` processes over 3 rounds of new migrations: all exit
  0, every migration applied exactly once (history, audit log, yoyo's log, a
  ledger with a primary key).
* `migrate verify` (and `migrate shims audit`) from 20 processes at once while
  `up` runs: each answers from a committed state (a prefix applied, the rest
  pending; never a half-written one), all of them finish while `up` is still
  running (they do not queue behind its lock), and `up` is never seen waiting
  on a lock while they run.
"""

from __future__ import annotations

import threading
import time

from helpers import GATE_WAIT, make_gate, open_gate
from reliability import harness, sets
from reliability.harness import FIGURES, Spawned, db_args, run

RUNNERS = 8
ROUNDS = harness.scaled(3, 6)
PER_ROUND = 4
READERS = 20


def _compat_args() -> list[str]:
    return [] if harness.compat_ready() else ["--no-compat"]


def test_eight_concurrent_runners_over_rounds_apply_each_migration_once(target, folder):
    ids: list[str] = []
    started_total = time.monotonic()
    for round_no in range(ROUNDS):
        start = round_no * PER_ROUND + 1
        ids += sets.numbered(folder, start, PER_ROUND, slow={start + 1: 0.3})
        procs = [Spawned(*db_args(target.url, folder, "up", *_compat_args(), "--format", "json"))
                 for _ in range(RUNNERS)]
        results = [p.wait(timeout=120) for p in procs]
        for r in results:
            assert r.returncode == 0, r.describe()
        applied_by_each = [r.json()["applied"] for r in results]
        # Every new migration was applied by exactly one of the eight processes.
        flat = [mid for applied in applied_by_each for mid in applied]
        assert sorted(flat) == sorted(ids[-PER_ROUND:]), applied_by_each
        with target.admin_conn() as conn:
            assert harness.history_ids(conn) == ids
            assert harness.yoyo_ids(conn) == ids
            assert harness.log_counts(conn) == {mid: 1 for mid in ids}
            yoyo_applies = dict(conn.execute("SELECT migration_id, count(*) FROM _yoyo_log "
                                             "WHERE operation = 'apply' GROUP BY 1").fetchall())
            assert yoyo_applies == {mid: 1 for mid in ids}
            assert [r[0] for r in conn.execute("SELECT id FROM ledger ORDER BY id")] == ids
    assert harness.advisory_locks(target.admin, target.name) == []
    FIGURES.add("concurrent_up", processes=RUNNERS * ROUNDS, rounds=ROUNDS, migrations=len(ids),
                applied_twice=0, failed=0)
    FIGURES.add("concurrent_up_seconds", total=round(time.monotonic() - started_total))


def _sample_up_waits(admin: str, database: str, stop: threading.Event, seen: list[str]) -> None:
    """Record any moment the runner's session waits on a heavyweight lock."""
    with harness.connect(admin) as conn:
        while not stop.is_set():
            for (wait_type, query) in conn.execute(
                "SELECT wait_event_type, left(query, 80) FROM pg_stat_activity WHERE datname = %s "
                "AND application_name = 'migrate' AND state = 'active' AND wait_event_type = 'Lock' "
                "AND query NOT LIKE '%%pg_try_advisory_lock%%'", (database,)
            ).fetchall():
                seen.append(f"{wait_type}: {query}")
            time.sleep(0.01)


def test_twenty_readers_while_up_runs(target, folder):
    count = 10
    ids = sets.numbered(folder, 1, count, slow={i: 0.3 for i in range(2, count + 1)})
    last = folder / f"{ids[-1]}.sql"  # `up` stays inside the last migration until every reader is done
    last.write_text(GATE_WAIT + last.read_text(), encoding="utf-8")
    make_gate(target.admin, target.role)
    shims = harness.compat_ready()
    up = Spawned(*db_args(target.url, folder, "up", *_compat_args()))
    with target.admin_conn() as conn:
        harness.wait_until(lambda: len(harness.history_ids(conn)) >= 1, timeout=30, what="first migration applied")
    stop = threading.Event()
    waits: list[str] = []
    sampler = threading.Thread(target=_sample_up_waits, args=(target.admin, target.name, stop, waits), daemon=True)
    sampler.start()
    readers = []
    for i in range(READERS):
        if shims and i % 2:
            readers.append(("audit", Spawned(*db_args(target.url, folder, "shims", "audit", "--format", "json"))))
        else:
            readers.append(("verify", Spawned(*db_args(target.url, folder, "verify", "--format", "json"))))
    results = [(kind, p.wait(timeout=60)) for kind, p in readers]
    up_running_when_readers_done = up.alive()
    open_gate(target.admin)
    up_result = up.wait(timeout=120)
    stop.set()
    sampler.join(timeout=10)
    assert up_result.returncode == 0, up_result.describe()
    assert up_running_when_readers_done, "`up` finished before the readers: the test did not overlap them"
    intermediate = 0
    for kind, r in results:
        if kind == "verify":
            assert r.returncode == 1, r.describe()  # not at head yet: pending migrations
            data = r.json()
            applied = [a["id"] if isinstance(a, dict) else a for a in data["applied"]]
            k = len(applied)
            assert applied == ids[:k] and data["pending"] == ids[k:], data
            assert data["modified"] == [] and data["missing"] == []
            intermediate += 0 < k < count
        else:
            assert r.returncode == 0, r.describe()
            r.json()
        # They answered while `up` still held its lock: they never queued behind it.
        assert r.seconds < up_result.seconds, r.describe()
    assert intermediate >= 1, "no reader saw an intermediate state"
    assert waits == [], f"`up` waited on locks while readers ran: {waits}"
    final = run(*db_args(target.url, folder, "verify"))
    assert final.returncode == 0, final.describe()
    FIGURES.add("concurrent_readers", processes=READERS, wrong_answers=0, blocked_up=0)
