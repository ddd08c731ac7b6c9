"""Parse human durations (``500ms``, ``5s``, ``36h``, ``14d``, ``2w``)."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")


def parse_duration(text: str | int | float, what: str = "duration") -> timedelta:
    """Return the duration ``text`` names; a bare number means seconds.

    Raises ValueError with a message naming ``what`` on anything else.
    """
    if isinstance(text, bool):
        raise ValueError(f"{what}: expected a duration like 5s, 36h or 14d, got {text!r}")
    if isinstance(text, (int, float)):
        if text < 0:
            raise ValueError(f"{what}: a duration cannot be negative ({text})")
        return timedelta(seconds=text)
    match = _DURATION.match(str(text))
    if not match:
        raise ValueError(f"{what}: expected a duration like 500ms, 5s, 36h or 14d, got {text!r}")
    number, unit = match.groups()
    return timedelta(seconds=float(number) * _UNITS[unit or "s"])
