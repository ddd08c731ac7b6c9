"""structlog set-up: human-readable on a terminal, JSON lines otherwise; always stderr.

Console lines keep the order in which an event names its keys (not sorted), and carry colours
only on a terminal without ``NO_COLOR`` (runner.console.use_color). `migrate up` on the console
shows its progress through runner.console instead of one event per step.

Modules take their logger from :func:`get_logger`: structlog is imported (and the CLI's
configuration applied) when the first event is logged, so a command that logs nothing, such as
a no-op `migrate up` or `migrate status`, does not pay for importing it.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from runner.secrets import redact_data

# The configuration asked for by configure(), applied before the next event; None once applied.
_pending: tuple[str, int] | None = None


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


def _apply(log_format: str, level: int) -> None:
    import structlog

    log_format = resolve(log_format)
    renderer: Any
    if log_format == "console":
        from runner.console import use_color

        renderer = structlog.dev.ConsoleRenderer(colors=use_color(sys.stderr), sort_keys=False)
    else:
        renderer = structlog.processors.JSONRenderer()
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
        if self._proxy is None:
            import structlog

            self._proxy = structlog.get_logger(self._name)  # reads the configuration at each call
        return getattr(self._proxy, method)


def get_logger(name: str) -> Any:
    """A structlog logger for ``name``, imported on first use."""
    return _Logger(name)
