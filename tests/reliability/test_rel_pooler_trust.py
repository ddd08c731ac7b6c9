"""Trust through a transaction pool (issue 10 items 1 and 3, through PgBouncer): an ordinary role's
planted operators and functions never run as the runner.

Through PgBouncer in ``transaction`` pool mode the runner sends no session ``SET``: each of its
statements may land on another server connection, and a server connection carries the server's
default ``search_path`` (``"$user", public``). The attack is the one of test_rel_trust.py (operators
and functions in ``public`` whose body runs ``ALTER ROLE <attacker> SUPERUSER`` when a superuser calls
them, CVE-2018-1058 class); here the superuser runner reaches the database through the pooler.

The attacker cannot change the server connections' search_path itself: ``ALTER ROLE <runner> SET``
and ``ALTER DATABASE ... SET`` need the runner's role or the database's owner, and a session ``SET``
through the pooler stays in the attacker's own pool (PgBouncer pools per user and database). What
matters is the default ``"$user", public``, which the first test checks is what the runner's server
connections carry.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

import pooler_pgbouncer
from helpers import ADMIN_URL
from runner.db import connect, transaction
from reliability import harness
from reliability.issue10 import M001, M017, M018, RUNNER_ROLE, all_rows, cli, examples, history, is_superuser, ok, one
from reliability.test_rel_trust import (HIJACK_CASES, Attacker, _hold_runner_lock, _planted, _relations_in,
                                        _runner_tables, _simple, attacker, db_attacker)

__all__ = ["attacker", "db_attacker"]  # fixtures shared with test_rel_trust.py

# The commands of test_rel_trust.py's item-1 cases that talk to the database (lint does not).
CASES = [case for case in HIJACK_CASES if case != "lint"]


@pytest.fixture(scope="module")
def bouncer() -> Iterator[pooler_pgbouncer.PgBouncer]:
    running = pooler_pgbouncer.start("transaction")
    yield running
    running.stop()


def _close_server_connections(bouncer: pooler_pgbouncer.PgBouncer, pg_url: str) -> None:
    """Close the pooler's server connections to the test database, so that their backends end and
    flush their function statistics (pg_stat_user_functions)."""
    database = harness.dbname(pg_url)
    with bouncer.admin() as console:
        console.execute(f"KILL {database}")
        console.execute(f"RESUME {database}")
    deadline = time.monotonic() + 15
    while one(ADMIN_URL, "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE datname = %s "
                         "AND pid <> pg_catalog.pg_backend_pid() AND backend_type = 'client backend'", (database,)):
        assert time.monotonic() < deadline, "the pooler's server connections did not close"
        time.sleep(0.05)


def _planted_calls(pg_url: str) -> list[str]:
    """Planted functions (in public) that were called, with their call counts."""
    with psycopg.connect(pg_url, autocommit=True, options="-c search_path=pg_catalog") as conn:
        conn.execute("SELECT pg_catalog.pg_stat_clear_snapshot()")
        return [f"{name}({args}) x{calls}" for name, args, calls in conn.execute(
            "SELECT s.funcname::text, pg_catalog.pg_get_function_identity_arguments(s.funcid), s.calls "
            "FROM pg_catalog.pg_stat_user_functions s WHERE s.schemaname = 'public' ORDER BY 1, 2").fetchall()]


def _assert_untouched(bouncer, pg_url: str, who: Attacker, command: str) -> None:
    _close_server_connections(bouncer, pg_url)
    calls = _planted_calls(pg_url)
    assert not is_superuser(who.role), (f"`migrate {command}` through the transaction pool ran the attacker's "
                                        f"code as superuser (planted functions that ran: {calls})")
    assert calls == [], f"`migrate {command}` through the transaction pool called planted functions: {calls}"


def test_a_server_connection_of_the_pool_carries_the_default_search_path(bouncer, pg_url, attacker):
    """The premise: what the runner's statements outside its own transactions would resolve with is the
    server's default search_path, public included; the attacker can change it neither for the runner's
    role nor for the database."""
    with psycopg.connect(bouncer.url(pg_url), autocommit=True) as conn:
        conn.prepare_threshold = None
        assert conn.execute("SHOW search_path").fetchone()[0] == '"$user", public'
    with psycopg.connect(attacker.url, autocommit=True) as conn:
        for statement in ("ALTER ROLE {} SET search_path = public", "ALTER ROLE {} IN DATABASE {} SET search_path = public"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql.SQL(statement).format(sql.Identifier(RUNNER_ROLE), sql.Identifier(harness.dbname(pg_url))))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(sql.SQL("ALTER DATABASE {} SET search_path = public").format(
                sql.Identifier(harness.dbname(pg_url))))


def test_every_statement_of_the_runner_runs_with_its_search_path_through_a_transaction_pool(bouncer, pg_url):
    """The fix for the shims connect/route hijack: through a transaction pool (no session SET), a statement
    of the runner's sent outside its transactions, and each of its transactions, run with the runner's
    search_path, not the server connection's "$user", public; the pool's server connection keeps its own."""
    url = bouncer.url(pg_url)
    db = connect(url)
    try:
        assert db.facts["pooler"].per_transaction
        assert db.scalar("SELECT pg_catalog.current_setting('search_path')") == "pg_catalog, pg_temp"
        with transaction(db):
            assert db.scalar("SELECT pg_catalog.current_setting('search_path')") == "pg_catalog, pg_temp"
        assert not db.in_transaction
        with pytest.raises(psycopg.errors.DivisionByZero):
            db.execute("SELECT 1 OPERATOR(pg_catalog./) 0")
        assert not db.in_transaction  # rolled back: the next statement still works
        assert db.scalar("SELECT pg_catalog.current_setting('search_path')") == "pg_catalog, pg_temp"
    finally:
        db.close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.prepare_threshold = None
        assert conn.execute("SHOW search_path").fetchone()[0] == '"$user", public'


def _attack(bouncer, pg_url: str, who: Attacker, tmp_path, spec: dict, consumer: str = "") -> None:
    """Apply ``spec["before"]`` (before the traps exist), plant, then run ``spec["commands"]`` through the
    pooler and check their exit codes and that no planted function ran."""
    folder = examples(tmp_path / "migrations")
    url = bouncer.url(pg_url)
    if spec["before"] is not None:  # applied before the traps exist: only the command under test can fire them
        ok(cli(url, folder, "up", *spec["before"]))
    _planted(pg_url, who)
    _close_server_connections(bouncer, pg_url)  # track_functions applies to the server connections opened next
    app_lock = psycopg.connect(pg_url, autocommit=True, application_name="app-worker",
                               options="-c search_path=pg_catalog")
    app_lock.execute("SELECT pg_catalog.pg_advisory_lock(42::int8)")
    holder = _hold_runner_lock(pg_url) if spec.get("lock") else None
    try:
        for args, code in zip(spec["commands"], spec["codes"]):
            result = cli(url, folder, *(a.format(consumer=consumer) for a in args))
            assert result.returncode == code, result.describe()
            if spec.get("lock"):
                assert "psql" in result.stderr, result.describe()  # the holder was looked up and named
    finally:
        if holder is not None:
            holder.close()
        app_lock.close()
    _assert_untouched(bouncer, pg_url, who, " / ".join(" ".join(a) for a in spec["commands"]))


@pytest.mark.parametrize("case", CASES, ids=CASES)
def test_planted_operators_and_functions_never_run_as_the_runner_through_a_transaction_pool(
        bouncer, pg_url, attacker, tmp_path, case):
    """Issue 10 item 1 through PgBouncer (transaction pool): the runner's statements never resolve an
    operator or function planted in public: the attacker stays non-superuser, no planted function is
    called, and the command does its job (the lock-timeout case reads who holds the lock)."""
    _attack(bouncer, pg_url, attacker, tmp_path, HIJACK_CASES[case])
    expected = {"up": [M001, M017, M018], "down": [M001, M017], "up (lock timeout)": [M001, M017]}
    assert history(pg_url) == expected.get(case, [M001, M017, M018])


SHIM = "compat_017.remediation_workflow_catalog"
# The runner's other commands that write to the database, through the pooler.
MORE_CASES = {
    "snapshot+unmark+mark+rehash": dict(before=[], commands=[("snapshot",), ("unmark", M018), ("mark", M018),
                                                             ("rehash", M018)], codes=[0, 0, 0, 0]),
    "shims extend": dict(before=[], commands=[("shims", "extend", SHIM, "--by", "30d", "--reason", "pooler trust test")],
                         codes=[0]),
    "shims connect+route": dict(before=[], commands=[("shims", "connect", "--as-of", "017"),
                                                     ("shims", "route", "{consumer}", "--as-of", "017"),
                                                     ("shims", "route", "{consumer}", "--reset")], codes=[0, 0, 0]),
    "shims drop": dict(before=[], commands=[("shims", "drop", SHIM, "--force", "--reason", "pooler trust test")],
                       codes=[0]),
}


@pytest.mark.parametrize("case", list(MORE_CASES), ids=list(MORE_CASES))
def test_bookkeeping_and_shim_commands_never_run_planted_code_through_a_transaction_pool(
        bouncer, pg_url, attacker, make_role, tmp_path, case):
    """Issue 10 item 1 through PgBouncer (transaction pool), for the commands that write the runner's
    records and the shims: no planted function runs, each command exits 0."""
    _attack(bouncer, pg_url, attacker, tmp_path, MORE_CASES[case], consumer=make_role())
    assert history(pg_url) == [M001, M017, M018]


def test_schema_named_after_the_runner_role_through_a_transaction_pool(bouncer, pg_url, db_attacker, attacker,
                                                                       tmp_path):
    """Issue 10 item 3 through PgBouncer (transaction pool): a schema named after the runner's login role
    ("$user", first in the server connection's search_path), created by another role before the first
    `up` and holding look-alikes of the runner's tables, gets none of the runner's tables or rows; status,
    verify and a second up see the runner's own tables in public; traps in public stay unfired."""
    url = bouncer.url(pg_url)
    with psycopg.connect(db_attacker.url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(RUNNER_ROLE)))
        conn.execute(sql.SQL("CREATE TABLE {}._migrate_history (migration_id text, applied_at timestamptz)")
                     .format(sql.Identifier(RUNNER_ROLE)))
        conn.execute(sql.SQL("CREATE TABLE {}._yoyo_migration (migration_hash text, migration_id text, "
                             "applied_at_utc timestamp)").format(sql.Identifier(RUNNER_ROLE)))
        conn.execute(sql.SQL("GRANT ALL ON SCHEMA {0} TO PUBLIC; GRANT ALL ON ALL TABLES IN SCHEMA {0} TO PUBLIC")
                     .format(sql.Identifier(RUNNER_ROLE)))
    _planted(pg_url, attacker)
    _close_server_connections(bouncer, pg_url)
    before = _relations_in(pg_url, RUNNER_ROLE)
    folder = _simple(tmp_path / "migrations")
    ok(cli(url, folder, "up"))
    assert "_migrate_history" in _runner_tables(pg_url, "public")
    assert history(pg_url) == ["001_one", "002_two"]
    status = ok(cli(url, folder, "--format", "json", "status"))
    assert json.loads(status.stdout)["pending"] == [], status.describe()
    ok(cli(url, folder, "verify"))
    ok(cli(url, folder, "up"))
    assert one(pg_url, "SELECT count(*) FROM public._migrate_log WHERE operation = 'apply'") == 2
    assert _relations_in(pg_url, RUNNER_ROLE) == before
    assert all_rows(pg_url, sql.SQL("SELECT count(*) FROM {}._migrate_history").format(
        sql.Identifier(RUNNER_ROLE)).as_string(None)) == [(0,)]
    _assert_untouched(bouncer, pg_url, attacker, "up / status / verify / up")


