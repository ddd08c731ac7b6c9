"""Regenerate RELIABILITY.md: run the reliability suite and tabulate what it injected and survived.

    .venv/bin/python bench/reliability_report.py            # the CI variant (~3 minutes)
    .venv/bin/python bench/reliability_report.py --long     # MIGRATE_LONG_TESTS=1 (longer, more of everything)

It runs ``pytest tests/reliability`` (the same scenarios CI runs), collects the
figures the tests record (harness.FIGURES, written as JSON at the end of the
session) and the pass/fail outcome (JUnit XML), and writes the table. Figures
are recorded by a test only after its assertions passed, so a failing scenario
shows up in the "Failing tests" section, not as survived faults. Needs the
PostgreSQL server the test suite uses (MIGRATE_TEST_DATABASE_URL, default
postgresql://postgres@127.0.0.1:5432/postgres).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def run_suite(long: bool, pytest_args: list[str]) -> tuple[dict[str, Any], dict[str, Any], float]:
    with tempfile.TemporaryDirectory(prefix="reliability-report-") as tmp:
        figures_path = Path(tmp) / "figures.json"
        junit_path = Path(tmp) / "junit.xml"
        env = dict(os.environ, MIGRATE_RELIABILITY_FIGURES=str(figures_path))
        if long:
            env["MIGRATE_LONG_TESTS"] = "1"
        else:
            env.pop("MIGRATE_LONG_TESTS", None)
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "pytest", "tests/reliability", "-q", "-p", "no:cacheprovider", "-n", "0",
                        f"--junitxml={junit_path}", *pytest_args], cwd=ROOT, env=env, check=False)
        seconds = time.monotonic() - started
        figures = json.loads(figures_path.read_text()) if figures_path.exists() else {"sections": {}}
        outcome = _junit(junit_path)
    return figures, outcome, seconds


def _junit(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"tests": 0, "failed": ["the suite did not run"], "skipped": 0}
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    failed, skipped, total = [], 0, 0
    for case in suite.iter("testcase"):
        total += 1
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(name)
        elif case.find("skipped") is not None:
            skipped += 1
    return {"tests": total, "failed": failed, "skipped": skipped}


def _pg_version() -> str:
    url = os.environ.get("MIGRATE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        import psycopg

        with psycopg.connect(url, connect_timeout=5) as conn:
            return conn.execute("SHOW server_version").fetchone()[0]
    except Exception:  # noqa: BLE001 - informational only
        return "unknown"


def table(figures: dict[str, Any]) -> list[str]:
    s = figures.get("sections", {})

    def get(section: str, key: str) -> int:
        return int(s.get(section, {}).get(key, 0))

    rows = [
        ("SIGKILL of `migrate up` at random moments (PostgreSQL, 20 migrations, one with a shim)",
         f"{get('sigkill', 'injected')} kills ({get('sigkill', 'inside_transaction')} inside a migration "
         f"transaction, {get('sigkill', 'distinct_prefixes')} distinct stopping points)",
         get("sigkill", "survived"), get("sigkill", "half_applied")),
        ("SIGKILL of `migrate up` (SQLite, the embedded default)",
         f"{get('sigkill_sqlite', 'injected')} kills ({get('sigkill_sqlite', 'distinct_prefixes')} stopping points)",
         get("sigkill_sqlite", "survived"), get("sigkill_sqlite", "half_applied")),
        ("Runner's connection terminated by the server (`pg_terminate_backend`)",
         f"{get('terminate_backend', 'injected')} terminations", get("terminate_backend", "survived"),
         get("terminate_backend", "half_applied")),
        ("PostgreSQL restarted / stopped during a run (private cluster)",
         f"{get('postgres_restart', 'injected')} restarts or stops", get("postgres_restart", "survived"),
         get("postgres_restart", "half_applied")),
        ("PostgreSQL crashed (`pg_ctl stop -m immediate`, WAL writer held back) right after a failed and a "
         "finished run: what `up` reported applied is there",
         f"{get('postgres_crash_after_run', 'injected')} crashes", get("postgres_crash_after_run", "survived"),
         get("postgres_crash_after_run", "half_applied")),
        ("Table locked by a long transaction (`--lock-timeout 200ms`, retries, blocker named)",
         f"{get('lock_wait', 'injected')} lock conflicts; other clients' worst wait "
         f"{get('lock_wait_worst_ms', 'probe')} ms", get("lock_wait", "survived"), get("lock_wait", "half_applied")),
        ("Migration failing mid-way (3rd statement of 5, at COMMIT, declared rename not done)",
         f"{get('failing_migration', 'injected')} failures", get("failing_migration", "survived"),
         get("failing_migration", "half_applied")),
        ("Concurrent `migrate up` processes (8 at once, rounds of new migrations)",
         f"{get('concurrent_up', 'processes')} processes over {get('concurrent_up', 'rounds')} rounds, "
         f"{get('concurrent_up', 'migrations')} migrations", f"{get('concurrent_up', 'processes')} exit 0",
         f"{get('concurrent_up', 'applied_twice')} applied twice"),
        ("`verify` / `shims audit` from 20 processes while `up` runs",
         f"{get('concurrent_readers', 'processes')} readers", f"{get('concurrent_readers', 'wrong_answers')} wrong "
         f"answers, {get('concurrent_readers', 'blocked_up')} waits of `up`", 0),
        ("Hostile migration files (hypothesis: yoyo/goose, directives, $tag$, CRLF, BOM, bad bytes)",
         f"{get('hostile_inputs', 'parser_files') + get('hostile_inputs', 'cli_files')} files "
         f"({get('hostile_inputs', 'parser_refused') + get('hostile_inputs', 'cli_refused')} refused with file:line)",
         "no traceback", 0),
        ("Hostile names and config values (quotes, `\"; DROP TABLE`, unicode, 63/64 bytes, reserved words)",
         f"{get('hostile_inputs', 'names') + get('hostile_inputs', 'config_values') + get('hostile_inputs', 'file_names')}"
         f" inputs ({get('hostile_inputs', 'created')} created exactly, {get('hostile_inputs', 'refused')} refused)",
         "canary intact", 0),
        ("Privileges through shims (column grants, RLS, no rights; runner without CREATE)",
         f"{get('privileges', 'roles')} consumer roles, {get('privileges', 'query_pairs')} table/shim query pairs",
         f"{get('privileges', 'widened')} widened", 0),
        ("Secrets: every stdout/stderr/log line of the suite scanned for the URL password",
         f"{figures.get('outputs_scanned', 0)} outputs ({get('secrets', 'bad_urls')} malformed/unreachable URL kinds)",
         f"{figures.get('secret_leaks', 0)} leaks", figures.get("secret_leaks", 0)),
    ]
    lines = ["| Scenario | Injected / tried | Survived | Lost or half-applied |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return lines


KEEP_MARKER = "<!-- kept by bench/reliability_report.py: hand-written sections below -->"


def _kept_sections(path: Path = ROOT / "RELIABILITY.md") -> str:
    """The hand-written sections of the current report (from KEEP_MARKER on), kept when it is rewritten."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    index = text.find(KEEP_MARKER)
    return text[index:] if index >= 0 else ""


