"""The extension point the engine calls around each migration.

A hook runs inside the migration's own transaction (for transactional migrations), on the
runner's connection, with the runner's own search_path, so whatever it creates commits or rolls
back together with the migration and its bookkeeping rows. The compat package implements one
(compatibility shims), :mod:`runner.snapshot` another (the expected schema after a run).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from runner.config import Settings
from runner.migration import MigrationFile

if TYPE_CHECKING:
    from runner.db import Database


@dataclass
class MigrationContext:
    """What a hook gets to see about the migration being applied.

    ``db`` is the runner's :class:`runner.db.Database` inside the open transaction;
    ``previous`` is the migration ordered just before this one (None for the first);
    ``direction`` is ``"apply"``, ``"rollback"`` or ``"post-apply"``.
    """

    db: Database
    migration: MigrationFile
    previous: MigrationFile | None
    settings: Settings
    direction: str = "apply"


class MigrationHook(Protocol):
    def wants(self, ctx: MigrationContext) -> bool:
        """Whether ``before``/``after`` have work for this migration (asked before its transaction
        begins). When no hook wants a migration, the engine skips both and sends the migration,
        its bookkeeping rows and COMMIT to PostgreSQL in one round trip.
        """

    def before(self, ctx: MigrationContext) -> None:
        """Called after BEGIN, before the migration's statements."""

    def after(self, ctx: MigrationContext) -> None:
        """Called after the statements, before the bookkeeping rows and COMMIT.

        Raise a :class:`runner.errors.MigrateError` to roll everything back.
        """
