"""`migrate up` through a real PgBouncer, in transaction and session pool modes (issue 13, part 1):
exactly-once with 8 concurrent runners, a SIGKILLed runner's lease, a direct and a pooled runner
excluding each other, lock_timeout per migration, and no runner setting leaking into the pool."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

import pooler_pgbouncer
from helpers import ROOT, run_migrate
from helpers import history, hold_table, scalar, write_migrations
from runner.db import connect, transaction
from runner.lease import Lease
from runner.lock import runner_lock
from datetime import timedelta

SEEDED = {
    "001_items.sql": "CREATE TABLE items (id int PRIMARY KEY, name text);\n"
                     "INSERT INTO items VALUES (1, 'seed');\n",
    "002_prices.sql": "ALTER TABLE items ADD COLUMN price int;\nSELECT pg_sleep(0.2);\n",
    "003_tags.sql": "CREATE TABLE tags (item int, tag text);\nINSERT INTO tags SELECT id, 'new' FROM items;\n",
    "004_counter.sql": "CREATE TABLE counter (n int);\nINSERT INTO counter VALUES (1);\n",
}


@pytest.fixture(scope="module", params=["transaction", "session"])
def bouncer(request):
    running = pooler_pgbouncer.start(request.param)
    yield running
    running.stop()


def spawn_up(url: str, folder: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    full_env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "MIGRATE_MIGRATIONS", "MIGRATE_CONFIG")}
    full_env.update(env or {})
    return subprocess.Popen([sys.executable, "-m", "runner", "--database", url, "--migrations", str(folder),
                             "--log-format", "json", "up", *extra], cwd=ROOT, env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def runner_locks_left(url: str) -> tuple[int, int]:
    """(advisory locks of the runner's key, unexpired lease rows) in the database."""
    with psycopg.connect(url) as conn:
        advisory = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %s "
                                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                                (0x6D677274,)).fetchone()[0]
        lease = conn.execute("SELECT to_regclass('public._migrate_lock')").fetchone()[0]
        leases = conn.execute("SELECT count(*) FROM public._migrate_lock WHERE expires_at > clock_timestamp()"
                              ).fetchone()[0] if lease else 0
    return advisory, leases


def test_eight_concurrent_runners_apply_each_migration_exactly_once(bouncer, pg_url, tmp_path):
    folder = write_migrations(tmp_path / "m", SEEDED)
    url = bouncer.url(pg_url)
    runners = [spawn_up(url, folder, "--lock-wait", "60s") for _ in range(8)]
    outputs = [(p.wait(120), *p.communicate()) for p in runners]
    assert [code for code, _, _ in outputs] == [0] * 8, [err[-800:] for _, _, err in outputs]
    assert history(pg_url) == sorted(Path(f).stem for f in SEEDED)
    assert scalar(pg_url, "SELECT count(*) FROM items") == 1
    assert scalar(pg_url, "SELECT count(*) FROM tags") == 1
    assert scalar(pg_url, "SELECT count(*) FROM counter") == 1
    assert scalar(pg_url, "SELECT count(*) FROM _migrate_log WHERE operation = 'apply'") == 4
    applied = [out for _, out, _ in outputs if "applied 4 migration(s)" in out]
    assert len(applied) == 1, [out for _, out, _ in outputs]
    assert runner_locks_left(pg_url) == (0, 0)


def test_no_runner_setting_leaks_into_the_pool(bouncer, pg_url, tmp_path):
    """The runner's search_path, lock_timeout and keepalives never reach the pooler's other clients,
    also with a non-transactional migration (which, in transaction mode, runs with the server
    connection's own settings, and says so)."""
    folder = write_migrations(tmp_path / "m", {**SEEDED, "005_index.sql": "-- transactional: false\n"
                                               "CREATE INDEX CONCURRENTLY items_name ON items (name);\n"})
    url = bouncer.url(pg_url)
    result = run_migrate("up", "--database", url, "--migrations", str(folder), "--lock-timeout", "1234ms",
                         "--log-format", "json")
    assert result.returncode == 0, result.stderr
    assert history(pg_url)[-1] == "005_index"
    warned = "no lock_timeout or search_path of the runner applies to it" in result.stderr
    assert warned == (bouncer.mode == "transaction")
    seen = set()
    for _ in range(5):  # the pooler's server connections, as other clients get them
        with psycopg.connect(url, autocommit=True) as conn:
            conn.prepare_threshold = None
            seen.add(conn.execute("SELECT current_setting('search_path'), current_setting('lock_timeout'), "
                                  "current_setting('client_connection_check_interval')").fetchone())
    assert seen == {('"$user", public', "0", "0")}


