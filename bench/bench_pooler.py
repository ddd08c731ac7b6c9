"""`migrate up` through PgBouncer: one command, one table (not a timed test).

    .venv/bin/python bench/bench_pooler.py [--runners 8] [--migrations 20] [--rounds 3] [--lease 2]

For a direct connection and PgBouncer in session and transaction pool mode (a private PgBouncer on
a free port, as in tests/pg/test_pooler_*.py; `pgbouncer` must be installed): the wall time of N
concurrent `migrate up` runners on a fresh database (and that each migration was applied exactly
once), and the time from SIGKILLing a runner in the middle of a migration to the end of the next
`migrate up` with ``lock_lease`` = --lease seconds (a direct runner's lock goes with its session;
a pooled runner's lease has to expire). Medians over the rounds. Server: MIGRATE_TEST_DATABASE_URL
or postgresql://postgres@127.0.0.1:5432/postgres.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

import pooler_pgbouncer  # noqa: E402
from conftest import ADMIN_URL  # noqa: E402


def with_db(url: str, name: str) -> str:
    p = urlsplit(url)
    return urlunsplit((p.scheme, p.netloc, "/" + name, p.query, ""))


def migrate(url: str, folder: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "runner", "--database", url, "--migrations", str(folder),
                             "--log-format", "json", "up", "--lock-wait", "120s", *extra], cwd=ROOT,
                            env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def fresh_db(admin: psycopg.Connection) -> str:
    name = f"migrate_bench_{uuid.uuid4().hex[:10]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    return name


def runners_round(admin, url_of, folder: Path, runners: int, count: int) -> float:
    name = fresh_db(admin)
    try:
        url = url_of(with_db(ADMIN_URL, name))
        started = time.perf_counter()
        procs = [migrate(url, folder) for _ in range(runners)]
        codes = [p.wait(300) for p in procs]
        elapsed = time.perf_counter() - started
        errors = [p.stderr.read()[-300:] for p, c in zip(procs, codes) if c]
        assert not errors, errors
        with psycopg.connect(with_db(ADMIN_URL, name)) as conn:
            applied = conn.execute("SELECT count(*) FROM _migrate_history").fetchone()[0]
            rows = conn.execute("SELECT count(*) FROM seeded").fetchone()[0]
        assert applied == count and rows == 1, (applied, rows)
        return elapsed
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def kill_round(admin, url_of, lease: float) -> float:
    name = fresh_db(admin)
    folder = Path(tempfile.mkdtemp(prefix="bench-pooler-kill-"))
    (folder / "001_a.sql").write_text("CREATE TABLE a (id int);\n")
    (folder / "002_sleep.sql").write_text("CREATE TABLE b (id int);\nSELECT pg_sleep(300);\n")
    try:
        url = url_of(with_db(ADMIN_URL, name))
        env = {"MIGRATE_LOCK_LEASE": f"{lease}s"}
        victim = migrate(url, folder, env=env)
        with psycopg.connect(with_db(ADMIN_URL, name), autocommit=True) as watch:
            while not watch.execute("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%%pg_sleep(300)%%' "
                                    "AND pid <> pg_backend_pid()").fetchone()[0]:
                time.sleep(0.02)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        killed = time.perf_counter()
        (folder / "002_sleep.sql").write_text("CREATE TABLE b (id int);\n")
        after = migrate(url, folder, env=env)
        assert after.wait(300) == 0, after.stderr.read()
        return time.perf_counter() - killed
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runners", type=int, default=8)
    parser.add_argument("--migrations", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lease", type=float, default=2.0)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-pooler-"))
    (folder / "0001_seed.sql").write_text("CREATE TABLE seeded (id int);\nINSERT INTO seeded VALUES (1);\n")
    for n in range(2, args.migrations + 1):
        (folder / f"{n:04d}_t.sql").write_text(f"CREATE TABLE t{n} (id int);\nINSERT INTO t{n} VALUES ({n});\n")
    bouncers = {mode: pooler_pgbouncer.start(mode) for mode in ("session", "transaction")}
    rows = []
    try:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            for label, url_of in (("direct", lambda u: u), ("pgbouncer session", bouncers["session"].url),
                                  ("pgbouncer transaction", bouncers["transaction"].url)):
                runs = [runners_round(admin, url_of, folder, args.runners, args.migrations)
                        for _ in range(args.rounds)]
                kills = [kill_round(admin, url_of, args.lease) for _ in range(args.rounds)]
                rows.append((label, statistics.median(runs), statistics.median(kills)))
    finally:
        for b in bouncers.values():
            b.stop()
    print(f"{args.runners} concurrent `migrate up`, {args.migrations} migrations, median of {args.rounds} "
          f"(each migration applied exactly once: checked); lock_lease = {args.lease:g}s")
    print()
    print(f"| connection | {args.runners} runners, wall time | SIGKILL mid-migration -> next `up` done |")
    print("| --- | --- | --- |")
    for label, run, kill in rows:
        print(f"| {label} | {run:.2f} s | {kill:.2f} s |")


if __name__ == "__main__":
    main()
