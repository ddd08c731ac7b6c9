"""A/B: `migrate up` of this checkout against the code of a git revision, on one server (one command, prints a table).

    .venv/bin/python bench/bench_ab.py --against 0ccc309 [--count 1000] [--rounds 10]

Why: bench_runner.py's apply figure (vs psql) moves with the machine more than with the code (psql's
1,000 commits took 0.6-0.8 s one day and 1.0-1.3 s another), so "is this code slower than that
revision's" needs both measured in the same minutes. Each round applies ``--count`` one-table
migrations (as bench_runner.py writes them) to a fresh database three times: with ``psql -f``, with
the revision's ``migrate up`` and with this checkout's, each after a CHECKPOINT, the order
alternating between rounds. The revision is checked out with ``git worktree`` into a temporary
folder and both codes run with this interpreter and its installed packages (``PYTHONPATH``), so
only the project's code differs. Both are compiled first, as ``pip install`` does.

The verdict is the median of the per-round ratios checkout / revision: the server's disk makes
single runs scatter by +-15%, and within a round both meet the same server. The server is
``MIGRATE_BENCH_DATABASE_URL`` or ``--url`` (default as bench_runner.py); its throwaway databases
are dropped at the end, also on failure.
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
from pathlib import Path

from bench_runner import DEFAULT_URL, ROOT, Server, env_for_cli, redact, timed, write_migrations


def _worktree(revision: str, where: Path) -> Path:
    """The code of ``revision`` checked out (detached) at ``where``."""
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(where), revision],
                   check=True)
    return where


def _remove_worktree(where: Path) -> None:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(where)], check=False,
                   capture_output=True)


def _up(code: Path, url: str, folder: Path, work: Path, log: Path) -> float:
    """Wall time of `migrate up` with the project's code from ``code``; run from ``work`` (with
    ``-m``, the working directory comes first on sys.path)."""
    cmd = [sys.executable, "-m", "runner", "--database", url, "--migrations", str(folder), "--log-format", "json", "up"]
    return timed(cmd, work, log, env={**env_for_cli(), "PYTHONPATH": str(code)})


def run(args: argparse.Namespace) -> dict[str, list[float]]:
    server = Server(args.url)
    work = Path(tempfile.mkdtemp(prefix="migrate-ab-"))
    revision = _worktree(args.against, work / "revision")
    times: dict[str, list[float]] = {"psql": [], "revision": [], "checkout": []}
    try:
        for code in (revision, ROOT):
            for package in ("runner", "compat"):
                compileall.compile_dir(code / package, quiet=1)
        folder = work / "migrations"
        script = write_migrations(folder, args.count)
        psql = shutil.which("psql")
        tools = ["psql", "revision", "checkout"] if psql else ["revision", "checkout"]
        checkpoint = server.can_checkpoint()
        for r in range(args.rounds):
            for tool in (tools if r % 2 == 0 else tools[::-1]):
                db = server.create(f"{tool}_{r}")
                if checkpoint:
                    server.checkpoint()
                if tool == "psql":
                    seconds = timed([psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", server.url(db), "-f", str(script)],
                                    work)
                else:
                    code = revision if tool == "revision" else ROOT
                    seconds = _up(code, server.url(db), folder, work, work / f"{tool}.log")
                if server.count_tables(db) != args.count:
                    raise SystemExit(f"{tool}: {server.count_tables(db)} of {args.count} tables after the run")
                times[tool].append(seconds)
                server.drop(db)
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        server.drop_all()
        _remove_worktree(revision)
        shutil.rmtree(work, ignore_errors=True)
    return {tool: values for tool, values in times.items() if values}


def table(times: dict[str, list[float]], against: str) -> str:
    label = {"psql": "psql -f (autocommit)", "revision": f"migrate up at {against}", "checkout": "migrate up, this checkout"}
    lines = [f"{'apply':32} {'runs':>4} {'best s':>8} {'median s':>9} {'vs psql':>8}", "-" * 66]
    for tool, values in times.items():
        vs = ""
        if "psql" in times and tool != "psql":
            vs = f"{statistics.median(a / b for a, b in zip(values, times['psql'])):.2f}x"
        lines.append(f"{label[tool]:32} {len(values):>4} {min(values):>8.3f} {statistics.median(values):>9.3f} {vs:>8}")
    ratios = [a / b for a, b in zip(times["checkout"], times["revision"])]
    median = statistics.median(ratios)
    word = "faster" if median < 1 else "slower"
    lines.append("")
    lines.append(f"checkout / {against}: {median:.3f} ({abs(1 - median) * 100:.1f}% {word}), median of {len(ratios)} "
                 f"paired rounds [{', '.join(f'{r:.2f}' for r in ratios)}]")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--against", required=True, help="the git revision to compare with (a commit, tag or branch)")
    parser.add_argument("--count", type=int, default=1000, help="migrations per apply (default 1000)")
    parser.add_argument("--rounds", type=int, default=10, help="rounds (default 10)")
    parser.add_argument("--url", default=os.environ.get("MIGRATE_BENCH_DATABASE_URL", DEFAULT_URL))
    args = parser.parse_args()
    if args.count < 1 or args.rounds < 1:
        parser.error("--count and --rounds must be at least 1")
    print(f"server {redact(args.url)}; {args.count} migrations; {args.rounds} rounds", file=sys.stderr)
    print(table(run(args), args.against))


if __name__ == "__main__":
    main()