def test_sigkilled_runner_leaves_no_lock_beyond_its_lease(bouncer, pg_url, tmp_path):
    """A runner killed mid-migration: its statement is stopped with it, and the next `up` takes the
    lock over once the lease (2s here; 30s by default) has run out."""
    files = dict(SEEDED)
    files["002_prices.sql"] = "ALTER TABLE items ADD COLUMN price int;\nSELECT pg_sleep(300);\n"
    folder = write_migrations(tmp_path / "m", files)
    url = bouncer.url(pg_url)
    env = {"MIGRATE_LOCK_LEASE": "2s"}
    victim = spawn_up(url, folder, env=env)
    with psycopg.connect(pg_url, autocommit=True) as watch:
        for _ in range(600):
            if watch.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE '%%pg_sleep(300)%%' "
                             "AND pid <> pg_backend_pid()").fetchone()[0]:
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"the migration never started: {victim.communicate()}")
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        # its lease row is left behind (nobody deleted it); it expires by itself
        assert watch.execute("SELECT count(*) FROM public._migrate_lock").fetchone()[0] == 1
        (folder / "002_prices.sql").write_text("ALTER TABLE items ADD COLUMN price int;\n")  # not applied yet
        result = run_migrate("up", "--database", url, "--migrations", str(folder), "--lock-wait", "60s",
                             "--log-format", "json", env=env)
        assert result.returncode == 0, result.stderr
        assert history(pg_url) == sorted(Path(f).stem for f in SEEDED)
        assert "applied 3 migration(s)" in result.stdout
        # the killed runner's statement did not go on running on a server connection
        assert watch.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE '%%pg_sleep(300)%%' "
                             "AND pid <> pg_backend_pid()").fetchone()[0] == 0
    assert runner_locks_left(pg_url) == (0, 0)


def test_a_direct_and_a_pooled_runner_exclude_each_other(bouncer, pg_url, tmp_path):
    folder = write_migrations(tmp_path / "m", SEEDED)
    pooled_url = bouncer.url(pg_url)
    with connect(pooled_url) as pooled:
        assert pooled.facts["pooler"].pooled
        with runner_lock(pooled, timedelta(seconds=5)):
            direct = run_migrate("up", "--database", pg_url, "--migrations", str(folder), "--lock-wait", "1s")
            assert direct.returncode == 3, direct.stderr
            assert "lease in _migrate_lock" in direct.stderr and "application_name='migrate'" in direct.stderr
            doctor = run_migrate("doctor", "--database", pg_url, "--migrations", str(folder), "--format", "json")
            (held,) = [f for f in json.loads(doctor.stdout) if f["kind"] == "lock-held"]
            assert "lease in _migrate_lock" in held["detail"] and "expires by itself" in held["fix"]
    assert history(pg_url) == []
    with connect(pg_url) as direct_db:
        assert not direct_db.facts["pooler"].pooled
        with runner_lock(direct_db, timedelta(seconds=5)):
            pooled_run = run_migrate("up", "--database", pooled_url, "--migrations", str(folder), "--lock-wait", "1s")
            assert pooled_run.returncode == 3, pooled_run.stderr
            assert "could not get the migration lock" in pooled_run.stderr
    assert history(pg_url) == []
    assert runner_locks_left(pg_url) == (0, 0)


def test_a_runner_that_cannot_renew_its_lease_is_taken_over(bouncer, pg_url):
    """A lease not renewed for a whole lease is free for the next runner; the old holder finds out."""
    with connect(bouncer.url(pg_url)) as first, connect(bouncer.url(pg_url)) as second:
        old = Lease(first, first.dialect.lock_key(first), timedelta(seconds=1))
        assert old.try_acquire()
        old._stop.set()  # as if its renewing connection were cut off
        old._thread.join()
        new = Lease(second, second.dialect.lock_key(second), timedelta(seconds=30))
        assert not new.try_acquire()
        for _ in range(100):
            if new.try_acquire():
                break
            time.sleep(0.05)
        else:
            pytest.fail("the expired lease was never taken over")
        with psycopg.connect(pg_url, autocommit=True) as conn:
            assert not old.renew(conn)
        with pytest.raises(psycopg.Error, match="no longer holds the migration lease"):
            with transaction(first):  # the old holder's next migration transaction fails whole
                first.execute(old.guard_sql())
        new.release()


