"""What the runner adds over yoyo: atomic bookkeeping, locking, lock_timeout, session hygiene."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg
import pytest

from helpers import ROOT, run_migrate
from helpers import history, hold_table, scalar, tables, write_migrations


def _start_up(url: str, folder: Path, *extra: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    return subprocess.Popen(
        [sys.executable, "-m", "runner", "up", "--database", url, "--migrations", str(folder), *extra],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


ADVISORY_LOCKS = ("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                  "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")


def _no_advisory_lock(url: str, timeout: float = 5) -> bool:
    """The killed runner's server session ends (and releases its lock) within a few seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if scalar(url, ADVISORY_LOCKS) == 0:
            return True
        time.sleep(0.1)
    return False


def _wait_for_query(url: str, fragment: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'migrate' AND query LIKE %s",
                (f"%{fragment}%",),
            ).fetchone()
            if row:
                return
            time.sleep(0.02)
    raise AssertionError(f"runner never ran {fragment!r}")


SLOW_SET = {
    "001_one.sql": "CREATE TABLE one (id int);",
    "002_two.sql": "CREATE TABLE two (id int);\nINSERT INTO two VALUES (2);",
    "003_slow.sql": "CREATE TABLE three (id int);\nSELECT pg_sleep(30);\nCREATE TABLE three_b (id int);",
    "004_four.sql": "CREATE TABLE four (id int);",
}


def test_sigkill_inside_a_slow_migration_leaves_nothing_half_applied(pg_url: str, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", SLOW_SET)
    proc = _start_up(pg_url, folder)
    _wait_for_query(pg_url, "pg_sleep(30)")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # The server notices the dead client mid-statement (client_connection_check_interval), not in 30 s.
    assert _no_advisory_lock(pg_url)
    # 001 and 002 committed with their rows; 003 neither applied nor recorded.
    assert history(pg_url) == ["001_one", "002_two"]
    assert {"one", "two"} <= tables(pg_url) and not {"three", "three_b", "four"} & tables(pg_url)
    (folder / "003_slow.sql").write_text("CREATE TABLE three (id int);\nCREATE TABLE three_b (id int);")
    rerun = run_migrate("up", "--database", pg_url, "--migrations", str(folder))
    # the edited 003 was never applied, so it is not drift: the re-run just finishes the job
    assert rerun.returncode == 0, rerun.stderr
    assert history(pg_url) == ["001_one", "002_two", "003_slow", "004_four"]


def test_sigkill_right_after_a_commit(pg_url: str, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", {
        "001_one.sql": "CREATE TABLE one (id int);",
        "002_wait.sql": "SELECT pg_sleep(30);",
    })
    proc = _start_up(pg_url, folder)
    _wait_for_query(pg_url, "pg_sleep(30)")  # 001 has committed with its bookkeeping
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert history(pg_url) == ["001_one"] and "one" in tables(pg_url)
    (folder / "002_wait.sql").write_text("SELECT 1;")
    assert run_migrate("up", "--database", pg_url, "--migrations", str(folder)).returncode == 0
    assert history(pg_url) == ["001_one", "002_wait"]


