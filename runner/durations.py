"""Parse human durations (``500ms``, ``5s``, ``36h``, ``14d``, ``2w``) and check their range."""

from __future__ import annotations

import math
import re
from datetime import timedelta

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^\s*(\d{1,30}(?:\.\d{1,30})?)\s*(ms|s|m|h|d|w)?\s*$")
# No duration the runner takes is longer than this (ten years): beyond it, a value is a typo, and
# far beyond it Python's datetime arithmetic overflows (an OverflowError traceback).
MAX_DURATION = timedelta(days=3650)
# PostgreSQL's lock_timeout is an int of milliseconds: larger values are refused by the server.
MAX_LOCK_TIMEOUT = timedelta(milliseconds=2_147_483_647)


def parse_duration(text: str | int | float, what: str = "duration",
                   maximum: timedelta = MAX_DURATION) -> timedelta:
    """Return the duration ``text`` names; a bare number means seconds.

    Raises ValueError with a message naming ``what`` on anything else, including a negative value
    or one longer than ``maximum`` (default ten years).
    """
    if isinstance(text, bool):
        raise ValueError(f"{what}: expected a duration like 5s, 36h or 14d, got {text!r}")
    if isinstance(text, (int, float)):
        if not math.isfinite(text) or text < 0:
            raise ValueError(f"{what}: a duration cannot be negative or infinite ({text})")
        seconds = float(text)
    else:
        match = _DURATION.match(str(text))
        if not match:
            raise ValueError(f"{what}: expected a duration like 500ms, 5s, 36h or 14d, got {str(text)[:40]!r}")
        number, unit = match.groups()
        seconds = float(number) * _UNITS[unit or "s"]
    if seconds > maximum.total_seconds():
        raise ValueError(f"{what}: {str(text)[:40]} is longer than the maximum of {format_duration(maximum)}")
    return timedelta(seconds=seconds)


def parse_lock_timeout(text: str | int | float, what: str = "lock_timeout") -> timedelta:
    """A lock timeout: more than zero (PostgreSQL's 0 means "wait forever", which is never what a
    deploy wants) and at most 2147483647 ms (the largest value PostgreSQL accepts)."""
    value = parse_duration(text, what, MAX_LOCK_TIMEOUT)
    if value < timedelta(milliseconds=1):
        raise ValueError(f"{what}: must be at least 1ms (0 would mean no timeout: a migration could wait "
                         "forever for a lock while every query queues behind it)")
    return value


def format_duration(value: timedelta) -> str:
    """The shortest exact spelling of ``value`` (``14d``, ``36h``, ``90s``, ``500ms``)."""
    ms = round(value.total_seconds() * 1000)
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"
