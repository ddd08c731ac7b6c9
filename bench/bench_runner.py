"""Benchmark `migrate` against yoyo's own CLI and plain `psql -f` (one command, prints a table).

    .venv/bin/python bench/bench_runner.py [--count 1000] [--rounds 3] [--noop-runs 9] [--cold-runs 10]

What it measures, on the same PostgreSQL, in one run (every figure is the wall time of a
fresh CLI process, as a deploy pipeline would see it):

- apply: ``--count`` trivial migrations (``CREATE TABLE tN (id int)``, one file each) on a
  fresh, empty database with (a) ``migrate up``, (b) ``yoyo apply --batch`` and (c) ``psql -f``
  on the concatenated statements (autocommit: one transaction per statement, psql's default).
  Each tool gets a new database per round and starts after a ``CHECKPOINT`` (when the role may
  run one); the tools take turns going first, so server-side drift hits them alike.
- no-op up: ``migrate up`` and ``yoyo apply --batch`` again on a database where all
  ``--count`` migrations are applied.
- cold start: ``migrate --help`` and, for reference, ``python -c pass`` with the same
  interpreter; ``migrate status`` on the applied database; and which heavy modules
  (SQLAlchemy, pglast, yoyo, psycopg) each command imports (``python -X importtime``).

The server is PostgreSQL at ``MIGRATE_BENCH_DATABASE_URL`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``): a URL to a database the benchmark may
connect to with CREATEDB rights. It creates throwaway databases named
``migrate_bench_<random>_...`` and drops them at the end (also on failure).

Targets (issue 2): apply <= 1.5x psql; no-op up <= 1.0x yoyo; ``--help`` and ``up``/``status``
do not import SQLAlchemy. The targets are judged on paired ratios: in each round the tools run
one right after the other, the ratio of their times is taken per round, and the verdict is the
median of those (a shared host's speed drifts by 2x between rounds; within a round it is the
same for both). Ratios of best times and of medians are printed beside it. The project's
bytecode is compiled first, as ``pip install`` does.
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
HEAVY_MODULES = ("sqlalchemy", "pglast", "yoyo", "psycopg", "sqlparse", "structlog")
# Environment variables that would point the CLIs somewhere else.
_SCRUB = ("DATABASE_URL", "MIGRATE_MIGRATIONS", "MIGRATE_CONFIG", "MIGRATE_LOG_FORMAT", "PGOPTIONS")


# ----------------------------------------------------------------------------- helpers

def with_database(url: str, dbname: str, scheme: str | None = None) -> str:
    parts = urlsplit(url)
    return urlunsplit((scheme or parts.scheme, parts.netloc, "/" + dbname, parts.query, ""))


def redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(":" + parts.password + "@", ":***@")
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
    return url


@dataclass
class Server:
    """Creates and drops the benchmark's throwaway databases."""

    admin_url: str
    prefix: str = field(default_factory=lambda: f"migrate_bench_{uuid.uuid4().hex[:8]}")
    created: list[str] = field(default_factory=list)

    def create(self, label: str) -> str:
        name = f"{self.prefix}_{label}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self.created.append(name)
        return name

    def drop(self, name: str) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        if name in self.created:
            self.created.remove(name)

    def drop_all(self) -> None:
        for name in list(self.created):
            try:
                self.drop(name)
            except psycopg.Error as err:  # keep going: drop what we can
                print(f"warning: could not drop {name}: {err}", file=sys.stderr)

    def can_checkpoint(self) -> bool:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            return bool(conn.execute(
                "SELECT rolsuper OR pg_has_role(current_user, 'pg_checkpoint', 'USAGE') FROM pg_roles "
                "WHERE rolname = current_user").fetchone()[0])

    def checkpoint(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute("CHECKPOINT")

    def url(self, name: str, scheme: str | None = None) -> str:
        return with_database(self.admin_url, name, scheme)

    def count_tables(self, name: str) -> int:
        with psycopg.connect(self.url(name), autocommit=True) as conn:
            return conn.execute(
                "SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname = 'public' AND tablename ~ '^t[0-9]+$'"
            ).fetchone()[0]


def env_for_cli() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _SCRUB}


