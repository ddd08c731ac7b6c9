"""Errors a user can cause, each with the exit code the CLI documents.

Every error here is printed as one line on stderr, never as a traceback; with ``--format json``
also as the ``error`` of the command's JSON document (``kind``, ``message``, ``file``, ``line``,
``exit_code``: see runner.failure), with what the command did before it failed (``partial``).
"""

from __future__ import annotations

from typing import Any

OK = 0
NOT_AT_HEAD = 1  # pending, modified or missing migrations; verification failed; expired shims
USAGE = 2  # bad command line, config or migration files
LOCK = 3  # could not get a lock in time
MIGRATION_FAILED = 4  # a migration failed and was rolled back
UNREACHABLE = 5  # database unreachable (or the connection was lost)


class MigrateError(Exception):
    """Base class: ``str(err)`` is the one line shown to the user.

    ``kind`` names the class of error in JSON output; ``file`` and ``line`` say where (a migration
    file, a config file) when known; ``partial`` is what the command did before it failed (for
    `up`: applied, failed, pending), merged into the JSON document.
    """

    exit_code = USAGE
    kind = ""  # "": named after the exit code (runner.failure)
    file: str | None = None
    line: int | None = None
    partial: dict[str, Any] | None = None

    def at(self, file: str | None, line: int | None = None) -> MigrateError:
        """Say where the error is; returns ``self``."""
        self.file, self.line = file, line
        return self


class UsageError(MigrateError):
    exit_code = USAGE
    kind = "usage"


class ConfigError(MigrateError):
    exit_code = USAGE
    kind = "config"


class MigrationFileError(MigrateError):
    """A migration file is unreadable or malformed; names the file and line."""

    exit_code = USAGE
    kind = "migration_file"

    def __init__(self, path: str, message: str, line: int | None = None) -> None:
        self.path = self.file = path
        self.line = line
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {message}")


class DriftError(MigrateError):
    """Applied migrations whose files changed or disappeared."""

    exit_code = NOT_AT_HEAD
    kind = "drift"


class UntrustedObject(MigrateError):
    """An object the runner would use was not made by it (another role owns it): refused."""

    exit_code = NOT_AT_HEAD
    kind = "untrusted"


class LockTimeout(MigrateError):
    exit_code = LOCK
    kind = "lock_timeout"


class MigrationFailed(MigrateError):
    """A migration failed; its transaction was rolled back."""

    exit_code = MIGRATION_FAILED
    kind = "migration_failed"


class DatabaseUnreachable(MigrateError):
    exit_code = UNREACHABLE
    kind = "unreachable"
