"""The stairway check: every migration up, down, then up again, on an empty database.

What it catches (as pytest-alembic's ``test_upgrade`` and ``test_up_down_consistency`` do, and
one step further): a migration that fails on a fresh database, a missing or failing rollback,
a rollback that does not restore the schema it started from (a table, column or index left
behind or lost: the schema's shape is read from the catalog before ``up`` and after ``down``,
:mod:`runner.snapshot`), and a migration that cannot be applied again after its rollback (an
object the rollback forgot, which the second ``up`` trips over).

Run it on a throwaway database: it applies and rolls back everything.
"""

from __future__ import annotations

from dataclasses import dataclass

from runner import commands
from runner.config import Settings
from runner.db import open_database
from runner.errors import MIGRATION_FAILED, MigrateError
from runner.snapshot import diff_snapshots, take_snapshot
from runner.sources import load_migrations


class StairwayFailed(MigrateError):
    """A step of the stairway failed: ``migration`` and ``step`` (up, down, up again) name where."""

    exit_code = MIGRATION_FAILED

    def __init__(self, migration: str, step: str, message: str) -> None:
        self.migration = migration
        self.step = step
        super().__init__(f"stairway: {migration}: {step}: {message}")


@dataclass(frozen=True)
class StairwayResult:
    """The migrations checked, in order."""

    checked: list[str]


def _shape(settings: Settings) -> dict:
    with open_database(settings) as db:
        return take_snapshot(db, settings.compat.sqlite_view_template)


def _differences(expected: dict, actual: dict) -> str:
    return "; ".join(f"{c.change} {c.object}" + (f" ({c.detail})" if c.detail else "")
                     for c in diff_snapshots(expected, actual))


def check_stairway(settings: Settings) -> StairwayResult:
    """Up, down, up again for each migration of ``settings.migrations`` in order, on the (empty)
    database of ``settings``; raises StairwayFailed at the first step that fails."""
    checked: list[str] = []
    for migration in load_migrations(settings.migrations):
        mid = migration.id
        before = _shape(settings)
        for step, action in (("up", lambda: commands.up(settings, to=mid)),
                             ("down", lambda: commands.down(settings, steps=1))):
            try:
                action()
            except MigrateError as err:
                raise StairwayFailed(mid, step, str(err)) from None
            if step == "up":
                after = _shape(settings)
        left = _differences(before, _shape(settings))
        if left:
            raise StairwayFailed(mid, "down", f"the rollback did not restore the schema: {left}")
        try:
            commands.up(settings, to=mid)
        except MigrateError as err:
            raise StairwayFailed(mid, "up again", str(err)) from None
        changed = _differences(after, _shape(settings))
        if changed:
            raise StairwayFailed(mid, "up again", f"the schema differs from the first up: {changed}")
        checked.append(mid)
    return StairwayResult(checked)
