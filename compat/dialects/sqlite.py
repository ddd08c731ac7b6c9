"""SQLite shims: SQLite has no schemas, so a shim is a view with a templated name.

The name comes from ``Settings.compat.sqlite_view_template`` (default ``{table}__v{version}``:
``remediation_workflow_catalog__v017``). The view lists the table's columns as they were at that
version, under that version's names::

    CREATE VIEW "remediation_workflow_catalog__v017" AS
    SELECT "workflow_id" AS "workflow_id", ..., "container_image" AS "execution_bundle", ...
    FROM "remediation_workflow_catalog"

Reads through the old names work. Writes do not: SQLite views are read-only without INSTEAD OF
triggers, and triggers cannot reproduce column defaults faithfully (an omitted column arrives as
NULL), so an INSERT, UPDATE or DELETE through the shim fails with SQLite's own error "cannot
modify ... because it is a view". Old writers must be upgraded before the rename on SQLite.

Columns are tracked by name (the registry's column map is ``{"name", "column"}``); the base
names are updated when a later declared rename touches them. SQLite rebuilds a table for many
ALTER TABLE forms and refuses while a view names it, so every active shim view is dropped before
each transactional migration and rebuilt after it. There are no roles: no routing, no sessions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from compat.declarations import RenameDeclaration
from compat.dialects import Session, TableSnapshot
from compat.dialects import drop_command
from compat.dialects.postgresql import check_columns, label, lost_column
from compat.model import Route, Shim
from runner.db import quote_identifier
from runner.errors import MigrationFailed

if TYPE_CHECKING:
    from compat.registry import Registry
    from runner.config import Settings
    from runner.db import Database
    from runner.hooks import MigrationContext


def table_exists(db: Database, table: str) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = %s", (table,)).fetchone() is not None


def object_exists(db: Database, name: str) -> bool:
    """Whether any table, view, index or trigger is called ``name`` (case-insensitively, as SQLite compares)."""
    return db.execute("SELECT 1 FROM sqlite_master WHERE lower(name) = lower(%s)", (name,)).fetchone() is not None


def table_columns(db: Database, table: str) -> list[str]:
    """Column names in ``SELECT *`` order (generated columns included)."""
    rows = db.execute("SELECT name, hidden FROM pragma_table_xinfo(%s)", (table,)).fetchall()
    # hidden: 0 normal, 1 hidden (virtual tables), 2/3 generated (visible to SELECT *)
    return [r[0] for r in rows if r[1] != 1]


def create_view(db: Database, *, view: str, table: str, columns: list[tuple[str, str]]) -> None:
    """Create ``view`` over ``table`` with ``columns`` = [(view column, base column)]."""
    select_list = ", ".join(f"{quote_identifier(base)} AS {quote_identifier(name)}" for name, base in columns)
    db.execute(f"CREATE VIEW {quote_identifier(view)} AS SELECT {select_list} FROM {quote_identifier(table)}")


def drop_view(db: Database, view: str) -> None:
    db.execute(f"DROP VIEW IF EXISTS {quote_identifier(view)}")


class SQLiteShims:
    name = "sqlite"
    search_path = False  # no schemas, no roles: consumers read the shim views by name

    def require_ours(self, db: Database, schema: str, registry: Registry, doing: str) -> None:
        """No roles: every object in the file is the file owner's."""

    def location(self, settings: Settings, table: str, version: str) -> tuple[str | None, str]:
        return None, settings.compat.sqlite_view_template.format(table=table, version=version)

    def shim_name(self, schema: str | None, view: str) -> str:
        return view

    # -- the hook ---------------------------------------------------------------------------
    def snapshot(self, ctx: MigrationContext, group: list[RenameDeclaration]) -> TableSnapshot:
        first = group[0]
        if first.schema not in (None, "main"):
            raise MigrationFailed(f"{first.source}: compat rename: SQLite shims need a table in the main database, "
                                  f"not {first.qualified_table}")
        if not table_exists(ctx.db, first.table):
            raise MigrationFailed(f"{first.source}: compat rename: table {first.qualified_table} does not exist "
                                  f"before {ctx.migration.id} runs")
        columns = table_columns(ctx.db, first.table)
        check_columns(group, set(columns), first.table)
        return TableSnapshot(group, first.table, None, first.table, [(c, c) for c in columns])

    def prepare_refresh(self, ctx: MigrationContext, active: list[Shim], actions: list[Any] | None
                        ) -> list[tuple[Shim, Any]]:
        """Drop every active shim view (rebuilt in ``rebuild``): table rebuilds fail on views."""
        if not ctx.migration.transactional:  # the drop would commit on its own
            return []
        active = [s for s in active if s.compat_schema is None]
        for shim in active:
            drop_view(ctx.db, shim.view_name)
        return [(shim, None) for shim in active]

    def verify(self, ctx: MigrationContext, snap: TableSnapshot) -> None:
        first = snap.declarations[0]
        if not table_exists(ctx.db, snap.name):
            raise MigrationFailed(f"{first.source}: declared rename {label(first)} did not happen: "
                                  f"table {snap.name} no longer exists")
        after = table_columns(ctx.db, snap.name)
        renames = {d.old: d.new for d in snap.declarations}
        for decl in snap.declarations:
            if decl.old in after:
                problem = f"column {decl.old} still exists"
            elif decl.new not in after:
                problem = f"column {decl.new} does not exist"
            else:
                continue
            raise MigrationFailed(f"{decl.source}: declared rename {label(decl)} did not happen: {problem}")
        # A rename keeps the column's place; drop + add moves it to the end.
        expected = [renames.get(c, c) for c, _ in snap.columns if renames.get(c, c) in after]
        if [c for c in after if c in expected] != expected:
            raise MigrationFailed(
                f"{first.source}: declared rename {label(first)} did not happen: the column moved (dropped "
                "and re-added? its data would be lost); use ALTER TABLE ... RENAME COLUMN")

    def rebuild(self, ctx: MigrationContext, registry: Registry, refresh: list[tuple[Shim, Any]],
                snapshots: list[TableSnapshot]) -> None:
        renames: dict[str, dict[str, str]] = {}
        for snap in snapshots:
            renames.setdefault(snap.name, {}).update({d.old: d.new for d in snap.declarations})
        for shim, _ in refresh:
            mapping = renames.get(shim.table_name, {})
            live = set(table_columns(ctx.db, shim.table_name)) if table_exists(ctx.db, shim.table_name) else set()
            columns = [{"name": c["name"], "column": mapping.get(c["column"], c["column"])} for c in shim.columns]
            for column in columns:
                if column["column"] not in live:
                    raise MigrationFailed(
                        f"{ctx.migration.path}: removes column {column['column']} of {shim.table_name}, which active "
                        f"shim {shim.name} exposes as {column['name']} to version {shim.as_of} consumers (an "
                        f"undeclared rename counts too: declare it with -- compat: rename); "
                        f"drop the shim first: {drop_command(shim)}")
            create_view(ctx.db, view=shim.view_name, table=shim.table_name,
                        columns=[(c["name"], c["column"]) for c in columns])
            if columns != shim.columns:
                registry.set_columns(shim, columns)

    def create(self, ctx: MigrationContext, registry: Registry, snap: TableSnapshot, version: str,
               view_columns: list[tuple[str, str]]) -> tuple[str | None, str, list[dict[str, Any]]]:
        first = snap.declarations[0]
        _, view = self.location(ctx.settings, snap.name, version)
        if object_exists(ctx.db, view):
            raise MigrationFailed(f"{first.source}: cannot create shim view {view}: an object of that name already exists")
        renames = {d.old: d.new for d in snap.declarations}
        columns = [(name, renames.get(base, base)) for name, base in view_columns]
        live = set(table_columns(ctx.db, snap.name))
        lost = next((n for n, c in columns if c not in live), None)
        if lost is not None:
            raise MigrationFailed(lost_column(first, lost, version))
        create_view(ctx.db, view=view, table=snap.name, columns=columns)
        return None, view, [{"name": n, "column": c} for n, c in columns]

    # -- the shim commands --------------------------------------------------------------------
    def drop(self, db: Database, shim: Shim) -> str | None:
        drop_view(db, shim.view_name)
        return None

    def sessions_using(self, db: Database, shims: list[Shim], routes: list[Route]) -> tuple[list[Session], list[str]]:
        return [], []  # no server sessions to see

    def foreign_objects(self, db: Database, settings: Settings, registry: Registry) -> list[tuple[str, str]]:
        return []  # no roles: every object in the file is the file owner's


BUILDER = SQLiteShims()