def timed(cmd: list[str], cwd: Path, log: Path | None = None, env: dict[str, str] | None = None) -> float:
    """Wall time of ``cmd`` (environment: ``env``, else :func:`env_for_cli`); raises with its output when it fails."""
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    try:
        started = time.perf_counter()
        proc = subprocess.run(cmd, cwd=cwd, env=env or env_for_cli(), stdout=subprocess.DEVNULL, stderr=out)
        elapsed = time.perf_counter() - started
    finally:
        if log:
            out.close()  # type: ignore[union-attr]
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:] if log else ""
        shown = " ".join(redact(part) if "://" in part else part for part in cmd)
        raise SystemExit(f"benchmark command failed (exit {proc.returncode}): {shown}\n{tail}")
    return elapsed


def write_migrations(folder: Path, count: int) -> Path:
    """``count`` one-statement migration files, plus their concatenation for psql."""
    folder.mkdir(parents=True)
    width = max(4, len(str(count)))
    statements = []
    for n in range(1, count + 1):
        statement = f"CREATE TABLE t{n} (id int);\n"
        (folder / f"{n:0{width}d}_create_t{n}.sql").write_text(statement, encoding="utf-8")
        statements.append(statement)
    script = folder.parent / "all.sql"
    script.write_text("".join(statements), encoding="utf-8")
    return script


