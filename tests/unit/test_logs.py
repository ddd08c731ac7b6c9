"""runner.logs: JSON lines as structlog's JSON pipeline prints them, without importing structlog."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
from contextlib import redirect_stderr
from pathlib import Path

import structlog

from runner import logs

VALUES = {"database": "postgresql://app:s3cret@db/app", "count": 3, "ratio": 0.5, "ok": True, "none": None,
          "items": ["a", 1], "path": Path("/tmp/x"), "nested": {"dsn": "password=hunter2 host=db"}}


def _structlog_line(method: str, event: str, **values) -> str:
    out = io.StringIO()
    logger = structlog.wrap_logger(
        structlog.WriteLogger(out),
        processors=[structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso", utc=True),
                    logs._redact_secrets, structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    getattr(logger, method)(event, **values)
    return out.getvalue()


def _our_line(method: str, event: str, level: int = logging.DEBUG, **values) -> str:
    err = io.StringIO()
    with redirect_stderr(err):
        logs.JsonLines(level).method(method)(event, **values)
    return err.getvalue()


def _untimed(line: str) -> tuple[list[tuple[str, object]], str]:
    document = json.loads(line)
    return [(k, v) for k, v in document.items() if k != "timestamp"], document["timestamp"]


def test_every_level_prints_what_structlog_prints_with_secrets_hidden() -> None:
    for method in ("debug", "info", "warning", "error", "critical"):
        ours, theirs = _our_line(method, "migrating", **VALUES), _structlog_line(method, "migrating", **VALUES)
        assert ours.endswith("\n") and ours.count("\n") == 1
        (our_items, our_time), (their_items, their_time) = _untimed(ours), _untimed(theirs)
        assert our_items == their_items  # the same keys, values and key order
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", our_time) and len(our_time) == len(their_time)
        assert "s3cret" not in ours and "hunter2" not in ours


def test_events_below_the_level_are_dropped() -> None:
    assert _our_line("info", "applied", level=logging.WARNING) == ""
    assert _our_line("debug", "detail", level=logging.INFO) == ""
    assert json.loads(_our_line("warning", "slow", level=logging.WARNING))["level"] == "warning"


def test_a_json_command_does_not_import_structlog(tmp_path: Path) -> None:
    """The point of JsonLines: `migrate up` with JSON logs (a pipeline) logs without structlog."""
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "001_t.sql").write_text("CREATE TABLE t (id int);", encoding="utf-8")
    code = ("import sys; from runner.cli import main; code = main(['--log-format', 'json', '--database', "
            f"'sqlite:///{tmp_path}/x.db', '--migrations', '{tmp_path}/migrations', 'up']); "
            "print('structlog' in sys.modules, file=sys.stdout); sys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stderr.splitlines()[0])["event"] == "migrating"
    assert proc.stdout.strip().splitlines()[-1] == "False"