def test_heartbeat_and_a_non_transactional_migration_through_a_transaction_pool(bouncer, pg_url, attacker, tmp_path):
    """Issue 10 item 1 through PgBouncer (transaction pool), for the paths the command cases do not reach:
    the heartbeat's second connection (a migration running longer than a heartbeat interval) and the
    bookkeeping around a non-transactional migration (``-- transactional: false``), whose statement runs
    outside any transaction of the runner's. No planted function runs; both migrations are recorded."""
    folder = harness.write(tmp_path / "migrations", {
        "001_slow.sql": "CREATE TABLE public.slow (id int);\nSELECT pg_catalog.pg_sleep(3.5);\n",
        "002_index.sql": "-- transactional: false\nCREATE INDEX CONCURRENTLY slow_id ON public.slow (id);\n",
    })
    _planted(pg_url, attacker)
    _close_server_connections(bouncer, pg_url)
    result = ok(cli(bouncer.url(pg_url), folder, "up"))
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert any(e.get("event") == "running" and e.get("migration") == "001_slow" for e in events), result.describe()
    _assert_untouched(bouncer, pg_url, attacker, "up")
    assert history(pg_url) == ["001_slow", "002_index"]
    assert one(pg_url, "SELECT pg_catalog.to_regclass('public.slow_id') IS NOT NULL") is True