def test_eight_concurrent_runners_apply_each_migration_once(pg_url: str, tmp_path: Path) -> None:
    files = {f"{i:03d}_t{i}.sql": f"CREATE TABLE t{i} (id int);\nSELECT pg_sleep(0.05);" for i in range(1, 11)}
    folder = write_migrations(tmp_path / "m", files)
    procs = [_start_up(pg_url, folder, "--format", "json") for _ in range(8)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, [o[1][-500:] for o in outputs]
    applied = [mid for out, _ in outputs for mid in json.loads(out)["applied"]]
    assert sorted(applied) == sorted(Path(f).stem for f in files)  # exactly once across all runners
    assert scalar(pg_url, "SELECT count(*) FROM _migrate_log WHERE operation = 'apply'") == 10


def test_lock_wait_bounds_waiting_for_another_runner(pg_url: str, tmp_path: Path) -> None:
    from runner.db import connect
    from runner.dialects.postgresql import DIALECT as POSTGRESQL

    folder = write_migrations(tmp_path / "m", {"001_one.sql": "CREATE TABLE one (id int);"})
    with connect(pg_url) as db:
        classid, objid = POSTGRESQL.lock_key(db)
    with psycopg.connect(pg_url, autocommit=True) as holder:
        holder.execute("SET application_name = 'other-pipeline'")
        holder.execute("SELECT pg_advisory_lock(%s, %s)", (classid, objid))
        started = time.monotonic()
        result = run_migrate("up", "--lock-wait", "1s", "--database", pg_url, "--migrations", str(folder))
        waited = time.monotonic() - started
        pid = holder.info.backend_pid
    assert result.returncode == 3
    assert "other-pipeline" in result.stderr and f"pid {pid}" in result.stderr
    assert waited < 10
    assert "one" not in tables(pg_url)


def _blocker(url: str, ready: threading.Event, release: threading.Event) -> None:
    hold_table(url, "accounts", ready, release)


@pytest.mark.parametrize("one_query", [False, True], ids=["last-migration", "one-query"])
def test_lock_timeout_retries_then_names_the_blocker(pg_url: str, tmp_path: Path, one_query: bool) -> None:
    """The run's last migration takes three round trips (the snapshot hook wants it); one followed
    by another goes in one query (tests/test_runner_one_query.py)."""
    folder = write_migrations(tmp_path / "m", {"001_accounts.sql": "CREATE TABLE accounts (id int);"})
    assert run_migrate("up", "--database", pg_url, "--migrations", str(folder)).returncode == 0
    write_migrations(folder, {"002_alter.sql": "CREATE TABLE side (id int);\n"
                                               "ALTER TABLE accounts ADD COLUMN note text;",
                              **({"099_tail.sql": "CREATE TABLE tail (id int);"} if one_query else {})})
    (tmp_path / "migrate.toml").write_text("lock_retries = 2\n")
    ready, release = threading.Event(), threading.Event()
    thread = threading.Thread(target=_blocker, args=(pg_url, ready, release))
    thread.start()
    try:
        ready.wait(10)
        result = run_migrate("up", "--lock-timeout", "200ms", "--database", pg_url, "--migrations", str(folder),
                             cwd=tmp_path)
    finally:
        release.set()
        thread.join()
    assert result.returncode == 3
    assert "long-report" in result.stderr and "accounts" in result.stderr and "3 attempt(s)" in result.stderr
    assert "002_alter.sql:2" in result.stderr.strip().splitlines()[-1]
    assert "side" not in tables(pg_url)  # the first statement was rolled back too
    assert history(pg_url) == ["001_accounts"]
    assert run_migrate("up", "--database", pg_url, "--migrations", str(folder)).returncode == 0


def _release_after_second_try(url: str, release: threading.Event) -> None:
    tries: set = set()
    with psycopg.connect(url, autocommit=True) as conn:
        while len(tries) < 2 and not release.is_set():
            tries.update(row[0] for row in conn.execute(
                "SELECT query_start FROM pg_catalog.pg_stat_activity WHERE datname = pg_catalog.current_database()"
                " AND wait_event_type = 'Lock' AND query LIKE '%%ALTER TABLE accounts%%'"))
            release.wait(0.02)
    release.set()


def test_lock_timeout_retry_succeeds_when_blocker_goes_away(pg_url: str, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", {"001_accounts.sql": "CREATE TABLE accounts (id int);"})
    assert run_migrate("up", "--database", pg_url, "--migrations", str(folder)).returncode == 0
    write_migrations(folder, {"002_alter.sql": "ALTER TABLE accounts ADD COLUMN note text;"})
    ready, release = threading.Event(), threading.Event()
    thread = threading.Thread(target=_blocker, args=(pg_url, ready, release))
    thread.start()
    ready.wait(10)
    # The blocker goes away once the server shows the ALTER waiting on its second try (not after a timer).
    threading.Thread(target=_release_after_second_try, args=(pg_url, release), daemon=True).start()
    result = run_migrate("up", "--lock-timeout", "200ms", "--database", pg_url, "--migrations", str(folder))
    release.set()
    thread.join()
    assert result.returncode == 0, result.stderr
    assert "lock timeout, retrying" in result.stderr
    assert history(pg_url) == ["001_accounts", "002_alter"]


def test_session_settings_do_not_leak_between_migrations(pg_url: str, tmp_path: Path, make_role) -> None:
    role = make_role(login=False)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'GRANT CREATE ON SCHEMA public TO "{role}"')
    folder = write_migrations(tmp_path / "m", {
        "001_settings.sql": "CREATE SCHEMA elsewhere;\n"
                            f'GRANT CREATE, USAGE ON SCHEMA elsewhere TO "{role}";\n'
                            "SET search_path TO elsewhere;\n"
                            "SET statement_timeout = 100;\n"
                            f'SET ROLE "{role}";\n'
                            "CREATE TABLE in_elsewhere (id int);",
        "002_after.sql": "SELECT pg_sleep(0.3);\nCREATE TABLE after_one (id int);\n"
                         "CREATE TABLE whoami AS SELECT current_user AS u, current_setting('search_path') AS p;",
    })
    result = run_migrate("up", "--database", pg_url, "--migrations", str(folder))
    assert result.returncode == 0, result.stderr
    assert "after_one" in tables(pg_url, "public") and "in_elsewhere" in tables(pg_url, "elsewhere")
    assert scalar(pg_url, "SELECT u FROM public.whoami") == "postgres"
    assert scalar(pg_url, "SELECT p FROM public.whoami") == '"$user", public'
    assert history(pg_url) == ["001_settings", "002_after"]  # bookkeeping landed in public


def test_non_transactional_migration_recorded_only_after_success(pg_url: str, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", {
        "001_t.sql": "CREATE TABLE t (id int);",
        "002_idx.sql": "-- transactional: false\nCREATE INDEX CONCURRENTLY t_id_idx ON t (id);\n"
                       "CREATE INDEX CONCURRENTLY t_bad_idx ON t (no_such_column);",
    })
    failed = run_migrate("up", "--database", pg_url, "--migrations", str(folder))
    assert failed.returncode == 4
    assert "002_idx.sql:3" in failed.stderr and "no_such_column" in failed.stderr
    assert history(pg_url) == ["001_t"]
    (folder / "002_idx.sql").write_text("-- transactional: false\n"
                                        "CREATE INDEX CONCURRENTLY IF NOT EXISTS t_id_idx ON t (id);")
    assert run_migrate("up", "--database", pg_url, "--migrations", str(folder)).returncode == 0
    assert history(pg_url) == ["001_t", "002_idx"]


