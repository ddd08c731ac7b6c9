"""Errors a user can cause, each with the exit code the CLI documents.

Every error here is printed as one line on stderr, never as a traceback.
"""

from __future__ import annotations

OK = 0
NOT_AT_HEAD = 1  # pending, modified or missing migrations; verification failed; expired shims
USAGE = 2  # bad command line, config or migration files
LOCK = 3  # could not get a lock in time
MIGRATION_FAILED = 4  # a migration failed and was rolled back
UNREACHABLE = 5  # database unreachable (or the connection was lost)


class MigrateError(Exception):
    """Base class: ``str(err)`` is the one line shown to the user."""

    exit_code = USAGE


class UsageError(MigrateError):
    exit_code = USAGE


class ConfigError(MigrateError):
    exit_code = USAGE


class MigrationFileError(MigrateError):
    """A migration file is unreadable or malformed; names the file and line."""

    exit_code = USAGE

    def __init__(self, path: str, message: str, line: int | None = None) -> None:
        self.path = path
        self.line = line
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {message}")


class DriftError(MigrateError):
    """Applied migrations whose files changed or disappeared."""

    exit_code = NOT_AT_HEAD


class UntrustedObject(MigrateError):
    """An object the runner would use was not made by it (another role owns it): refused."""

    exit_code = NOT_AT_HEAD


class LockTimeout(MigrateError):
    exit_code = LOCK


class MigrationFailed(MigrateError):
    """A migration failed; its transaction was rolled back."""

    exit_code = MIGRATION_FAILED


class DatabaseUnreachable(MigrateError):
    exit_code = UNREACHABLE
