"""The extension point the executor calls around each migration.

A hook runs inside the migration's own transaction (for transactional
migrations), on the runner's connection, so whatever it creates commits or
rolls back together with the migration and its bookkeeping rows. The compat
package implements one (compatibility shims for declared renames).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from runner.config import Settings
from runner.migration import MigrationFile


@dataclass
class MigrationContext:
    """What a hook gets to see about the migration being applied.

    ``connection`` is the DB-API connection (psycopg 3 or sqlite3) inside the
    open transaction; ``dialect`` is ``"postgresql"`` or ``"sqlite"``;
    ``schema`` is the schema the runner's own tables live in (the connection's
    ``current_schema()`` at start; None on SQLite); ``previous`` is the
    migration ordered just before this one (None for the first);
    ``direction`` is ``"apply"`` or ``"rollback"``.
    """

    connection: Any
    dialect: str
    schema: str | None
    migration: MigrationFile
    previous: MigrationFile | None
    settings: Settings
    direction: str = "apply"


class MigrationHook(Protocol):
    def wants(self, ctx: MigrationContext) -> bool:
        """Whether ``before``/``after`` have work for this migration (asked before its transaction
        begins). When no hook wants a migration, the executor skips both and sends the migration,
        its bookkeeping rows and COMMIT to PostgreSQL in one round trip.
        """

    def before(self, ctx: MigrationContext) -> None:
        """Called after BEGIN, before the migration's statements."""

    def after(self, ctx: MigrationContext) -> None:
        """Called after the statements, before the bookkeeping rows and COMMIT.

        Raise a :class:`runner.errors.MigrateError` to roll everything back.
        """
