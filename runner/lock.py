"""The runner's mutual exclusion: one `migrate up`/`down` (or `shims drop`) per database at a time.

PostgreSQL: a session-level advisory lock keyed by the runner's schema, released by the server
when the session ends (with TCP keepalives set, within about half a minute of the runner's host
going silent), so a killed runner never leaves a stale lock. Through a connection pooler
(PgBouncer, :mod:`runner.pooler`), where a session lock would stay on a server connection the
pooler shares, a lease row instead (:mod:`runner.lease`: renewed while the run lasts, expiring
``lock_lease`` after a killed runner, locked by each migration's transaction). SQLite: an exclusive ``flock`` on
``<database>.lock``, released by the kernel when the process dies. Waiting is bounded by
``lock_wait``; on timeout the error names the holder, and says whether it looks like a runner
(any client may take an advisory lock key).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from runner import lockwaits
from runner.db import Database
from runner.dialects import LockHolder


def holder(db: Database) -> LockHolder | None:
    """Who else holds the runner's lock, or None."""
    return db.dialect.lock_holder(db)


def describe_holder(info: LockHolder | None) -> str:
    return info.describe() if info else "another runner"


@contextmanager
def runner_lock(db: Database, wait: timedelta) -> Iterator[None]:
    """Hold the runner's lock for the block; raise LockTimeout after ``wait``."""
    lockwaits.poll(lambda: db.dialect.try_lock(db), wait, lambda: describe_holder(holder(db)), "the migration lock")
    try:
        yield
    finally:
        try:
            db.dialect.unlock(db)
        except Exception:  # noqa: BLE001 - a dead session has released it already
            pass
