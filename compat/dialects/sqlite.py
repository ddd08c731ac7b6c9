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
from compat.shapes import ColumnShape, TableShape, Touch, compose, stored, touched_tables
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


def table_shape(db: Database, table: str) -> TableShape | None:
    """``table``'s shape, its columns keyed by name (SQLite has no stable column ids)."""
    if not table_exists(db, table):
        return None
    rows = db.execute('SELECT name, type, "notnull", dflt_value, hidden FROM pragma_table_xinfo(%s)', (table,)).fetchall()
    return TableShape(table, None, table, [ColumnShape(name, name, typ or "", default, hidden in (2, 3), bool(nn))
                                           for name, typ, nn, default, hidden in rows if hidden != 1])


class SQLiteShims:
    name = "sqlite"
    search_path = False  # no schemas, no roles: consumers read the shim views by name
    shapes = True
    # SQLite rebuilds tables for many ALTER TABLE forms and checks every view when a table is
    # renamed: every shim view is dropped before a migration and rebuilt after it.
    rebuild_all = True

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

    def prepare_refresh(self, ctx: MigrationContext, active: list[Shim], touches: list[Touch] | None
                        ) -> list[tuple[Shim, Any]]:
        """Drop every active shim view (rebuilt in ``rebuild``): table rebuilds fail on views.
        ``touches`` (:func:`compat.shapes.touched_tables`) is not needed: every view goes."""
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

    # -- shapes (compat.shapes): tables and columns are known by name, followed through the
    # migration's RENAME statements (a drop plus an add of the same name reads as the same column).
    def shape_keys(self, db: Database, names: list[tuple[str | None, str]] | None) -> list[str]:
        if names is None:  # every table but SQLite's and the runner's own (names starting with _)
            rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").fetchall()
            return [r[0] for r in rows if not r[0].startswith(("sqlite_", "_"))]
        return list(dict.fromkeys(t for schema, t in names if schema in (None, "main") and table_exists(db, t)))

    def shapes_of(self, db: Database, keys: list[str]) -> dict[str, TableShape]:
        found = {key: table_shape(db, key) for key in keys}
        return {k: v for k, v in found.items() if v is not None}

    def shapes_after(self, ctx: MigrationContext, before: dict[str, TableShape]) -> dict[str, TableShape]:
        """The tables of ``before`` after the statements, their columns keyed by their names before."""
        touches = touched_tables(ctx.migration.statements(ctx.direction)) or []
        tables = {key: key for key in before}
        columns: dict[str, dict[str, str]] = {key: {} for key in before}  # table key -> {name before: name now}
        for t in touches:
            key = next((k for k, now in tables.items() if now == t.table), None)
            if key is None:
                continue
            if t.kind == "rename_table" and t.detail:
                tables[key] = t.detail
            elif t.kind == "rename" and t.column and t.detail:
                moved = columns[key]
                old = next((b for b, n in moved.items() if n == t.column), t.column)
                moved[old] = t.detail
        out: dict[str, TableShape] = {}
        for key, shape in before.items():
            now = table_shape(ctx.db, tables[key])
            if now is None:
                continue
            back = {n: b for b, n in columns[key].items()}
            names_before = {c.name for c in shape.columns}
            cols = []
            for c in now.columns:
                was = back.get(c.name)
                if was is None:
                    was = c.name if c.name in names_before and c.name not in columns[key] else f"+{c.name}"
                cols.append(ColumnShape(was, c.name, c.type, c.default, c.generated, c.not_null))
            out[key] = TableShape(key, None, now.name, cols)
        return out

    def shim_bases(self, db: Database, shims: list[Shim]) -> dict[int, str]:
        return {s.id: s.table_name for s in shims if s.compat_schema is None}

    def detach(self, db: Database, shims: list[Shim]) -> None:
        for shim in shims:
            drop_view(db, shim.view_name)

    def relation_exists(self, db: Database, schema: str | None, view: str) -> bool:
        return object_exists(db, view)

    @staticmethod
    def comment(name: str, as_of: str, migration_id: str) -> str:
        return ""  # SQLite has no comments on views

    def build_shape(self, db: Database, *, schema: str | None, view: str, table: TableShape,
                    entries: list[dict[str, Any]], comment: str = "") -> list[dict[str, Any]]:
        """Create the read-only view ``view`` presenting ``entries`` over ``table`` as it is now."""
        presented, hidden = compose(entries, table.by_attnum())
        items = []
        for p in presented:
            cast = f" AS {p.type})" if p.type else ")"
            if p.show in ("column", "rename"):
                source = quote_identifier(p.base or "")
            elif p.show == "cast":
                source = f"CAST({quote_identifier(p.base or '')}{cast}"
            elif p.show == "expr":
                source = f"CAST(({p.expr}){cast}"
            else:
                source = f"CAST(NULL{cast}"
            items.append(f"{source} AS {quote_identifier(p.name)}")
        db.execute(f"CREATE VIEW {quote_identifier(view)} AS SELECT {', '.join(items)} FROM {quote_identifier(table.name)}")
        out = stored(presented, hidden, entries)
        for p, entry in zip(presented, out):  # the next migration knows the columns by their names now
            entry["attnum"] = p.base if p.base is not None else f"-{p.name}"
        return out

    # -- the shim commands --------------------------------------------------------------------
    def drop(self, db: Database, shim: Shim) -> str | None:
        drop_view(db, shim.view_name)
        return None

    def sessions_using(self, db: Database, shims: list[Shim], routes: list[Route]) -> tuple[list[Session], list[str]]:
        return [], []  # no server sessions to see

    def foreign_objects(self, db: Database, settings: Settings, registry: Registry) -> list[tuple[str, str]]:
        return []  # no roles: every object in the file is the file owner's


BUILDER = SQLiteShims()
