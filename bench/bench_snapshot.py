"""The schema snapshot: the runner's catalog queries vs SQLAlchemy's Inspector (issue 11, item 7).

    .venv/bin/python bench/bench_snapshot.py [--rounds 5] [--sizes 1,1000] [--url postgresql://...]

For PostgreSQL (a throwaway database per size, dropped at the end) and SQLite (a temporary
file per size), with 1 and 1,000 tables, each ``(id bigint PRIMARY KEY, name text NOT NULL,
amount numeric(10,2), created_at timestamp...)`` plus an index on ``name``, it takes the
snapshot with

- ``queries``: runner.snapshot.take_snapshot (two catalog queries), and
- ``inspector``: snapshot_reflection.reflect_snapshot (bench/snapshot_reflection.py, not shipped) (SQLAlchemy 2's bulk reflection on an
  Engine that borrows the same connection),

each in a FRESH Python process per round (as `migrate doctor` pays it: nothing cached), and
prints the medians over rounds of

- ``SA import``: importing SQLAlchemy, its dialect and snapshot_reflection (0 for ``queries``;
  runner.snapshot itself is imported by both: doctor needs it for the diff);
- ``first``: the first snapshot on the connection (for the Inspector: engine, dialect
  initialisation on the borrowed connection, first compilation of its queries);
- ``repeat``: a second snapshot in the same process (what a long-lived process would pay);
- ``import+first``: what one CLI call pays;
- ``queries``: statements sent to the database for one snapshot (counted on a third call);
- ``diffs vs queries``: how many changes ``diff_snapshots`` reports between the two readers'
  snapshots of the same schema (0: doctor could compare them with each other).

Needs a PostgreSQL role with CREATEDB (default postgresql://postgres@127.0.0.1:5432/postgres,
or MIGRATE_BENCH_DATABASE_URL / --url). Rounds rotate the order of the runs.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
READERS = ("queries", "inspector")


# ----------------------------------------------------------------------------- the child process

class _CountingCursor:
    def __init__(self, cursor: Any, counter: list[int]) -> None:
        self._cursor, self._counter = cursor, counter

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        self._counter[0] += 1
        return self._cursor.execute(*args, **kwargs)

    def __iter__(self) -> Any:
        return iter(self._cursor)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


class _CountingConnection:
    """Counts the statements a reader sends (cursor().execute and connection.execute)."""

    def __init__(self, connection: Any) -> None:
        self._connection, self.count = connection, [0]

    def cursor(self, *args: Any, **kwargs: Any) -> _CountingCursor:
        return _CountingCursor(self._connection.cursor(*args, **kwargs), self.count)

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        self.count[0] += 1
        return self._connection.execute(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)


def _queries(connection: Any, dialect: str, schema: str | None) -> dict[str, Any]:
    """The runner's own reader (runner.snapshot.take_snapshot) on an already open connection."""
    from runner.db import Database
    from runner.dialects import for_url
    from runner.snapshot import take_snapshot
    from runner.urls import parse_url

    address = parse_url("postgresql://bench@localhost/bench" if dialect == "postgresql" else "sqlite:///bench.db")
    return take_snapshot(Database(connection=connection, dialect=for_url(address), schema=schema, address=address))


