"""Benchmark `migrate fleet up` over many databases and many tenant schemas (one command, prints a table).

    .venv/bin/python bench/bench_fleet.py --quick          # 20 databases, 100 schemas (~2-4 minutes)
    .venv/bin/python bench/bench_fleet.py                  # 200 databases, 1,000 schemas (long)
    .venv/bin/python bench/bench_fleet.py --databases 50 --schemas 0 --parallel 1,16

Two fleets, measured separately, each target with the example migrations (migrations/) plus 20
more (23 in all), applied from empty:

- ``databases``: N databases ``fleetbench_<random>_<i>`` (a fleet file lists them);
- ``schemas``: M tenant schemas ``tenant_<i>`` in one database (``--targets-sql`` on a table
  of tenant ids in that database, ``--schema-template tenant_{id}``; ``--no-compat`` for every
  tool here, as single `migrate up` runs would share one ``compat_017`` schema).

For each: wall time of ``migrate fleet up`` at ``--parallel`` 1, 4, 16, 32; of a shell loop of
single ``migrate up`` runs; of ``xargs -P 16`` of them; the peak RSS of the fleet runner (the
child's ``ru_maxrss``); the most connections of the runner seen at once (``pg_stat_activity``
sampled every 20 ms: ``application_name = 'migrate'`` on the fleet's databases); and the time of
``migrate fleet status`` over the migrated fleet. Each measured run starts from empty targets.

Targets (issue 14): parallel 16 >= 5x faster than the shell loop and faster than xargs -P 16;
memory flat in the number of targets; connections <= --parallel + 1.

Server: ``MIGRATE_BENCH_DATABASE_URL`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``),
with CREATEDB rights. Watch ``max_connections`` (``SHOW max_connections``): the largest
``--parallel`` plus what else uses the server must fit. Databases are dropped at the end.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
_SCRUB = ("DATABASE_URL", "MIGRATE_MIGRATIONS", "MIGRATE_CONFIG", "MIGRATE_LOG_FORMAT", "MIGRATE_SCHEMA",
          "MIGRATE_FLEET", "JOB_COMPLETION_INDEX", "MIGRATE_SHARD_COUNT", "MIGRATE_SHARD_INDEX", "PGOPTIONS")


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))


def env() -> dict[str, str]:
    found = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    found["PYTHONDONTWRITEBYTECODE"] = "0"
    return found


def write_migrations(folder: Path) -> None:
    shutil.copytree(ROOT / "migrations", folder)
    for i in range(20):
        n = 19 + i
        if i % 2 == 0:
            body = (f"CREATE TABLE bench_t{n} (id bigint PRIMARY KEY, workflow_id varchar(64), note text);\n"
                    f"CREATE INDEX bench_t{n}_workflow_idx ON bench_t{n} (workflow_id);\n")
        else:
            body = f"ALTER TABLE remediation_workflow_catalog ADD COLUMN extra_{n} text;\n"
        (folder / f"{n:03d}_bench_step_{n}.sql").write_text(body, encoding="utf-8")


class ConnectionSampler(threading.Thread):
    """The most runner sessions (application_name 'migrate') seen at once on the given databases."""

    def __init__(self, admin_url: str, databases: list[str]) -> None:
        super().__init__(daemon=True)
        self.admin_url, self.databases = admin_url, databases
        self.peak = 0
        self._halt = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True, application_name="fleet-bench-sampler") as conn:
            while not self._halt.is_set():
                n = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'migrate' "
                                 "AND datname = ANY(%s)", (self.databases,)).fetchone()[0]
                self.peak = max(self.peak, n)
                time.sleep(0.02)

    def stop(self) -> int:
        self._halt.set()
        self.join()
        return self.peak


class SocketSampler(threading.Thread):
    """The most sockets the process ``pid`` held at once (/proc/PID/fd): the runner's connections,
    counted at the client, exactly as it holds them (a server-side count also sees backends that
    are still exiting after the runner closed them)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self._halt = threading.Event()

    def run(self) -> None:
        fd_dir = Path(f"/proc/{self.pid}/fd")
        while not self._halt.is_set():
            try:
                n = sum(1 for fd in fd_dir.iterdir() if os.readlink(fd).startswith("socket:"))
            except OSError:
                n = 0
            self.peak = max(self.peak, n)
            time.sleep(0.01)

    def stop(self) -> int:
        self._halt.set()
        self.join()
        return self.peak


@dataclass
class Row:
    fleet: str
    what: str
    seconds: float
    rss_mb: float | None = None
    connections: int | None = None  # client side (fleet runs)
    server_sessions: int | None = None  # pg_stat_activity
    ok: bool = True


