"""Table lock waits: ``lock_timeout``, bounded retries with backoff, and naming blockers.

The one place that knows how the runner keeps a migration from queueing behind
a long transaction (and everybody else's queries behind the migration).
"""

from __future__ import annotations

import random
import re
from datetime import timedelta

from runner.db import Database

LOCK_NOT_AVAILABLE = "55P03"


def is_lock_timeout(err: BaseException) -> bool:
    return getattr(err, "sqlstate", None) == LOCK_NOT_AVAILABLE


def set_lock_timeout_sql(timeout: timedelta, local: bool) -> str:
    """``SET LOCAL lock_timeout`` (or session-level for non-transactional work)."""
    ms = max(1, int(timeout.total_seconds() * 1000))
    return f"SET {'LOCAL ' if local else ''}lock_timeout = '{ms}ms'"


def backoff(attempt: int) -> float:
    """Seconds to wait before retry ``attempt`` (1-based): 0.5, 1, 2, 4, ... capped at 10, jittered."""
    return min(10.0, 0.5 * 2 ** (attempt - 1)) * random.uniform(0.75, 1.25)


def blockers(db: Database, statement: str) -> list[dict[str, object]]:
    """Other sessions holding locks on tables the statement names (all, if none match)."""
    rows = db.execute(
        "SELECT DISTINCT a.pid, a.application_name, a.state, a.query_start, a.xact_start, c.relname, l.mode "
        "FROM pg_catalog.pg_locks l "
        "JOIN pg_catalog.pg_class c ON c.oid = l.relation "
        "JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.granted AND l.pid <> pg_backend_pid() AND l.locktype = 'relation' "
        "AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()) "
        "AND c.relnamespace <> 'pg_catalog'::regnamespace ORDER BY a.pid"
    ).fetchall()
    found = [
        {"pid": r[0], "application_name": r[1], "state": r[2],
         "query_start": r[3].isoformat() if r[3] else None,
         "xact_start": r[4].isoformat() if r[4] else None, "table": r[5], "mode": r[6]}
        for r in rows
    ]
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_$]*", statement.lower()))
    named = [b for b in found if str(b["table"]).lower() in words]
    return named or found


def describe_blockers(found: list[dict[str, object]]) -> str:
    if not found:
        return "no blocking session is visible any more"
    return "; ".join(
        f"pid {b['pid']} (application_name={b['application_name']!r}, state={b['state']}, "
        f"transaction started {b['xact_start']}, query started {b['query_start']}, holds {b['mode']} on {b['table']})"
        for b in found
    )
