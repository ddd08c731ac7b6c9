"""Small helpers shared by the runner tests."""

from __future__ import annotations

import threading
from pathlib import Path

import psycopg


def write_migrations(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (folder / name).write_text(content, encoding="utf-8")
    return folder


def tables(url: str, schema: str = "public") -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,)).fetchall()
    return {r[0] for r in rows}


def history(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        exists = conn.execute("SELECT to_regclass('public._migrate_history')").fetchone()[0]
        if exists is None:
            return []
        rows = conn.execute("SELECT migration_id FROM public._migrate_history ORDER BY migration_id").fetchall()
    return [r[0] for r in rows]


def scalar(url: str, query: str, params: tuple = ()) -> object:
    with psycopg.connect(url) as conn:
        return conn.execute(query, params).fetchone()[0]


def hold_table(url: str, table: str, ready: threading.Event, release: threading.Event) -> None:
    """A report (application_name 'long-report') reading ``table``: holds its AccessShareLock,
    which a migration's ALTER TABLE must wait for, until ``release`` is set."""
    with psycopg.connect(url) as conn:
        conn.execute("SET application_name = 'long-report'")
        conn.execute(f"SELECT count(*) FROM {table}")
        ready.set()
        release.wait(60)
        conn.rollback()


def error_lines(stderr: str) -> list[str]:
    """stderr lines that are not JSON log events, and the final error as its line when it is an
    `error` event (--log-format json: every line of stderr is an event, issue 13)."""
    import json

    lines = []
    for line in stderr.splitlines():
        if not line.strip():
            continue
        if not line.startswith("{"):
            lines.append(line)
        elif (event := json.loads(line)).get("event") == "error" and "exit_code" in event:
            lines.append(f"migrate: error: {event['message']}")
    return lines