def test_failing_statement_rolls_back_whole_migration_and_names_it(pg_url: str, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", {
        "001_ok.sql": "CREATE TABLE ok (id int);",
        "002_bad.sql": "-- header\nCREATE TABLE partial (id int);\nINSERT INTO partial VALUES (1);\n"
                       "SELEC broken FROM nowhere;\nCREATE TABLE never (id int);",
    })
    result = run_migrate("up", "--database", pg_url, "--migrations", str(folder))
    assert result.returncode == 4
    assert len(result.stderr.strip().splitlines()[-1:]) == 1 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "002_bad.sql:4" in last and "SELEC broken" in last and "rolled back" in last
    assert "partial" not in tables(pg_url) and history(pg_url) == ["001_ok"]


@pytest.mark.needs_root
def test_arbitrary_uid_without_passwd_entry_and_c_locale(pg_url: str, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", {
        "001_unicode.sql": "-- Catalogue des flux — “café” ✓\nCREATE TABLE café (naïve text DEFAULT 'déjà vu');\n"
                           "INSERT INTO café DEFAULT VALUES;",
    })
    for folder_up in [tmp_path, *tmp_path.parents]:  # pytest's temporary folders are private to root
        if folder_up == Path(tempfile.gettempdir()):
            break
        os.chmod(folder_up, 0o755)
    # An interpreter that user 54321 may execute (this venv's may live under /root): the
    # system Python of the same version, with this checkout and the venv's packages on its path.
    interpreter = sys.executable
    system = Path("/usr/bin/python3")
    if system.exists() and subprocess.run([str(system), "-c", f"import sys; assert sys.version_info[:2] == {tuple(sys.version_info[:2])}"]).returncode == 0:
        interpreter = str(system)
    import sysconfig

    env = {"PATH": os.environ["PATH"], "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0", "HOME": "/nonexistent",
           "PYTHONPATH": f"{ROOT}:{sysconfig.get_paths()['purelib']}"}
    proc = subprocess.run(
        [interpreter, "-m", "runner", "up", "--database", pg_url, "--migrations", str(folder)],
        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=60,
        user=54321, group=54321, extra_groups=[],
    )
    assert proc.returncode == 0, proc.stderr
    assert scalar(pg_url, "SELECT naïve FROM café") == "déjà vu"
    assert "uid 54321" in scalar(pg_url, "SELECT applied_by FROM _migrate_history")


def test_concurrent_runners_on_sqlite_take_turns(tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", {f"{i:03d}_t{i}.sql": f"CREATE TABLE t{i} (id int);" for i in range(1, 6)})
    url = f"sqlite:///{tmp_path / 'app.db'}"
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    procs = [subprocess.Popen([sys.executable, "-m", "runner", "up", "--format", "json", "--database", url,
                               "--migrations", str(folder)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [o[1][-300:] for o in outputs]
    applied = sorted(mid for out, _ in outputs for mid in json.loads(out)["applied"])
    assert applied == [f"{i:03d}_t{i}" for i in range(1, 6)]