def render(figures: dict[str, Any], outcome: dict[str, Any], seconds: float, long: bool) -> str:
    variant = "long (MIGRATE_LONG_TESTS=1)" if long else "CI (default)"
    passed = outcome["tests"] - len(outcome["failed"]) - outcome["skipped"]
    out = [
        "# Reliability report",
        "",
        "Generated by `.venv/bin/python bench/reliability_report.py"
        + (" --long" if long else "") + "` (runs `pytest tests/reliability`; see the README section Reliability and security suite).",
        "",
        f"- When: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; variant: {variant}; "
        f"PostgreSQL {_pg_version()}; {os.cpu_count()} CPU(s)",
        f"- Suite: {outcome['tests']} tests, {passed} passed, {len(outcome['failed'])} failed, "
        f"{outcome['skipped']} skipped, in {seconds:.0f} s",
        "",
        *table(figures),
        "",
        "\"Survived\" means: after the fault, the database held a prefix of the migrations, each fully applied and",
        "recorded or not at all (catalog checked against `_migrate_history`, `_migrate_log`, yoyo's tables, the",
        "shim registry), no lock was left, and the next `migrate up` completed with no manual step.",
    ]
    kept = _kept_sections()
    if kept:
        out += ["", kept.rstrip("\n")]
    if outcome["failed"]:
        out += ["", "## Failing tests", "",
                "Figures above count only scenarios whose assertions passed. These failed:", ""]
        out += [f"- `{name}`" for name in outcome["failed"]]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--long", action="store_true", help="run the long variants (MIGRATE_LONG_TESTS=1)")
    parser.add_argument("--output", default=str(ROOT / "RELIABILITY.md"), help="where to write the report")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)
    figures, outcome, seconds = run_suite(args.long, args.pytest_args)
    text = render(figures, outcome, seconds, args.long)
    Path(args.output).write_text(text, encoding="utf-8")
    print(text)
    return 1 if outcome["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
