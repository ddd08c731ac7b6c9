"""A failed command as a record: the one line on stderr, the JSON document, the final log event.

The CLI (runner.cli.main) turns whatever ends a command early into a :class:`Failure`: an error a
user can cause (runner.errors, with its exit code), a bad command line (click), a database error
outside any migration, an interrupt. With ``--format json`` its :meth:`Failure.document` is the
command's one document on stdout; with ``--log-format json`` :meth:`Failure.event` is the last
log line; otherwise :meth:`Failure.line` is printed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from runner import errors
from runner.db import one_line
from runner.dialects import error_kind
from runner.secrets import redact_data, redact_text

# Kind of an error class that names none, by its exit code.
KIND_BY_CODE = {errors.NOT_AT_HEAD: "refused", errors.USAGE: "usage", errors.LOCK: "lock_timeout",
                errors.MIGRATION_FAILED: "migration_failed", errors.UNREACHABLE: "unreachable", 130: "interrupted"}


@dataclass
class Failure:
    kind: str
    message: str
    exit_code: int
    file: str | None = None
    line: int | None = None
    partial: dict[str, Any] = field(default_factory=dict)  # what the command did before (up: applied, ...)

    def __post_init__(self) -> None:  # whatever prints a failure prints no password
        self.message = redact_text(self.message)
        self.partial = redact_data(self.partial)

    def line_text(self) -> str:
        return f"migrate: error: {self.message}"

    def error(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message, "file": self.file, "line": self.line,
                "exit_code": self.exit_code}

    def document(self, command: str | None) -> dict[str, Any]:
        """The command's JSON document on failure: ``ok`` false, ``command``, ``error``, and what
        the command did before it failed (for `up`: database, applied, failed, pending, unconfirmed)."""
        return {"ok": False, "command": command, "error": self.error(), **self.partial}


def from_exception(err: BaseException) -> Failure | None:
    """The failure ``err`` stands for; None when it is a bug (let the traceback show)."""
    import click

    # click turns Ctrl-C into Abort, raised from the KeyboardInterrupt that carries `up`'s partial result
    partial = getattr(err, "partial", None) or getattr(err.__cause__, "partial", None) or {}
    if isinstance(err, (KeyboardInterrupt, click.exceptions.Abort)):
        return Failure("interrupted", "interrupted", 130, partial=partial)
    if isinstance(err, click.ClickException):
        return Failure("usage", err.format_message(), errors.USAGE)
    if isinstance(err, errors.MigrateError):
        code = err.exit_code
        return Failure(err.kind or KIND_BY_CODE.get(code, "error"), str(err), code, err.file, err.line, partial)
    code = _database_error_code(err)
    if code is None:
        return None

    what = "lost the connection to the database" if code == errors.UNREACHABLE else "database error"
    return Failure("unreachable" if code == errors.UNREACHABLE else "database", f"{what}: {one_line(err)}", code,
                   partial=partial)


def _database_error_code(err: BaseException) -> int | None:
    """Exit code for a driver error raised outside a migration (those the executor translates):
    5 when the connection is gone, 2 for the rest (e.g. no CREATE privilege for the runner's
    tables); None when ``err`` is no database error at all (a bug: let it show)."""
    kind = error_kind(err)
    return None if kind is None else errors.UNREACHABLE if kind == "connection" else errors.USAGE