def timed(argv: list[str], sampler: ConnectionSampler, stdin: str | None = None,
          shell: bool = False) -> tuple[float, float | None, int | None, int, bool]:
    """(seconds, peak RSS in MB of the process, most sockets it held, most server sessions, exit 0?)."""
    command = ["bash", "-c", argv[0]] if shell else argv
    sampler.start()
    started = time.perf_counter()
    proc = subprocess.Popen(command, env=env(), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    sockets = None if shell else SocketSampler(proc.pid)
    if sockets:
        sockets.start()
    errors: list[str] = []
    reader = threading.Thread(target=lambda: errors.append(proc.stderr.read()), daemon=True)
    reader.start()
    if stdin:
        proc.stdin.write(stdin)
    proc.stdin.close()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    peak_sockets = sockets.stop() if sockets else None
    peak_sessions = sampler.stop()
    reader.join()
    if proc.returncode != 0:
        print(f"  ! exit {proc.returncode}: {''.join(errors)[-300:]}", file=sys.stderr)
    rss = None if shell else usage.ru_maxrss / 1024
    return seconds, rss, peak_sockets, peak_sessions, proc.returncode == 0


class Bench:
    def __init__(self, admin: str, prefix: str, folder: Path, tmp: Path) -> None:
        self.admin, self.prefix, self.folder, self.tmp = admin, prefix, folder, tmp
        self.created: list[str] = []

    def conn(self, url: str | None = None) -> psycopg.Connection:
        return psycopg.connect(url or self.admin, autocommit=True)

    def create(self, name: str) -> str:
        with self.conn() as c:
            c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self.created.append(name)
        return with_database(self.admin, name)

    def drop_all(self) -> None:
        with self.conn() as c:
            for name in self.created:
                c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def migrate(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "runner", "--migrations", str(self.folder), "--log-format", "json", *args]

    # -- databases ---------------------------------------------------------------------
    def databases(self, n: int, parallels: list[int]) -> list[Row]:
        names = [f"{self.prefix}_db_{i}" for i in range(n)]
        urls = [self.create(name) for name in names]
        fleet = self.tmp / "fleet.toml"
        fleet.write_text("".join(f'[targets.db{i}]\nurl = "{u}"\n' for i, u in enumerate(urls)), encoding="utf-8")
        listing = "\n".join(urls) + "\n"
        label = f"{n} databases"

        def reset() -> None:
            for url in urls:
                with self.conn(url) as c:
                    c.execute("DROP SCHEMA IF EXISTS public CASCADE; DROP SCHEMA IF EXISTS compat_017 CASCADE; "
                              "CREATE SCHEMA public")

        rows = []
        for parallel in parallels:
            reset()
            s, rss, peak, seen, ok = timed(self.migrate("fleet", "up", "--fleet", str(fleet), "--parallel",
                                                        str(parallel)), ConnectionSampler(self.admin, names))
            rows.append(Row(label, f"fleet up --parallel {parallel}", s, rss, peak, seen, ok))
            print(f"  {label}: fleet up --parallel {parallel}: {s:.1f}s", file=sys.stderr)
        status = timed(self.migrate("fleet", "status", "--fleet", str(fleet), "--parallel", "16"),
                       ConnectionSampler(self.admin, names))
        rows.append(Row(label, "fleet status --parallel 16", *status))
        single = " ".join(self.migrate())
        reset()
        s, _, _, seen, ok = timed([f"while read -r url; do {single} --database \"$url\" up >/dev/null || exit 1; "
                                   "done"], ConnectionSampler(self.admin, names), stdin=listing, shell=True)
        rows.append(Row(label, "shell loop of migrate up", s, None, None, seen, ok))
        print(f"  {label}: shell loop: {s:.1f}s", file=sys.stderr)
        reset()
        s, _, _, seen, ok = timed([f"xargs -P 16 -I{{}} {single} --database {{}} up >/dev/null"],
                                  ConnectionSampler(self.admin, names), stdin=listing, shell=True)
        rows.append(Row(label, "xargs -P 16 migrate up", s, None, None, seen, ok))
        return rows

    # -- schemas -----------------------------------------------------------------------
    def schemas(self, m: int, parallels: list[int]) -> list[Row]:
        name = f"{self.prefix}_tenants"
        label = f"{m} schemas, 1 database"
        rows = []
        query = "SELECT id FROM public.tenants ORDER BY id"
        listing = "\n".join(f"tenant_{i}" for i in range(m)) + "\n"

        def fresh() -> str:
            with self.conn() as c:
                c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            if name in self.created:
                self.created.remove(name)
            url = self.create(name)
            with self.conn(url) as c:
                c.execute("CREATE TABLE public.tenants (id int PRIMARY KEY)")
                c.execute("INSERT INTO public.tenants SELECT g FROM generate_series(0, %s) g", (m - 1,))
            return url

        for parallel in parallels:
            url = fresh()
            s, rss, peak, seen, ok = timed(self.migrate("--database", url, "fleet", "up", "--no-compat",
                                                        "--targets-sql", query, "--schema-template", "tenant_{id}",
                                                        "--parallel", str(parallel)),
                                           ConnectionSampler(self.admin, [name]))
            rows.append(Row(label, f"fleet up --parallel {parallel}", s, rss, peak, seen, ok))
            print(f"  {label}: fleet up --parallel {parallel}: {s:.1f}s", file=sys.stderr)
        status = timed(self.migrate("--database", url, "fleet", "status", "--targets-sql", query,
                                    "--schema-template", "tenant_{id}", "--parallel", "16"),
                       ConnectionSampler(self.admin, [name]))
        rows.append(Row(label, "fleet status --parallel 16", *status))
        single = " ".join(self.migrate())
        url = fresh()
        s, _, _, seen, ok = timed([f"while read -r s; do MIGRATE_SCHEMA=$s {single} --database {url} up "
                                   "--no-compat >/dev/null || exit 1; done"], ConnectionSampler(self.admin, [name]),
                                  stdin=listing, shell=True)
        rows.append(Row(label, "shell loop of migrate up", s, None, None, seen, ok))
        print(f"  {label}: shell loop: {s:.1f}s", file=sys.stderr)
        url = fresh()
        s, _, _, seen, ok = timed([f"xargs -P 16 -I{{}} env MIGRATE_SCHEMA={{}} {single} --database {url} up "
                                   "--no-compat >/dev/null"], ConnectionSampler(self.admin, [name]), stdin=listing,
                                  shell=True)
        rows.append(Row(label, "xargs -P 16 migrate up", s, None, None, seen, ok))
        return rows


def render(rows: list[Row]) -> str:
    out = [f"{'fleet':24} {'run':30} {'wall s':>8} {'vs loop':>8} {'vs xargs':>9} {'peak RSS MB':>12} "
           f"{'max conns':>10} {'server saw':>11}  ok", "-" * 124]
    for fleet in dict.fromkeys(r.fleet for r in rows):
        mine = [r for r in rows if r.fleet == fleet]
        loop = next((r.seconds for r in mine if r.what.startswith("shell loop")), None)
        xargs = next((r.seconds for r in mine if r.what.startswith("xargs")), None)
        for r in mine:
            vs_loop = f"{loop / r.seconds:.1f}x" if loop and "status" not in r.what else ""
            vs_xargs = f"{xargs / r.seconds:.2f}x" if xargs and "status" not in r.what else ""
            rss = f"{r.rss_mb:.0f}" if r.rss_mb else ""
            conns = "" if r.connections is None else str(r.connections)
            seen = "" if r.server_sessions is None else str(r.server_sessions)
            out.append(f"{fleet:24} {r.what:30} {r.seconds:8.1f} {vs_loop:>8} {vs_xargs:>9} {rss:>12} {conns:>10} "
                       f"{seen:>11}  {'yes' if r.ok else 'NO'}")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 databases and 100 schemas")
    parser.add_argument("--databases", type=int, help="number of databases (default 200; --quick 20; 0: skip)")
    parser.add_argument("--schemas", type=int, help="number of tenant schemas (default 1000; --quick 100; 0: skip)")
    parser.add_argument("--parallel", default="1,4,16,32", help="--parallel values of fleet up (default 1,4,16,32)")
    parser.add_argument("--url", default=os.environ.get("MIGRATE_BENCH_DATABASE_URL", DEFAULT_URL))
    args = parser.parse_args()
    n = args.databases if args.databases is not None else (20 if args.quick else 200)
    m = args.schemas if args.schemas is not None else (100 if args.quick else 1000)
    parallels = [int(p) for p in args.parallel.split(",")]
    with psycopg.connect(args.url, autocommit=True) as c:
        limit = int(c.execute("SHOW max_connections").fetchone()[0])
        used = c.execute("SELECT count(*) FROM pg_stat_activity").fetchone()[0]
        version = c.execute("SHOW server_version").fetchone()[0]
    if max(parallels) + 2 > limit - used:
        print(f"bench_fleet: max_connections is {limit} and {used} are in use: --parallel {max(parallels)} "
              "does not fit; lower --parallel", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    folder = tmp / "migrations"
    write_migrations(folder)
    bench = Bench(args.url, f"fleetbench_{uuid.uuid4().hex[:6]}", folder, tmp)
    rows: list[Row] = []
    try:
        if n:
            rows += bench.databases(n, parallels)
        if m:
            rows += bench.schemas(m, parallels)
    finally:
        bench.drop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"PostgreSQL {version}, max_connections {limit}; {os.cpu_count()} CPUs; "
          "23 migrations per target; bench's own RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB")
    print(render(rows))
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
