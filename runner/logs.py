"""structlog set-up: human-readable on a terminal, JSON lines otherwise; always stderr."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from runner.urls import redact


def _redact_urls(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    for key, value in event.items():
        if isinstance(value, str) and "://" in value:
            event[key] = redact(value)
    return event


def configure(log_format: str = "auto", level: int = logging.INFO) -> None:
    """``log_format``: auto (console on a terminal, else json), console or json."""
    if log_format == "auto":
        log_format = "console" if sys.stderr.isatty() else "json"
    renderer: Any
    if log_format == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact_urls,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # yoyo logs through the standard library; keep it quiet unless it warns.
    logging.getLogger("yoyo").setLevel(logging.WARNING)
