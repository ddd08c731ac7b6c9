"""What the schema snapshot costs per migration (PostgreSQL).

    .venv/bin/python bench/snapshot_cost.py [--count 1000] [--url postgresql://postgres@127.0.0.1:5432/postgres]

1. One full snapshot (take + store) against schemas of 0, 10, 100 and 1,000 tables.
2. `migrate up` of N trivial migrations (`CREATE TABLE tN (id int)`) through
   runner.commands.up with: no snapshot hook; SnapshotHook(final_migration_id)
   (one snapshot per run: the shipped choice); SnapshotHook() (the folder's head);
   SnapshotHook(every=True) (one per migration). Each on a fresh database, best of --repeat
   runs; prints total seconds and ms per migration.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchlib import scratch_database  # noqa: E402


def full_snapshot_costs(admin: str) -> list[tuple[int, float, float]]:
    from runner.db import connect, transaction
    from runner.snapshot import store_snapshot, take_snapshot

    rows = []
    with scratch_database(admin, "bench_snapshot") as url, connect(url) as db:
        made = 0
        for size in (0, 10, 100, 1000):
            for i in range(made, size):
                db.execute(f"CREATE TABLE public.t{i} (id int, name text)")  # the runner's search_path is pg_catalog
            made = size
            take_snapshot(db)
            repeat = 20
            started = time.perf_counter()
            for _ in range(repeat):
                take_snapshot(db)
            take = (time.perf_counter() - started) / repeat
            started = time.perf_counter()
            for _ in range(repeat):
                with transaction(db):
                    store_snapshot(db, "x", take_snapshot(db))
            both = (time.perf_counter() - started) / repeat
            rows.append((size, take * 1000, both * 1000))
    return rows


def run_up(admin: str, count: int, hook: str) -> float:
    from runner import commands
    from runner.config import load_settings
    from runner.snapshot import SnapshotHook

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        width = len(str(count))
        for i in range(1, count + 1):
            (folder / f"{i:0{width}d}_t{i}.sql").write_text(f"CREATE TABLE t{i} (id int);\n")
        with scratch_database(admin, "bench_snapshot") as url:
            settings = load_settings({"database": url, "migrations": str(folder)}, env={})
            last = f"{count:0{width}d}_t{count}"
            hooks = {"none": [], "final": [SnapshotHook(final_migration_id=last)], "every": [SnapshotHook(every=True)],
                     "default": [SnapshotHook()]}[hook]
            started = time.perf_counter()
            commands.up(settings, hooks=hooks)
            return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=2, help="runs per variant; the best is shown")
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    opts = parser.parse_args()
    import structlog
    import logging

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    print("full snapshot of the schema (one call)")
    print(f"{'tables':>8}  {'take ms':>8}  {'take+store ms':>14}")
    for size, take, both in full_snapshot_costs(opts.url):
        print(f"{size:>8}  {take:>8.2f}  {both:>14.2f}")
    print(f"\nmigrate up of {opts.count} trivial migrations")
    print(f"{'snapshot hook':<34}  {'total s':>8}  {'ms/migration':>12}")
    for hook, label in (("none", "none"), ("final", "SnapshotHook(final_migration_id)"),
                        ("default", "SnapshotHook() (head of folder)"),
                        ("every", "SnapshotHook(every=True)")):
        seconds = min(run_up(opts.url, opts.count, hook) for _ in range(opts.repeat))
        print(f"{label:<34}  {seconds:>8.2f}  {seconds / opts.count * 1000:>12.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
