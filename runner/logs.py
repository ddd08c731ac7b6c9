"""Logging set-up: JSON lines when stderr is not a terminal, structlog's console renderer on one.

Console lines keep the order in which an event names its keys (not sorted), and carry colours
only on a terminal without ``NO_COLOR`` (runner.console.use_color). `migrate up` on the console
shows its progress through runner.console instead of one event per step.

JSON lines, what a pipeline reads, are written by :class:`JsonLines`: one ``json.dumps`` of the
event's keys, then ``event``, ``level`` and ``timestamp`` (ISO 8601, UTC), exactly what structlog's
``add_log_level``, ``TimeStamper(fmt="iso", utc=True)`` and ``JSONRenderer`` print
(tests/unit/test_logs.py compares the two). It is not structlog because structlog costs a
command ~10 ms to import, 4% of a no-op `migrate up`, which logs the database it migrates
first (bench/bench_runner.py: the no-op `up` against yoyo's).

Modules take their logger from :func:`get_logger`; the configuration the CLI asks for
(:func:`configure`) is applied when the first event is logged, so a command that logs nothing
imports neither.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from datetime import datetime, timezone
from typing import Any

from runner.secrets import redact_data

# The configuration asked for by configure(), applied before the next event; None once applied.
_pending: tuple[str, int] | None = None
# The JSON lines writer once the configuration asks for JSON (else structlog renders).
_json: JsonLines | None = None


def _redact_secrets(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """Passwords of URLs and DSNs, and SQL password literals, hidden in every value (runner.secrets)."""
    for key, value in event.items():
        event[key] = redact_data(value)
    return event


def configure(log_format: str = "auto", level: int = logging.INFO) -> None:
    """``log_format``: auto (console on a terminal, else json), console or json."""
    global _pending
    _pending = (log_format, level)
    # yoyo logs through the standard library; keep it quiet unless it warns.
    logging.getLogger("yoyo").setLevel(logging.WARNING)


def resolve(log_format: str) -> str:
    """``console`` or ``json``: ``auto`` is console on a terminal (stderr), else JSON lines."""
    if log_format == "auto":
        return "console" if sys.stderr.isatty() else "json"
    return log_format


class JsonLines:
    """Events as JSON lines on stderr, from ``level`` up (see the module's docstring)."""

    _LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
               "error": logging.ERROR, "critical": logging.CRITICAL}

    def __init__(self, level: int) -> None:
        self.level = level
        self._lock = threading.Lock()  # one line at a time from the fleet's and the heartbeat's threads

    def method(self, name: str) -> Any:
        level = "warning" if name == "warn" else name
        if level not in self._LEVELS:
            raise AttributeError(name)
        if self._LEVELS[level] < self.level:
            return _ignore

        def log(event: str, **values: Any) -> None:
            line = {**values, "event": event, "level": level,
                    "timestamp": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")}
            text = json.dumps(_redact_secrets(None, level, line), default=repr) + "\n"
            with self._lock:
                sys.stderr.write(text)
                sys.stderr.flush()
        return log


def _ignore(event: str, **values: Any) -> None:
    """A filtered-out event."""


def _apply(log_format: str, level: int) -> None:
    global _json
    log_format = resolve(log_format)
    if log_format == "json":
        _json = JsonLines(level)
        return
    _json = None
    import structlog

    from runner.console import use_color

    renderer = structlog.dev.ConsoleRenderer(colors=use_color(sys.stderr), sort_keys=False)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # WriteLogger: PrintLogger prints to whatever sys.stdout is when its file is the sys.stdout
        # structlog saw at import (stderr, while a command runs: see runner.cli).
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


class _Logger:
    """Stands for ``structlog.get_logger(name)`` until an event is logged."""

    __slots__ = ("_name", "_proxy")

    def __init__(self, name: str) -> None:
        self._name = name
        self._proxy: Any = None

    def __getattr__(self, method: str) -> Any:
        global _pending
        if _pending is not None:
            settings, _pending = _pending, None
            _apply(*settings)
        if _json is not None:
            return _json.method(method)
        if self._proxy is None:
            import structlog

            self._proxy = structlog.get_logger(self._name)  # reads the configuration at each call
        return getattr(self._proxy, method)


def get_logger(name: str) -> Any:
    """A structlog logger for ``name``, imported on first use."""
    return _Logger(name)