def child(reader: str, dialect: str, target: str) -> None:
    """One measurement in a fresh process; prints one JSON line."""
    if dialect == "postgresql":
        import psycopg

        connection: Any = psycopg.connect(target, autocommit=True)
    else:
        connection = sqlite3.connect(target, isolation_level=None, detect_types=sqlite3.PARSE_DECLTYPES)
    schema = "public" if dialect == "postgresql" else None
    from runner import snapshot  # noqa: F401 - imported before the clock starts: doctor loads it for the diff either way

    started = time.perf_counter()
    if reader == "inspector":
        import snapshot_reflection as reflection

        if dialect == "postgresql":
            import sqlalchemy.dialects.postgresql.psycopg  # noqa: F401 - create_engine would load it
        else:
            import sqlalchemy.dialects.sqlite.pysqlite  # noqa: F401
        read = reflection.reflect_snapshot
    else:
        read = _queries
    imported = time.perf_counter()
    first = read(connection, dialect, schema)
    done_first = time.perf_counter()
    read(connection, dialect, schema)
    done_repeat = time.perf_counter()
    counting = _CountingConnection(connection)
    read(counting, dialect, schema)
    connection.close()
    print(json.dumps({
        "import_ms": (imported - started) * 1000 if reader == "inspector" else 0.0,
        "first_ms": (done_first - imported) * 1000,
        "repeat_ms": (done_repeat - done_first) * 1000,
        "queries": counting.count[0],
        "tables": len(first["tables"]),
        "indexes": len(first["indexes"]),
    }))


# ----------------------------------------------------------------------------- the parent

def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return urlunsplit((parts.scheme, parts.netloc.replace(":" + parts.password + "@", ":***@"), parts.path,
                           parts.query, ""))
    return url


def schema_sql(dialect: str, count: int) -> str:
    stamp = "timestamptz DEFAULT now()" if dialect == "postgresql" else "timestamp DEFAULT CURRENT_TIMESTAMP"
    return "\n".join(
        f"CREATE TABLE t{n} (id bigint PRIMARY KEY, name text NOT NULL, amount numeric(10,2), created_at {stamp});\n"
        f"CREATE INDEX t{n}_name ON t{n} (name);" for n in range(1, count + 1))


@dataclass
class Target:
    dialect: str
    size: int
    where: str  # URL or file path


@dataclass
class Measure:
    target: Target
    reader: str
    runs: list[dict[str, float]] = field(default_factory=list)

    def median(self, key: str) -> float:
        return statistics.median(r[key] for r in self.runs)


def run_child(reader: str, target: Target) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k != "PGOPTIONS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, __file__, "--child", reader, target.dialect, target.where],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child failed ({reader}, {target.dialect}, {target.size}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def differences(target: Target) -> list[str]:
    """The changes diff_snapshots reports between the two readers' snapshots of ``target``."""
    from snapshot_reflection import reflect_snapshot

    from runner.snapshot import diff_snapshots

    if target.dialect == "postgresql":
        import psycopg

        connection: Any = psycopg.connect(target.where, autocommit=True)
    else:
        connection = sqlite3.connect(target.where, isolation_level=None)
    schema = "public" if target.dialect == "postgresql" else None
    try:
        changes = diff_snapshots(_queries(connection, target.dialect, schema),
                                 reflect_snapshot(connection, target.dialect, schema))
    finally:
        connection.close()
    kinds: dict[str, int] = {}
    for c in changes:
        kinds[c.change] = kinds.get(c.change, 0) + 1
    return [f"{n} {kind}" for kind, n in sorted(kinds.items())]


def table(measures: list[Measure], diffs: dict[tuple[str, int], list[str]]) -> str:
    head = (f"{'database':10} {'tables':>6}  {'reader':9} {'SA import ms':>12} {'first ms':>9} {'repeat ms':>9} "
            f"{'import+first ms':>15} {'queries':>7}  diffs vs queries")
    lines = [head, "-" * len(head)]
    for m in measures:
        total = statistics.median(r["import_ms"] + r["first_ms"] for r in m.runs)
        diff = "-" if m.reader == "queries" else (", ".join(diffs[(m.target.dialect, m.target.size)]) or "0")
        lines.append(f"{m.target.dialect:10} {m.target.size:>6}  {m.reader:9} {m.median('import_ms'):>12.1f} "
                     f"{m.median('first_ms'):>9.1f} {m.median('repeat_ms'):>9.1f} {total:>15.1f} "
                     f"{int(m.median('queries')):>7}  {diff}")
    return "\n".join(lines)