def imported_modules(cmd: list[str], cwd: Path) -> tuple[float, set[str]]:
    """Total import time (s) of ``cmd`` (a python -m invocation) and the top-level packages it imported."""
    proc = subprocess.run([sys.executable, "-X", "importtime", *cmd], cwd=cwd, env=env_for_cli(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    total_us = 0
    names: set[str] = set()
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, _cumulative, name = line[len("import time:"):].split("|")
        total_us += int(self_us)
        names.add(name.strip().split(".")[0])
    return total_us / 1e6, names


# ----------------------------------------------------------------------------- the run

@dataclass
class Row:
    label: str
    times: list[float]
    group: str  # "apply", "noop", "cold"
    tool: str   # "psql", "yoyo", "migrate", "other"
    note: str = ""

    @property
    def best(self) -> float:
        return min(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def run(args: argparse.Namespace) -> list[Row]:
    # Run the project as installed for use: `pip install` compiles its bytecode, an editable
    # checkout under PYTHONDONTWRITEBYTECODE would compile every module at every start.
    for package in ("runner", "compat"):
        compileall.compile_dir(ROOT / package, quiet=1)
    server = Server(args.url)
    work = Path(tempfile.mkdtemp(prefix="migrate-bench-"))
    migrate = [str(BIN / "migrate")]
    yoyo = [str(BIN / "yoyo")]
    psql = shutil.which("psql")
    rows: dict[str, Row] = {}

    def add(key: str, label: str, group: str, tool: str, seconds: float) -> None:
        rows.setdefault(key, Row(label, [], group, tool)).times.append(seconds)

    try:
        folder = work / "migrations"
        script = write_migrations(folder, args.count)
        n = args.count
        keep: dict[str, str] = {}
        checkpoint = server.can_checkpoint()
        for r in range(1, args.rounds + 1):
            # The tools take turns going first; each starts after a CHECKPOINT (when the role may
            # run one), so none of them pays for a checkpoint the one before it caused.
            tools = ["psql", "yoyo", "migrate", "migrate_used"] if psql else ["yoyo", "migrate", "migrate_used"]
            shift = (r - 1) % len(tools)
            for tool in tools[shift:] + tools[:shift]:
                db = server.create(f"{tool}_{r}")
                if checkpoint:
                    server.checkpoint()
                if tool == "psql":
                    cmd = [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", server.url(db), "-f", str(script)]
                    label = f"apply {n}: psql -f (autocommit)"
                elif tool == "yoyo":
                    cmd = [*yoyo, "apply", "--batch", "--no-config-file", "--database",
                           server.url(db, "postgresql+psycopg"), str(folder)]
                    label = f"apply {n}: yoyo apply"
                else:
                    cmd = [*migrate, "--database", server.url(db), "--migrations", str(folder), "--log-format",
                           "json", "up"]
                    label = f"apply {n}: migrate up"
                    if tool == "migrate_used":  # a table already there: not fresh, no batches
                        with psycopg.connect(server.url(db), autocommit=True) as conn:
                            conn.execute("CREATE TABLE already_here (id int)")
                        label = f"apply {n}: migrate up, database not fresh"
                add(f"apply_{tool}", label, "apply", tool, timed(cmd, work, work / f"{tool}.log"))
                _check(server, db, n, tool)
                if r < args.rounds or tool in ("psql", "migrate_used"):
                    server.drop(db)
                else:
                    keep[tool] = db
            print(f"round {r}/{args.rounds} done", file=sys.stderr)

        noop = {
            "yoyo": [*yoyo, "apply", "--batch", "--no-config-file", "--database",
                     server.url(keep["yoyo"], "postgresql+psycopg"), str(folder)],
            "migrate": [*migrate, "--database", server.url(keep["migrate"]), "--migrations", str(folder),
                        "--log-format", "json", "up"],
        }
        for i in range(args.noop_runs):
            for tool in (("yoyo", "migrate") if i % 2 == 0 else ("migrate", "yoyo")):
                add(f"noop_{tool}", f"no-op up, {n} applied: {tool} {'apply' if tool == 'yoyo' else 'up'}", "noop",
                    tool, timed(noop[tool], work, work / f"{tool}.log"))
        for _ in range(args.noop_runs):
            add("status_migrate", f"migrate status, {n} applied", "cold", "migrate",
                timed([*migrate, "--database", server.url(keep["migrate"]), "--migrations", str(folder),
                       "--log-format", "json", "status"], work, work / "migrate.log"))

        for _ in range(args.cold_runs):
            add("cold_python", "cold start: python -c pass", "cold", "other",
                timed([sys.executable, "-c", "pass"], work))
            add("cold_help", "cold start: migrate --help", "cold", "migrate", timed([*migrate, "--help"], work))
            add("cold_yoyo_help", "cold start: yoyo --help", "cold", "yoyo", timed([*yoyo, "--help"], work))

        target = ["--database", server.url(keep["migrate"]), "--migrations", str(folder), "--log-format", "json"]
        for key, argv in (("cold_help", ["-m", "runner", "--help"]),
                          ("status_migrate", ["-m", "runner", *target, "status"]),
                          ("noop_migrate", ["-m", "runner", *target, "up"])):
            seconds, names = imported_modules(argv, work)
            heavy = [m for m in HEAVY_MODULES if m in names]
            rows[key].note = f"imports {seconds * 1000:.0f} ms: {', '.join(heavy) or 'none of the heavy ones'}"
    finally:
        server.drop_all()
        shutil.rmtree(work, ignore_errors=True)
    return list(rows.values())


def _check(server: Server, db: str, expected: int, tool: str) -> None:
    found = server.count_tables(db)
    if found != expected:
        raise SystemExit(f"{tool}: expected {expected} tables t1..t{expected}, found {found}")


# ----------------------------------------------------------------------------- report

def table(rows: list[Row]) -> str:
    """Ratios compare best times: the least disturbed run of each (the host may be shared)."""
    ref = {(r.group, r.tool): r.best for r in rows}
    psql = ref.get(("apply", "psql"))
    lines = [f"{'benchmark':42} {'runs':>4} {'best s':>8} {'median s':>9} {'vs psql':>8} {'vs yoyo':>8}  notes",
             "-" * 110]
    for r in rows:
        vs_psql = f"{r.best / psql:.2f}x" if psql and r.group == "apply" else ""
        yoyo = ref.get((r.group, "yoyo"))
        vs_yoyo = f"{r.best / yoyo:.2f}x" if yoyo and r.group in ("apply", "noop") else ""
        if r.label.startswith("cold start: migrate --help"):
            vs_yoyo = f"{r.best / ref[('cold', 'yoyo')]:.2f}x" if ("cold", "yoyo") in ref else ""
        lines.append(f"{r.label:42} {len(r.times):>4} {r.best:>8.3f} {r.median:>9.3f} {vs_psql:>8} {vs_yoyo:>8}  {r.note}")
    return "\n".join(lines)


def per_migration(rows: list[Row], count: int) -> str:
    """The cost of one migration without the fixed start-up cost: (apply - no-op up) / count."""
    by = {(r.group, r.tool): r for r in rows}
    parts = []
    for tool in ("migrate", "yoyo"):
        if ("apply", tool) in by and ("noop", tool) in by:
            ms = (by[("apply", tool)].best - by[("noop", tool)].best) / count * 1000
            parts.append(f"{tool} {ms:.2f} ms")
    if ("apply", "psql") in by:
        parts.append(f"psql {by[('apply', 'psql')].best / count * 1000:.2f} ms (apply / count)")
    return "per migration, start-up excluded ((apply - no-op up) / count, best times): " + ", ".join(parts)


def paired(a: Row, b: Row) -> float:
    """The median over rounds of a's time / b's time in the same round (the runs of one round
    follow each other, so they share the host's state of the moment)."""
    return statistics.median(x / y for x, y in zip(a.times, b.times))


def verdicts(rows: list[Row]) -> list[str]:
    """Targets are judged on paired ratios; best-time and median ratios are shown beside them."""
    by = {(r.group, r.tool): r for r in rows}
    out = []
    for group, other, target, what in (("apply", "psql", 1.5, "apply"), ("noop", "yoyo", 1.0, "no-op up")):
        if (group, other) not in by:
            continue
        mine, theirs = by[(group, "migrate")], by[(group, other)]
        ratio = paired(mine, theirs)
        each = ", ".join(f"{x / y:.2f}" for x, y in zip(mine.times, theirs.times))
        out.append(f"{'PASS' if ratio <= target else 'MISS'}: {what} is {ratio:.2f}x {other}, median of "
                   f"{len(mine.times)} paired runs [{each}] (best times {mine.best / theirs.best:.2f}x, medians "
                   f"{mine.median / theirs.median:.2f}x; target <= {target}x)")
    if ("apply", "migrate_used") in by and ("apply", "psql") in by:
        used, psql = by[("apply", "migrate_used")], by[("apply", "psql")]
        out.append(f"info: on a database that is not fresh (no batches) apply is {paired(used, psql):.2f}x psql, "
                   f"median of {len(used.times)} paired runs (best times {used.best / psql.best:.2f}x)")
    heavy = [r for r in rows if r.tool == "migrate" and "sqlalchemy" in r.note]
    out.append(("MISS: SQLAlchemy imported by " + ", ".join(r.label for r in heavy)) if heavy
               else "PASS: --help, status and up do not import SQLAlchemy")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="migrations to apply (default 1000)")
    parser.add_argument("--rounds", type=int, default=3, help="fresh-database apply runs per tool (default 3)")
    parser.add_argument("--noop-runs", type=int, default=9, help="no-op up / status runs per tool (default 9)")
    parser.add_argument("--cold-runs", type=int, default=10, help="cold-start runs (default 10)")
    parser.add_argument("--url", default=os.environ.get("MIGRATE_BENCH_DATABASE_URL", DEFAULT_URL),
                        help="admin URL with CREATEDB rights (env MIGRATE_BENCH_DATABASE_URL)")
    args = parser.parse_args(argv)
    if args.count < 1 or args.rounds < 1 or args.noop_runs < 1 or args.cold_runs < 1:
        parser.error("--count, --rounds, --noop-runs and --cold-runs must be >= 1")
    if not shutil.which("psql"):
        print("warning: psql not found on PATH: the psql row and the vs-psql ratios are left out", file=sys.stderr)
    try:
        psycopg.connect(args.url, connect_timeout=5).close()
    except psycopg.Error as err:
        print(f"cannot connect to {redact(args.url)}: {err}", file=sys.stderr)
        return 2
    with psycopg.connect(args.url) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]
        fsync, sync = conn.execute("SELECT current_setting('fsync'), current_setting('synchronous_commit')").fetchone()
    load_before = os.getloadavg()[0]
    rows = run(args)
    print(f"PostgreSQL {version} at {redact(args.url)} (fsync={fsync}, synchronous_commit={sync}); "
          f"{args.count} migrations; {os.cpu_count()} CPUs, load average {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after; wall time of a fresh CLI process per run")
    print(table(rows))
    print(per_migration(rows, args.count))
    print()
    for line in verdicts(rows):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
