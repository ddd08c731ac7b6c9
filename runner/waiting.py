"""Waiting for the database: retry connecting until it can be migrated, or give up (exit 5).

A deploy Job or init container often starts before its database: the server is still
starting, its service name does not resolve yet, the database is not created yet, or the
address points at a standby during a failover. :func:`wait_for_database` retries connecting
(backoff from 0.25 s, capped at ``max_backoff``) until the server accepts a connection to the
database and the dialect finds nothing in the way (PostgreSQL: the server is not in recovery,
since a standby accepts no writes), logs a progress event every ``progress_every`` seconds
with the last reason, and raises :class:`runner.errors.DatabaseUnreachable` (exit 5) when
``timeout`` has passed. Every error is retried, authentication failures included (a role or
its password may be provisioned after the server starts): the progress events say why.
Passwords never appear: the URL is shown redacted and driver messages go through
:func:`runner.db.one_line`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from runner.db import one_line
from runner.dialects import for_url
from runner.durations import parse_duration
from runner.errors import DatabaseUnreachable, UsageError
from runner.logs import get_logger
from runner.urls import DatabaseURL, parse_url

log = get_logger("migrate")

FIRST_BACKOFF_S = 0.25
MAX_BACKOFF_S = 2.0
PROGRESS_EVERY_S = 5.0


@dataclass(frozen=True)
class WaitResult:
    """The database became ready: after how long and how many connection attempts."""

    database: str  # redacted URL
    attempts: int
    waited_s: float

    def to_dict(self) -> dict[str, object]:
        return {"database": self.database, "ready": True, "attempts": self.attempts,
                "waited_s": round(self.waited_s, 3)}


def parse_timeout(text: str, source: str) -> timedelta:
    """A wait timeout from ``source`` (a flag name): a duration like 60s or 2m; UsageError otherwise."""
    try:
        return parse_duration(text, source)
    except ValueError as err:
        raise UsageError(str(err)) from None


def _attempt_address(address: DatabaseURL, remaining_s: float) -> DatabaseURL:
    """``address`` with a connect timeout no longer than what is left of the wait (at least 2 s, the
    smallest libpq honours), so a silent host cannot hold one attempt past the deadline."""
    if "connect_timeout" not in address.connect_args:
        return address
    try:
        configured = float(address.connect_args["connect_timeout"])
    except ValueError:
        return address
    bounded = max(2, min(int(configured) if configured > 0 else 10 ** 6, math.ceil(remaining_s)))
    return dataclasses.replace(address, connect_args=dict(address.connect_args, connect_timeout=str(bounded)))


def check_ready(address: DatabaseURL, *, schema: str | None = None, read_only: bool = True) -> str | None:
    """One attempt: None when the database accepts a connection and can be migrated, else why not."""
    dialect = for_url(address)
    try:
        db = dialect.connect(address, schema=schema, read_only=read_only)
    except DatabaseUnreachable as err:  # e.g. SQLite: no database file yet (read-only)
        return str(err)
    except dialect.errors as err:
        return one_line(err)
    try:
        return dialect.not_ready(db)
    except dialect.errors as err:
        return one_line(err)
    finally:
        db.close()


def wait_for_database(
    url: str | DatabaseURL,
    timeout: timedelta,
    *,
    schema: str | None = None,
    read_only: bool = True,
    progress_every: float = PROGRESS_EVERY_S,
    max_backoff: float = MAX_BACKOFF_S,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> WaitResult:
    """Retry until the database can be migrated; DatabaseUnreachable (exit 5) after ``timeout``.

    ``read_only``: never create anything (SQLite: wait for the file to exist); `up --wait`
    passes False, as `up` itself creates a SQLite file.
    """
    address = url if isinstance(url, DatabaseURL) else parse_url(url)
    started = clock()
    deadline = started + timeout.total_seconds()
    backoff = FIRST_BACKOFF_S
    attempts = 0
    next_progress = started
    while True:
        attempts += 1
        reason = check_ready(_attempt_address(address, deadline - clock()), schema=schema, read_only=read_only)
        now = clock()
        if reason is None:
            if attempts > 1:
                log.info("database ready", database=address.redacted, attempts=attempts,
                         waited_s=round(now - started, 1))
            return WaitResult(address.redacted, attempts, now - started)
        if now >= deadline:
            raise DatabaseUnreachable(
                f"database {address.redacted} not ready after {timeout.total_seconds():g}s "
                f"({attempts} attempt(s)): {reason}")
        if now >= next_progress:
            log.info("waiting for the database", database=address.redacted, reason=reason, attempts=attempts,
                     waited_s=round(now - started, 1), timeout_s=timeout.total_seconds())
            next_progress = now + progress_every
        sleep(max(0.0, min(backoff, deadline - now)))
        backoff = min(backoff * 2, max_backoff)
