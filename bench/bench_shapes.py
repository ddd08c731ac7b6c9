"""Benchmark of compat shapes (issue 12) on PostgreSQL; prints one table per part.

    .venv/bin/python bench/bench_shapes.py [--quick] [--admin-url URL] [--load-seconds 20]

(a) auto mode's cost: N trivial migrations (new tables only, nothing to shim) applied in
    [compat] mode = "declared" and "auto" (fresh database each round, rounds alternate), then a
    no-op `up` in each mode. Target: auto within 5% (apply) and 2% (no-op) of declared.
(b) M migrations, each altering one of M existing tables (a rename or an added column), with 3
    compat windows active (each covering every table): ms per migration without shims (no
    windows), with shims (declared mode, undeclared changes: the 3 windows' views of the table are
    dropped and rebuilt around each migration, the windows stay 3), and in auto mode for the
    first 50 (each migration also opens the window of the version before it and adds the table to
    every open window, so windows pile up from 3 to 53: the worst case of many migrations in one
    deploy; in practice windows expire).
(c) rollout under load: three consumers pinned at versions 001, 002, 003 (search_path
    compat_V,public) run SELECT * (exact columns checked), INSERT and UPDATE through their old
    names on random tables for --load-seconds while (b)'s M migrations apply in one `up`
    (--rollout-mode declared: the 3 windows rebuilt; auto: windows pile up): failed queries, p99
    and worst latency per consumer.
(d) the shim's cost against table size: a migration renaming a column (one view) on tables of
    0 .. 10M rows (--quick: 0 .. 100k).

--quick: N=200, M=50, sizes 0/10k/100k, 5 s of load (the full run: N=1000, M=200, 0/1M/10M, 20 s).
Each case uses its own throwaway database, dropped afterwards.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from benchlib import scratch_database  # noqa: E402


def settings_for(url: str, folder: Path, mode: str):
    from runner.config import load_settings

    settings = load_settings({"database": url, "migrations": str(folder)}, env={}, cwd=ROOT)
    settings.compat.mode = mode
    return settings


def write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


# -- (a) --------------------------------------------------------------------------------------
def bench_auto_cost(admin_url: str, count: int, rounds: int, noop_runs: int) -> list[list[str]]:
    """Paired: in each round both modes apply to fresh databases one right after the other (the
    order alternates), then their no-op `up` runs interleave; verdict = median of per-pair ratios."""
    from runner import commands

    def timed(settings) -> float:
        started = time.perf_counter()
        commands.up(settings)
        return time.perf_counter() - started

    with tempfile.TemporaryDirectory() as top:
        folder = write(Path(top) / "m", {f"{i:04d}_t{i}.sql": f"CREATE TABLE t{i} (id int PRIMARY KEY, v text);\n"
                                         for i in range(1, count + 1)})
        apply: dict[str, list[float]] = {"declared": [], "auto": []}
        noop: dict[str, list[float]] = {"declared": [], "auto": []}
        apply_ratio: list[float] = []
        noop_ratio: list[float] = []
        for n in range(rounds):
            order = ("declared", "auto") if n % 2 == 0 else ("auto", "declared")
            with scratch_database(admin_url, "bench_shapes") as url_a, scratch_database(admin_url, "bench_shapes") as url_b:
                settings = {mode: settings_for(url, folder, mode) for mode, url in zip(order, (url_a, url_b))}
                for mode in order:
                    apply[mode].append(timed(settings[mode]))
                apply_ratio.append(apply["auto"][-1] / apply["declared"][-1])
                for k in range(noop_runs):
                    for mode in (order if k % 2 == 0 else order[::-1]):
                        noop[mode].append(timed(settings[mode]))
                    noop_ratio.append(noop["auto"][-1] / noop["declared"][-1])
    rows = []
    for label, data, ratios, unit in ((f"{count} new-table migrations", apply, apply_ratio, 1),
                                      ("no-op up", noop, noop_ratio, 1000)):
        scale = "s" if unit == 1 else "ms"
        rows.append([label, f"{statistics.median(data['declared']) * unit:.3f} {scale}",
                     f"{statistics.median(data['auto']) * unit:.3f} {scale}",
                     f"{(statistics.median(ratios) - 1) * 100:+.1f}%", str(len(ratios))])
    return rows


# -- (b)/(c) ----------------------------------------------------------------------------------
VERSIONS = {"001": ["id", "a", "b"], "002": ["id", "a", "b", "c1"], "003": ["id", "a", "b", "c1", "c2"]}


def setup_windows(folder: Path, tables: int) -> Path:
    """001 creates the tables; 002..004 each add a column to every table: windows 001, 002, 003."""
    files = {"001_tables.sql": "".join(f"CREATE TABLE t{i} (id serial PRIMARY KEY, a int NOT NULL DEFAULT 0, "
                                       f"b text);\n" for i in range(tables))}
    for n, column in ((2, "c1"), (3, "c2"), (4, "c3")):
        files[f"{n:03d}_add_{column}.sql"] = "".join(f"ALTER TABLE t{i} ADD COLUMN {column} int;\n"
                                                    for i in range(tables))
    return write(folder, files)


def add_alters(folder: Path, tables: int) -> list[str]:
    """One migration per table: a rename (even tables) or an added column (odd)."""
    ids = []
    for i in range(tables):
        mid = f"{5 + i:03d}_alter_t{i}"
        change = f"RENAME COLUMN b TO b_{i}" if i % 2 == 0 else "ADD COLUMN d int"
        write(folder, {f"{mid}.sql": f"ALTER TABLE t{i} {change};\n"})
        ids.append(mid)
    return ids


def per_migration(settings, ids: list[str], compat: bool) -> list[float]:
    from runner import commands

    times = []
    for mid in ids:
        started = time.perf_counter()
        result = commands.up(settings, to=mid, compat=compat)
        times.append((time.perf_counter() - started) * 1000)
        assert result.applied == [mid], result
    return times


def bench_alters(admin_url: str, tables: int, pileup: int) -> list[list[str]]:
    from runner import commands

    rows = []
    for label, windows, mode, compat, count in (
            ("without shims (no windows)", False, "declared", False, tables),
            ("with shims: 3 windows, each view of the table rebuilt", True, "declared", True, tables),
            (f"auto mode, first {pileup}: each also opens a window (3 -> {pileup + 3})", True, "auto", True, pileup)):
        with tempfile.TemporaryDirectory() as top, scratch_database(admin_url, "bench_shapes") as url:
            folder = setup_windows(Path(top) / "m", tables)
            settings = settings_for(url, folder, "auto")
            commands.up(settings, to="004_add_c3", compat=windows)
            settings.compat.mode = mode
            ids = add_alters(folder, tables)[:count]
            times = per_migration(settings, ids, compat)
            with psycopg.connect(url) as conn:
                views = conn.execute("SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                                     "WHERE c.relkind = 'v' AND n.nspname LIKE 'compat%'").fetchone()[0]
        first, last = times[: max(1, count // 10)], times[-max(1, count // 10):]
        rows.append([label, f"{statistics.mean(times):.1f}", f"{statistics.median(times):.1f}",
                     f"{statistics.mean(first):.1f}", f"{statistics.mean(last):.1f}", str(views)])
    return rows


@dataclass
class Consumer:
    version: str
    ops: int = 0
    failures: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def consumer_loop(url: str, c: Consumer, tables: int, stop: threading.Event) -> None:
    rng = random.Random(int(c.version))
    with psycopg.connect(url, autocommit=True, options=f"-c search_path=compat_{c.version},public") as conn:
        while not stop.is_set():
            t = f"t{rng.randrange(tables)}"
            for query, check in ((f"SELECT * FROM {t} ORDER BY id LIMIT 5", True),
                                 (f"INSERT INTO {t} (a, b) VALUES (1, 'v{c.version}')", False),
                                 (f"UPDATE {t} SET a = a + 1, b = 'u{c.version}' WHERE id = 1", False)):
                started = time.perf_counter()
                try:
                    cur = conn.execute(query)
                    if check and [d.name for d in cur.description] != VERSIONS[c.version]:
                        raise AssertionError(f"{t}: {[d.name for d in cur.description]}")
                except Exception as err:  # noqa: BLE001 - every failure counts
                    c.failures += 1
                    if len(c.errors) < 3:
                        c.errors.append(f"{query}: {str(err).splitlines()[0]}")
                c.latencies.append((time.perf_counter() - started) * 1000)
                c.ops += 1


def bench_rollout(admin_url: str, tables: int, seconds: float, mode: str) -> tuple[list[list[str]], list[str]]:
    from runner import commands

    with tempfile.TemporaryDirectory() as top, scratch_database(admin_url, "bench_shapes") as url:
        folder = setup_windows(Path(top) / "m", tables)
        settings = settings_for(url, folder, "auto")
        commands.up(settings, to="004_add_c3")
        settings.compat.mode = mode
        with psycopg.connect(url, autocommit=True) as conn:
            for i in range(tables):
                conn.execute(f"INSERT INTO t{i} (a, b) VALUES (0, 'seed')")
        add_alters(folder, tables)
        consumers = [Consumer(v) for v in VERSIONS]
        stop = threading.Event()
        threads = [threading.Thread(target=consumer_loop, args=(url, c, tables, stop)) for c in consumers]
        for t in threads:
            t.start()
        time.sleep(min(2.0, seconds / 4))
        started = time.perf_counter()
        result = commands.up(settings)
        applied_s = time.perf_counter() - started
        time.sleep(max(0.0, seconds - (time.perf_counter() - started) - min(2.0, seconds / 4)))
        stop.set()
        for t in threads:
            t.join()
    rows = []
    notes = [f"{len(result.applied)} migrations applied in {applied_s:.1f}s ([compat] mode = {mode}) during the load"]
    for c in consumers:
        lat = sorted(c.latencies)
        p99 = statistics.quantiles(lat, n=100)[98] if len(lat) >= 100 else max(lat)
        rows.append([f"pinned at {c.version}", str(c.ops), str(c.failures), f"{statistics.median(lat):.2f}",
                     f"{p99:.1f}", f"{max(lat):.1f}"])
        notes.extend(f"  {c.version}: {e}" for e in c.errors)
    return rows, notes


# -- (d) --------------------------------------------------------------------------------------
def bench_size(admin_url: str, rows: int) -> list[str]:
    from runner import commands

    with tempfile.TemporaryDirectory() as top, scratch_database(admin_url, "bench_shapes") as url:
        folder = write(Path(top) / "m", {"001_t.sql": "CREATE TABLE big (id bigint PRIMARY KEY, a int, b text);\n",
                                         "002_rename.sql": "ALTER TABLE big RENAME COLUMN b TO b2;\n"})
        settings = settings_for(url, folder, "auto")
        commands.up(settings, to="001_t")
        started = time.perf_counter()
        with psycopg.connect(url, autocommit=True) as conn:
            if rows:
                conn.execute("INSERT INTO big SELECT g, g %% 1000, 'row ' || g FROM generate_series(1, %s) g", (rows,))
            conn.execute("VACUUM ANALYZE big")
            size = conn.execute("SELECT pg_size_pretty(pg_total_relation_size('big'))").fetchone()[0]
        fill = time.perf_counter() - started
        started = time.perf_counter()
        result = commands.up(settings)
        elapsed = (time.perf_counter() - started) * 1000
        assert result.applied == ["002_rename"] and result.shims
    return [f"{rows:,}", size, f"{fill:.1f}", f"{elapsed:.1f}"]


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    line = lambda r: "| " + " | ".join(str(x).ljust(w) for x, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--admin-url", default=os.environ.get(
        "MIGRATE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--quick", action="store_true", help="smaller sizes (see the module docstring)")
    parser.add_argument("--load-seconds", type=float, default=None)
    parser.add_argument("--only", choices=["a", "b", "c", "d"], action="append", help="run only these parts")
    parser.add_argument("--rollout-mode", choices=["declared", "auto"], default="declared",
                        help="(c): declared = the 3 windows' views are rebuilt around each migration (default); "
                             "auto = each migration also opens a window (they pile up)")
    args = parser.parse_args()
    import structlog

    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr),
                        wrapper_class=structlog.make_filtering_bound_logger(30))
    quick = args.quick
    count, alters = (200, 50) if quick else (1000, 200)
    sizes = [0, 10_000, 100_000] if quick else [0, 1_000_000, 10_000_000]
    seconds = args.load_seconds or (5.0 if quick else 20.0)
    parts = set(args.only or "abcd")
    print(f"bench_shapes ({'--quick' if quick else 'full'}): N={count}, M={alters}, sizes={sizes}, load={seconds:g}s\n")
    if "a" in parts:
        rounds = 3 if quick else 5
        print(f"(a) auto mode's cost: {rounds} rounds of paired fresh applies, 9 paired no-op runs per round",
              flush=True)
        print(table(["case", "declared (median)", "auto (median)", "auto vs declared (median of pairs)", "pairs"],
                    bench_auto_cost(args.admin_url, count, rounds, 9)))
        print(flush=True)
    if "b" in parts:
        print(f"(b) {alters} migrations, each altering one of {alters} tables, 3 windows active (ms per migration)",
              flush=True)
        print(table(["case", "mean", "median", "first 10%", "last 10%", "compat views at the end"],
                    bench_alters(args.admin_url, alters, min(alters, 50))))
        print(flush=True)
    if "c" in parts:
        print(f"(c) rollout under load: 3 pinned consumers for {seconds:g}s while (b)'s migrations apply", flush=True)
        rows, notes = bench_rollout(args.admin_url, alters, seconds, args.rollout_mode)
        print(table(["consumer", "queries", "failed", "median ms", "p99 ms", "worst ms"], rows))
        print("\n".join(notes))
        print(flush=True)
    if "d" in parts:
        print("(d) shim cost against table size: a column rename + one view, in process", flush=True)
        print(table(["rows", "table size", "fill s", "apply ms"], [bench_size(args.admin_url, n) for n in sizes]))


if __name__ == "__main__":
    main()