def test_no_takeover_while_the_holder_is_inside_a_migration_transaction(bouncer, pg_url):
    """The lease row is locked for the length of each of the holder's migrations: even past its
    expiry (a long statement, renewals queued) no other runner gets it until that transaction ends."""
    with connect(bouncer.url(pg_url)) as holder, connect(bouncer.url(pg_url)) as other:
        held = Lease(holder, holder.dialect.lock_key(holder), timedelta(seconds=1))
        assert held.try_acquire()
        held._stop.set()
        held._thread.join()
        with transaction(holder):
            holder.execute(held.guard_sql())
            while not scalar(pg_url, "SELECT bool_and(expires_at <= clock_timestamp()) FROM _migrate_lock"):
                time.sleep(0.1)
            assert not Lease(other, other.dialect.lock_key(other), timedelta(seconds=30)).try_acquire()
        taker = Lease(other, other.dialect.lock_key(other), timedelta(seconds=30))
        assert taker.try_acquire()
        taker.release()


def test_lock_timeout_applies_per_migration_through_the_pooler(bouncer, pg_url, tmp_path):
    """A migration blocked by a long transaction gives up after lock_timeout, is retried, then
    fails naming the blocker (as on a direct connection); once the blocker is gone it applies."""
    folder = write_migrations(tmp_path / "m", {k: SEEDED[k] for k in ("001_items.sql",)})
    url = bouncer.url(pg_url)
    assert run_migrate("up", "--database", url, "--migrations", str(folder)).returncode == 0
    write_migrations(folder, {"002_prices.sql": "ALTER TABLE items ADD COLUMN price int;\n"})
    (tmp_path / "migrate.toml").write_text("lock_retries = 1\n")
    ready, release = threading.Event(), threading.Event()
    holder = threading.Thread(target=hold_table, args=(pg_url, "items", ready, release))
    holder.start()
    try:
        assert ready.wait(10)
        blocked = run_migrate("up", "--database", url, "--migrations", str(folder), "--lock-timeout", "200ms",
                              "--config", str(tmp_path / "migrate.toml"), "--log-format", "json")
    finally:
        release.set()
        holder.join()
    assert blocked.returncode == 3, blocked.stderr
    assert "lock_timeout=0.2s after 2 attempt(s)" in blocked.stderr and "long-report" in blocked.stderr
    assert blocked.stderr.count('"lock timeout, retrying"') == 1
    assert history(pg_url) == ["001_items"]
    done = run_migrate("up", "--database", url, "--migrations", str(folder))
    assert done.returncode == 0, done.stderr
    assert history(pg_url) == ["001_items", "002_prices"]


@pytest.mark.parametrize("env, message", [
    ({"MIGRATE_POOLER": "pgbouncer"}, "MIGRATE_POOLER (environment): expected one of auto, none, session, transaction, got 'pgbouncer'"),
    ({"MIGRATE_LOCK_LEASE": "200ms"}, "MIGRATE_LOCK_LEASE (environment): the lease must be at least 1s, got '200ms'"),
])
def test_bad_pooler_settings_are_usage_errors(pg_url, tmp_path, env, message):
    folder = write_migrations(tmp_path / "m", SEEDED)
    result = run_migrate("up", "--database", pg_url, "--migrations", str(folder), env=env)
    assert result.returncode == 2 and result.stderr.strip() == f"migrate: error: {message}"
    assert history(pg_url) == []


def test_a_statement_pool_is_refused(pg_url, tmp_path):
    statement_pool = pooler_pgbouncer.start("statement")
    try:
        folder = write_migrations(tmp_path / "m", SEEDED)
        result = run_migrate("up", "--database", statement_pool.url(pg_url), "--migrations", str(folder))
    finally:
        statement_pool.stop()
    assert result.returncode == 2, result.stderr
    assert "runs pool_mode = statement" in result.stderr and "migrations need transactions" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert history(pg_url) == []
