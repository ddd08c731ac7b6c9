"""Compare `migrate lint` with squawk (PyPI squawk-cli) on the same corpus.

    .venv/bin/python bench/lint_vs_squawk.py [--json]

Corpus: tests/fixtures/lint_corpus/*.sql, one risky (or safe) pattern per file.
Our linter runs offline except for one synthetic active shim
(compat_017.accounts exposing accounts.email, as the registry would report
it) so the shim rule can show; squawk runs per file with
``--assume-in-transaction`` for files the runner wraps in a transaction (all
but ``-- transactional: false`` ones), as the runner executes them.

Prints one row per file: the rules each tool reports (squawk's noise rules
``prefer-robust-stmts``, ``prefer-bigint-over-int``, ``prefer-text-field``,
``require-timeout-settings``, ``require-lock-timeout`` and
``require-statement-timeout`` are counted separately: the runner sets
``lock_timeout`` itself and migrations run exactly once, in a transaction).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "fixtures" / "lint_corpus"
NOISE = {"prefer-robust-stmts", "prefer-bigint-over-int", "prefer-text-field", "require-timeout-settings",
         "require-lock-timeout", "require-statement-timeout", "prefer-big-int", "prefer-bigint",
         "prefer-timestamptz", "prefer-identity"}


@dataclass
class Row:
    file: str
    ours: list[str] = field(default_factory=list)
    ours_lines: list[int] = field(default_factory=list)
    squawk: list[str] = field(default_factory=list)
    squawk_lines: list[int] = field(default_factory=list)
    squawk_noise: list[str] = field(default_factory=list)


def squawk_binary() -> str:
    found = shutil.which("squawk") or str(Path(sys.executable).parent / "squawk")
    if not Path(found).exists():
        raise SystemExit("squawk not found: pip install squawk-cli")
    return found


def run_ours(path: Path) -> tuple[list[str], list[int]]:
    sys.path.insert(0, str(ROOT))
    from datetime import datetime, timezone

    from compat.model import Shim
    from runner.lint import lint_migration
    from runner.sources import read_migration

    now = datetime.now(timezone.utc)
    shim = Shim(id=1, name="compat_017.accounts", migration_id="018", table_schema="public", table_name="accounts",
                old="-", new="-", renames=[], expose="old", as_of="017", compat_schema="compat_017",
                view_name="accounts", columns=[{"name": c, "attnum": n} for n, c in
                                               enumerate(("id", "email", "email_address", "plan"), 1)],
                created_at=now, created_by="bench", created_client=None, expires_at=now, status="active")
    findings = lint_migration(read_migration(path), shims=[shim], server_version=None)
    return [f.rule for f in findings], [f.line for f in findings]


def run_squawk(path: Path, transactional: bool) -> tuple[list[str], list[int], list[str]]:
    args = [squawk_binary(), "--reporter", "json", "--pg-version", "15"]
    if transactional:
        args.append("--assume-in-transaction")
    proc = subprocess.run([*args, str(path)], capture_output=True, text=True, timeout=60)
    data = json.loads(proc.stdout or "[]")
    rules, lines, noise = [], [], []
    for v in data:
        if v["rule_name"] in NOISE:
            noise.append(v["rule_name"])
        else:
            rules.append(v["rule_name"])
            lines.append(v["line"] + 1)  # squawk's lines are 0-based
    return rules, lines, noise


def compare() -> list[Row]:
    sys.path.insert(0, str(ROOT))
    from runner.sources import read_migration

    rows = []
    for path in sorted(CORPUS.glob("*.sql")):
        migration = read_migration(path)
        row = Row(path.name)
        row.ours, row.ours_lines = run_ours(path)
        row.squawk, row.squawk_lines, row.squawk_noise = run_squawk(path, migration.transactional)
        rows.append(row)
    return rows


def render(rows: list[Row]) -> str:
    head = ("file", "migrate lint", "squawk (relevant)", "squawk noise")
    table = [head] + [
        (r.file,
         ", ".join(f"{n}:{ln}" for n, ln in zip(r.ours, r.ours_lines)) or "-",
         ", ".join(f"{n}:{ln}" for n, ln in zip(r.squawk, r.squawk_lines)) or "-",
         str(len(r.squawk_noise)))
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip() for row in table)


def main() -> int:
    rows = compare()
    if "--json" in sys.argv[1:]:
        print(json.dumps([r.__dict__ for r in rows], indent=2))
    else:
        print(render(rows))
        ours = sum(len(r.ours) for r in rows)
        theirs = sum(len(r.squawk) for r in rows)
        noise = sum(len(r.squawk_noise) for r in rows)
        print(f"\n{len(rows)} files: migrate lint {ours} finding(s); squawk {theirs} relevant + {noise} noise")
    return 0


if __name__ == "__main__":
    sys.exit(main())
