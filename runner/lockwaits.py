"""Waiting for locks: the one place that knows timeouts, retries, backoff and who is blocking.

Two kinds of wait:

* the runner's own lock (:func:`poll`): one runner per database (schema) at a time; wait up to
  ``lock_wait``, polling with growing, jittered pauses, naming the holder when giving up;
* table locks a migration (or ``shims drop``, or a post-apply hook) needs (:func:`retrying`):
  each attempt runs under ``lock_timeout`` so a migration never queues behind a long
  transaction (with everybody else's queries queued behind it); on a timeout the work is
  rolled back and tried again after a backoff, up to ``lock_retries`` more times; the final
  error names the sessions holding the locks.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, TypeVar

from runner.errors import LockTimeout
from runner.logs import get_logger

if TYPE_CHECKING:
    from runner.db import Database
    from runner.dialects import Blocker

log = get_logger("migrate.locks")
T = TypeVar("T")


def backoff(attempt: int) -> float:
    """Seconds to wait before retry ``attempt`` (1-based): 0.5, 1, 2, 4, ... capped at 10, jittered."""
    return min(10.0, 0.5 * 2 ** (attempt - 1)) * random.uniform(0.75, 1.25)


def poll(try_once: Callable[[], bool], wait: timedelta, describe: Callable[[], str], what: str) -> None:
    """Call ``try_once`` until it returns True; raise LockTimeout naming the holder after ``wait``."""
    deadline = time.monotonic() + wait.total_seconds()
    delay = 0.05
    announced = False
    while not try_once():
        if time.monotonic() >= deadline:
            raise LockTimeout(f"could not get {what} within {wait.total_seconds():g}s: held by {describe()}")
        if not announced:
            log.info(f"waiting for {what}", holder=describe())
            announced = True
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())) * random.uniform(0.8, 1.2))
        delay = min(delay * 1.5, 1.0)


class Retry(Exception):
    """Raised by :func:`retrying`'s work function: its transaction hit lock_timeout and was rolled
    back; ``statement`` is what was waiting (to name the blockers)."""

    def __init__(self, statement: str = "") -> None:
        super().__init__(statement)
        self.statement = statement


def retrying(db: Database, work: Callable[[int], T], *, retries: int, lock_timeout: timedelta, what: str,
             where: Callable[[], str]) -> T:
    """Run ``work(attempt)`` until it does not raise :class:`Retry`, at most ``1 + retries`` times.

    ``what`` names the work in the final error, ``where`` where it waited (a file:line).
    """
    attempts = 1 + max(0, retries)
    for attempt in range(1, attempts + 1):
        try:
            return work(attempt)
        except Retry as retry:
            if attempt < attempts:
                pause = backoff(attempt)
                log.warning("lock timeout, retrying", work=what, attempt=attempt, retry_in_s=round(pause, 2))
                time.sleep(pause)
                continue
            raise LockTimeout(
                f"{where()}: {what}: could not lock within lock_timeout={lock_timeout.total_seconds():g}s after "
                f"{attempt} attempt(s); rolled back. Blocking: {describe_blockers(blockers(db, retry.statement))}"
            ) from None
    raise AssertionError("unreachable")


def blockers(db: Database, statement: str) -> list[Blocker]:
    """Other sessions holding locks on tables the statement names (all of them, if none match)."""
    found = db.dialect.blockers(db)
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_$]*", statement.lower()))
    named = [b for b in found if b.table.lower() in words]
    return named or found


def describe_blockers(found: list[Blocker]) -> str:
    if not found:
        return "no blocking session is visible any more"
    return "; ".join(b.describe() for b in found)
