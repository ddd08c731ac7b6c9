"""Benchmark of compatibility shims on PostgreSQL; prints one table.

    .venv/bin/python bench/bench_compat.py [--admin-url URL] [--with-10m] [--load-seconds 20]

(a) rename + shim (migration 018 of migrations/, through runner.commands.up) on
    tables of 0 and 1,000,000 rows (and 10,000,000 with --with-10m): the time
    must stay flat, a rename and a view are metadata only.
(b) rollout under load: an old consumer (search_path=compat_017,public from the
    start, before that schema exists) loops SELECT * (checking it gets exactly
    the 017 columns), INSERT and UPDATE by execution_bundle; `migrate up` (the
    CLI) applies 018 a few seconds in; a new consumer starts once it has
    committed and loops the same by container_image. Reports failed queries and
    each loop's worst latency.
(c) `migrate shims audit` (the CLI, and compat.lifecycle.audit in process) with
    1,000 registered shims (1,000 tables, one rename each, 100 of them expired).

Each case uses its own throwaway database, dropped afterwards.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from benchlib import scratch_database  # noqa: E402

TABLE = "remediation_workflow_catalog"
M017 = "017_add_execution_bundle"
M018 = "018_rename_execution_bundle_to_container_image"
COLUMNS_017 = ["workflow_id", "workflow_name", "version", "status", "labels", "content", "created_at",
               "execution_bundle"]
SHIMS_MAIN = (
    "import sys\nfrom runner import cli as c\nfrom compat.cli import shims\n"
    "if 'shims' not in c.cli.commands:\n    c.cli.add_command(shims)\nsys.exit(c.main(sys.argv[1:]))"
)


@contextmanager
def migrations_copy() -> Iterator[Path]:
    """A private copy of migrations/ (removed afterwards)."""
    top = Path(tempfile.mkdtemp(prefix="bench_compat_"))
    try:
        shutil.copytree(ROOT / "migrations", top / "migrations")
        yield top / "migrations"
    finally:
        shutil.rmtree(top, ignore_errors=True)


def run_cli(args: list[str], *, shims: bool = False) -> tuple[int, float, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "MIGRATE_MIGRATIONS", "MIGRATE_CONFIG")}
    env["PYTHONPATH"] = str(ROOT)
    command = [sys.executable, "-c", SHIMS_MAIN, "shims", *args] if shims else [sys.executable, "-m", "runner", *args]
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    return proc.returncode, time.perf_counter() - started, proc.stderr


def settings_for(url: str, folder: Path):
    from runner.config import load_settings

    return load_settings({"database": url, "migrations": str(folder)}, env={}, cwd=ROOT)


# -- (a) -------------------------------------------------------------------------------
def bench_rename(admin_url: str, rows: int) -> dict[str, float]:
    """Seconds to fill; ms to apply 018 (rename + add column + shim + bookkeeping) in process."""
    from runner import commands

    with migrations_copy() as folder, scratch_database(admin_url, "bench_compat") as url:
        settings = settings_for(url, folder)
        commands.up(settings, to=M017)
        started = time.perf_counter()
        with psycopg.connect(url, autocommit=True) as conn:
            if rows:
                conn.execute(
                    f"INSERT INTO {TABLE} (workflow_id, workflow_name, content, execution_bundle) "
                    "SELECT 'wf-' || g, 'workflow ' || g, 'steps: []', 'quay.io/acme/wf:' || (g %% 1000) "
                    "FROM generate_series(1, %s) AS g", (rows,))
            conn.execute(f"VACUUM ANALYZE {TABLE}")
            size = conn.execute(f"SELECT pg_size_pretty(pg_total_relation_size('{TABLE}'))").fetchone()[0]
        fill = time.perf_counter() - started
        started = time.perf_counter()
        result = commands.up(settings)
        elapsed = time.perf_counter() - started
        assert result.applied == [M018] and result.shims, result
        with psycopg.connect(url, options="-c search_path=compat_017,public") as conn:
            cur = conn.execute(f"SELECT * FROM {TABLE} LIMIT 1")
            assert [c.name for c in cur.description] == COLUMNS_017
            (count,) = conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()
            assert count == rows
    return {"rows": rows, "fill_s": fill, "apply_ms": elapsed * 1000, "size": size}


# -- (b) -------------------------------------------------------------------------------
@dataclass
class LoopStats:
    name: str
    ops: int = 0
    failures: int = 0
    worst_ms: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def record(self, seconds: float) -> None:
        self.ops += 1
        self.latencies.append(seconds * 1000)
        self.worst_ms = max(self.worst_ms, seconds * 1000)

    @property
    def p99_ms(self) -> float:
        return statistics.quantiles(self.latencies, n=100)[98] if len(self.latencies) >= 100 else self.worst_ms


def consumer_loop(url: str, search_path: str, column: str, stats: LoopStats, stop: threading.Event,
                  check_columns: list[str] | None) -> None:
    with psycopg.connect(url, autocommit=True, application_name=stats.name,
                         options=f"-c search_path={search_path}") as conn:
        i = 0
        while not stop.is_set():
            i += 1
            key = f"{stats.name}-{i}"
            for query, params in (
                (f"SELECT * FROM {TABLE} ORDER BY workflow_id LIMIT 20", None),
                (f"INSERT INTO {TABLE} (workflow_id, workflow_name, {column}) VALUES (%s, %s, %s)",
                 (key, "bench", "quay.io/acme/bench:1")),
                (f"UPDATE {TABLE} SET {column} = %s WHERE workflow_id = %s", ("quay.io/acme/bench:2", key)),
            ):
                started = time.perf_counter()
                try:
                    cur = conn.execute(query, params)
                    if query.startswith("SELECT"):
                        cur.fetchall()
                        if check_columns is not None and [c.name for c in cur.description] != check_columns:
                            raise AssertionError(f"columns {[c.name for c in cur.description]}")
                    elif cur.rowcount != 1:
                        raise AssertionError(f"rowcount {cur.rowcount}")
                except Exception as err:  # noqa: BLE001 - every failure is counted
                    stats.failures += 1
                    if len(stats.errors) < 3:
                        stats.errors.append(str(err).splitlines()[0])
                stats.record(time.perf_counter() - started)


def bench_rollout(admin_url: str, seconds: float, rows: int = 100_000) -> dict[str, object]:
    from runner import commands

    with migrations_copy() as folder, scratch_database(admin_url, "bench_compat") as url:
        commands.up(settings_for(url, folder), to=M017)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                f"INSERT INTO {TABLE} (workflow_id, workflow_name, execution_bundle) "
                "SELECT 'wf-' || g, 'workflow ' || g, 'quay.io/acme/wf:1' FROM generate_series(1, %s) AS g", (rows,))
        stop = threading.Event()
        old, new = LoopStats("old-consumer-017"), LoopStats("new-consumer-018")
        old_thread = threading.Thread(target=consumer_loop, args=(
            url, "compat_017,public", "execution_bundle", old, stop, COLUMNS_017))
        started = time.perf_counter()
        old_thread.start()
        time.sleep(min(5.0, seconds / 4))
        code, migrate_s, stderr = run_cli(["up", "--database", url, "--migrations", str(folder)])
        if code != 0:
            raise SystemExit(f"migrate up failed during the rollout: {stderr}")
        new_thread = threading.Thread(target=consumer_loop, args=(url, "public", "container_image", new, stop, None))
        new_thread.start()
        time.sleep(max(0.0, seconds - (time.perf_counter() - started)))
        stop.set()
        old_thread.join()
        new_thread.join()
    return {"migrate_s": migrate_s, "loops": [old, new]}


# -- (c) -------------------------------------------------------------------------------
def bench_audit(admin_url: str, shims: int = 1000, expired: int = 100) -> dict[str, float]:
    from compat import lifecycle
    from runner import commands
    from runner.db import connect

    with tempfile.TemporaryDirectory(prefix="bench_audit_") as top, scratch_database(admin_url, "bench_compat") as url:
        folder = Path(top)
        (folder / "001_tables.sql").write_text("".join(
            f"CREATE TABLE t{i:04d} (id int PRIMARY KEY, old_col text, other text);\n" for i in range(shims)))
        (folder / "002_renames.sql").write_text("".join(
            f"-- compat: rename t{i:04d}.old_col -> new_col window={'1s' if i < expired else '30d'}\n"
            for i in range(shims)) + "".join(f"ALTER TABLE t{i:04d} RENAME old_col TO new_col;\n" for i in range(shims)))
        settings = settings_for(url, folder)
        commands.up(settings, to="001_tables")
        started = time.perf_counter()
        result = commands.up(settings)
        create_s = time.perf_counter() - started
        assert result.applied == ["002_renames"] and len(result.shims) == shims, result
        time.sleep(1.2)
        timings = []
        for _ in range(5):
            code, seconds, stderr = run_cli(["audit", "--database", url], shims=True)
            assert code == 1, f"audit should exit 1 with {expired} expired shims: {code} {stderr}"
            timings.append(seconds)
        with connect(url) as db:
            inproc = []
            for _ in range(5):
                started = time.perf_counter()
                report = lifecycle.audit(db)
                inproc.append(time.perf_counter() - started)
            assert len(report.active) == shims and len(report.expired) == expired
        code, baseline, _ = run_cli(["--help"])
    return {"shims": shims, "create_s": create_s, "cli_ms": statistics.median(timings) * 1000,
            "inproc_ms": statistics.median(inproc) * 1000, "cli_help_ms": baseline * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--admin-url", default=os.environ.get(
        "MIGRATE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--with-10m", action="store_true", help="Also run (a) on 10,000,000 rows (a few minutes).")
    parser.add_argument("--load-seconds", type=float, default=20.0)
    args = parser.parse_args()
    import structlog

    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr),
                        wrapper_class=structlog.make_filtering_bound_logger(30))

    sizes = [0, 1_000_000] + ([10_000_000] if args.with_10m else [])
    rename = []
    for rows in sizes:
        print(f"(a) {rows:,} rows ...", file=sys.stderr, flush=True)
        rename.append(bench_rename(args.admin_url, rows))
    print(f"(b) rollout under load, {args.load_seconds:g}s ...", file=sys.stderr, flush=True)
    rollout = bench_rollout(args.admin_url, args.load_seconds)
    print("(c) audit with 1,000 shims ...", file=sys.stderr, flush=True)
    audit = bench_audit(args.admin_url)

    print()
    print("| case | measure | result |")
    print("|---|---|---|")
    for r in rename:
        print(f"| (a) rename + shim, {r['rows']:,} rows ({r['size']}) | apply 018 (rename, add column, shim, "
              f"registry, bookkeeping) | {r['apply_ms']:.0f} ms (table filled in {r['fill_s']:.0f} s) |")
    print(f"| (b) rollout under load, {args.load_seconds:g} s | `migrate up` of 018 (CLI, wall) | "
          f"{rollout['migrate_s'] * 1000:.0f} ms |")
    for loop in rollout["loops"]:
        detail = f" ({'; '.join(loop.errors)})" if loop.errors else ""
        print(f"| (b) {loop.name} | queries / failed / worst / p99 | {loop.ops:,} / {loop.failures} / "
              f"{loop.worst_ms:.1f} ms / {loop.p99_ms:.1f} ms{detail} |")
    print(f"| (c) `shims audit`, {audit['shims']:,} shims (100 expired) | CLI wall, median of 5 (exit 1) | "
          f"{audit['cli_ms']:.0f} ms (`migrate --help`: {audit['cli_help_ms']:.0f} ms) |")
    print(f"| (c) compat.lifecycle.audit in process | median of 5 | {audit['inproc_ms']:.1f} ms |")
    print(f"| (c) creating the 1,000 shims | `runner.commands.up` of one migration (1,000 directives) | {audit['create_s']:.1f} s |")


if __name__ == "__main__":
    main()
