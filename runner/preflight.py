"""Check everything about the pending migrations that can be checked without running them.

`migrate up` (real and ``--dry-run``) calls :func:`check_pending` once the pending list is known and
before any migration runs, so that a malformed file late in the list cannot leave the database
half-migrated (the earlier migrations committed, the run stopped at the bad one). What it checks:

* every ``-- compat:`` directive of every pending file parses, with a window that is not already
  over (``until=`` in the past) and not longer than ``[compat] max_window``;
* every ``[[renames]]`` config entry names a migration in the folder and is well formed;
* a header comment that looks like a misspelt directive (``-- compta: rename ...``), which would
  otherwise be an ordinary comment and the rename would ship without its shim.

Parse errors, ``transactional`` markers, ``depends`` and duplicate versions are already refused
when the folder is read (:mod:`runner.sources`). Each problem raises an exit-2 error naming
``file:line`` (or the config file and entry).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone

from runner.config import Settings
from runner.durations import parse_duration
from runner.errors import ConfigError, MigrationFileError
from runner.migration import MigrationFile
from runner.sqlfile import DIRECTIVES


def check_pending(settings: Settings, files: Sequence[MigrationFile], pending: Sequence[MigrationFile],
                  now: datetime | None = None) -> None:
    """Raise (exit 2) on the first problem in ``pending`` or the ``[[renames]]`` entries; ``files`` are
    all migrations in the folder (a config entry may name an applied one)."""
    if not pending and not settings.renames:
        return  # a no-op `up` does not need the declaration parser (bench/bench_runner.py, no-op up)
    from compat.declarations import check_config_renames, declarations_for, window_problem

    now = now or datetime.now(timezone.utc)
    check_config_renames(settings, list(files))
    max_window = _max_window(settings)
    for migration in pending:
        _check_directive_spelling(migration)
        for declaration in declarations_for(migration, settings):
            problem = window_problem(declaration, now, max_window)
            if problem is None:
                continue
            path, _, line = declaration.source.rpartition(":")
            if path == migration.path and line.isdigit():
                raise MigrationFileError(migration.path, f"compat: {problem}", int(line))
            raise ConfigError(f"{declaration.source}: {problem}")


def _max_window(settings: Settings) -> timedelta:
    where = str(settings.config_path) if settings.config_path else "config"
    try:
        return parse_duration(settings.compat.max_window, f"{where}: [compat] max_window")
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _check_directive_spelling(migration: MigrationFile) -> None:
    """A header comment ``-- word: ...`` whose word is close to a directive name but is none."""
    for word, number in migration.comment_words:
        close = difflib.get_close_matches(word.lower(), DIRECTIVES, n=1, cutoff=0.7)
        if close:
            raise MigrationFileError(
                migration.path, f"unknown directive '{word}:' (did you mean '{close[0]}:'?); "
                f"known directives: {', '.join(DIRECTIVES)}", number)
