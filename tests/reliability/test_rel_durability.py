"""What `migrate up` reports as applied survives a server crash right after it.

Migrations sent in one query commit without waiting for the WAL flush (runner.engine.FLUSH_EVERY);
they are reported applied only once a later COMMIT has waited for it. The private cluster here
has ``wal_writer_delay`` at its maximum (10 s), so the server does not write such commits to disk
by itself during the test, and ``pg_ctl stop -m immediate`` (a crash: shared memory, WAL buffers
included, is thrown away) loses whatever the runner did not make durable.
"""

from __future__ import annotations

import json

import psycopg
import pytest

from helpers import new_private_cluster
from reliability import harness
from reliability.harness import FIGURES, db_args, run

COUNT = 30


def _reported(result: harness.Result) -> list[str]:
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    return [e["migration"] for e in events if e["event"] == "applied"]


def _applied(url: str) -> tuple[list[str], set[str]]:
    with psycopg.connect(url, autocommit=True) as conn:
        ids = [r[0] for r in conn.execute("SELECT migration_id FROM _migrate_history ORDER BY migration_id")]
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                                              "AND tablename LIKE 't%'")}
    return ids, tables


@pytest.mark.private_cluster
def test_a_crash_after_a_failed_run_keeps_what_it_reported_applied(folder):
    ids = [f"{i:03d}_t{i}" for i in range(1, COUNT + 1)]
    harness.write(folder, {**{f"{mid}.sql": f"CREATE TABLE t{i} (id int);" for i, mid in enumerate(ids, 1)},
                           "090_bad.sql": "SELECT 1 / 0;", "099_tail.sql": "CREATE TABLE tail (id int);"})
    with new_private_cluster("-c wal_writer_delay=10000") as cluster:
        url = cluster.admin_url(cluster.create_database())
        failed = run(*db_args(url, folder, "up", "--no-compat"))
        harness.assert_one_line_error(failed, 4, "090_bad", "division by zero")
        assert _reported(failed) == ids

        cluster.stop("immediate")
        cluster.start()
        applied, tables = _applied(url)
        assert applied == ids and tables == {f"t{i}" for i in range(1, COUNT + 1)}

        harness.write(folder, {"090_bad.sql": "SELECT 1;"})
        done = run(*db_args(url, folder, "up", "--no-compat"))
        assert done.returncode == 0, done.describe()
        assert _reported(done) == ["090_bad", "099_tail"]
        cluster.stop("immediate")
        cluster.start()
        assert _applied(url)[0] == [*ids, "090_bad", "099_tail"]
    FIGURES.add("postgres_crash_after_run", injected=2, survived=2, half_applied=0)
