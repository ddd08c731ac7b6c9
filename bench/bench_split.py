"""Splitting a migration file into statements: linear, not quadratic (issue 10, item 20).

    .venv/bin/python bench/bench_split.py [--sizes 1000,10000,50000] [--rounds 3] [--old-max 10000]

For a seed file of N ``INSERT INTO seed (id, name) VALUES (i, 'name i');`` lines (50,000 lines
are ~2.9 MB), it times in this process, best of ``--rounds``:

- ``new``: runner.sqlfile.split_statements as shipped (line numbers counted from one statement to
  the next);
- ``old``: the algorithm before the fix, kept here only (each statement's line counted from the
  start of the file, and each statement searched for from the last position): quadratic, so it
  runs only up to ``--old-max`` statements (50,000 took ~1 minute);
- ``status``: a ``migrate status`` process on a folder holding that one file, against a SQLite
  database where it is applied (everything a command pays for such a file: start-up, reading,
  splitting, checksums).

Target: well under a second for 50,000 statements (``new``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runner.migration import Statement  # noqa: E402
from runner.sqlfile import _COMMENT_OR_BLANK, split_statements  # noqa: E402


def old_split_statements(text: str, first_line: int = 1) -> list[Statement]:
    """The splitter before issue 10 item 20 (only the line counting differs from the shipped one)."""
    from pglast.parser import split

    chunks = [text[p.start:p.stop + (text[p.stop:p.stop + 1] == ";")]
              for p in split(text, with_parser=True, only_slices=True)]
    statements: list[Statement] = []
    position = 0
    for chunk in chunks:
        if not chunk.strip():
            continue
        index = text.find(chunk, position)
        if index < 0:
            index = position
        position = index + len(chunk)
        lines = chunk.split("\n")
        skip = 0
        while skip < len(lines) and _COMMENT_OR_BLANK.match(lines[skip]):
            skip += 1
        if skip == len(lines):
            continue
        line = first_line + text.count("\n", 0, index) + skip
        statements.append(Statement(sql=chunk, line=line))
    return statements


def seed(n: int) -> str:
    return "".join(f"INSERT INTO seed (id, name) VALUES ({i}, 'name {i}');\n" for i in range(n))


def best(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def status_seconds(text: str, rounds: int) -> float:
    migrate = [sys.executable, "-m", "runner"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIGRATE_") and k != "DATABASE_URL"}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp, "m")
        folder.mkdir()
        (folder / "001_seed.sql").write_text("CREATE TABLE seed (id int, name text);\n" + text, encoding="utf-8")
        base = [*migrate, "--database", f"sqlite:///{tmp}/db.sqlite", "--migrations", str(folder),
                "--log-format", "json"]
        subprocess.run([*base, "mark", "001_seed"], check=True, capture_output=True, env=env, cwd=tmp)
        return best(lambda: subprocess.run([*base, "status"], check=True, capture_output=True, env=env, cwd=tmp),
                    rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--old-max", type=int, default=10000, help="largest size the quadratic splitter runs on")
    parser.add_argument("--no-status", action="store_true", help="skip the `migrate status` column")
    args = parser.parse_args()
    print(f"{'statements':>10} {'MB':>6} {'new s':>8} {'old s':>8} {'old/new':>8} {'status s':>9}")
    print("-" * 54)
    for n in (int(x) for x in args.sizes.split(",")):
        text = seed(n)
        new = split_statements(text)
        assert len(new) == n and new[-1].line == n
        new_s = best(lambda: split_statements(text), args.rounds)
        old_s = None
        if n <= args.old_max:
            old = old_split_statements(text)
            assert [(s.sql, s.line) for s in old] == [(s.sql, s.line) for s in new]
            old_s = best(lambda: old_split_statements(text), 1 if n > 1000 else args.rounds)
        status_s = None if args.no_status else status_seconds(text, args.rounds)
        print(f"{n:>10} {len(text) / 1e6:>6.2f} {new_s:>8.3f} "
              f"{'-' if old_s is None else f'{old_s:.3f}':>8} "
              f"{'-' if old_s is None else f'{old_s / new_s:.0f}x':>8} "
              f"{'-' if status_s is None else f'{status_s:.2f}':>9}")


if __name__ == "__main__":
    main()