def verdicts(measures: list[Measure]) -> list[str]:
    by = {(m.target.dialect, m.target.size, m.reader): m for m in measures}
    out = []
    for dialect, size in dict.fromkeys((m.target.dialect, m.target.size) for m in measures):
        q, i = by[(dialect, size, "queries")], by[(dialect, size, "inspector")]
        first = statistics.median(b["first_ms"] / a["first_ms"] for a, b in zip(q.runs, i.runs))
        cli = statistics.median((b["import_ms"] + b["first_ms"]) - a["first_ms"] for a, b in zip(q.runs, i.runs))
        repeat = statistics.median(b["repeat_ms"] / a["repeat_ms"] for a, b in zip(q.runs, i.runs))
        faster = "queries" if first > 1 else "inspector"
        out.append(f"{dialect} {size} table(s): the Inspector's first snapshot takes {first:.1f}x the queries' "
                   f"(repeat: {repeat:.1f}x); with its import, one CLI call pays {cli:+.0f} ms for it "
                   f"(paired medians over {len(q.runs)} rounds): faster: {faster}")
    return out


def setup(args: argparse.Namespace, folder: Path) -> tuple[list[Target], list[str]]:
    import psycopg
    from psycopg import sql

    targets: list[Target] = []
    created: list[str] = []
    prefix = f"migrate_bench_snap_{uuid.uuid4().hex[:8]}"
    for size in args.sizes:
        name = f"{prefix}_{size}"
        with psycopg.connect(args.url, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        created.append(name)
        with psycopg.connect(_with_database(args.url, name)) as conn:  # one transaction
            conn.execute(schema_sql("postgresql", size))
            conn.execute("ANALYZE")
        targets.append(Target("postgresql", size, _with_database(args.url, name)))
        path = folder / f"bench_{size}.db"
        lite = sqlite3.connect(path, isolation_level=None)
        lite.executescript("BEGIN;\n" + schema_sql("sqlite", size) + "\nCOMMIT;")
        lite.close()
        targets.append(Target("sqlite", size, str(path)))
    return targets, created


def drop(url: str, names: list[str]) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(url, autocommit=True) as admin:
        for name in names:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child(*argv[1:4])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="fresh-process runs per reader and target (default 5)")
    parser.add_argument("--sizes", default="1,1000", help="table counts, comma-separated (default 1,1000)")
    parser.add_argument("--url", default=os.environ.get("MIGRATE_BENCH_DATABASE_URL", DEFAULT_URL),
                        help="admin URL with CREATEDB rights (env MIGRATE_BENCH_DATABASE_URL)")
    args = parser.parse_args(argv)
    try:
        args.sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        parser.error("--sizes: expected comma-separated integers")
    if args.rounds < 1 or any(s < 1 for s in args.sizes):
        parser.error("--rounds and --sizes must be >= 1")
    import psycopg

    try:
        with psycopg.connect(args.url, connect_timeout=5) as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]
    except psycopg.Error as err:
        print(f"cannot connect to {_redact(args.url)}: {err}", file=sys.stderr)
        return 2
    import sqlalchemy

    compileall.compile_dir(str(ROOT / "runner"), quiet=1)  # as `pip install` does
    with tempfile.TemporaryDirectory(prefix="bench_snapshot_") as tmp:
        created: list[str] = []
        try:
            targets, created = setup(args, Path(tmp))
            measures = [Measure(t, r) for t in targets for r in READERS]
            load_before = os.getloadavg()[0]
            for n in range(args.rounds):
                order = measures[n % len(measures):] + measures[:n % len(measures)]
                for m in order:
                    m.runs.append(run_child(m.reader, m.target))
            diffs = {(t.dialect, t.size): differences(t) for t in targets}
        finally:
            drop(args.url, created)
    print(f"PostgreSQL {version} at {_redact(args.url)}, SQLite {sqlite3.sqlite_version}, SQLAlchemy "
          f"{sqlalchemy.__version__}; {os.cpu_count()} CPUs, load average {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after; medians of {args.rounds} fresh processes per row")
    print(table(measures, diffs))
    print()
    for line in verdicts(measures):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
