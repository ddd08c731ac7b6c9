"""The migration hook: verify declared renames, create shims, keep existing shims intact.

:class:`CompatHook` runs inside each migration's transaction (see
:mod:`runner.hooks`):

``before(ctx)``
    parses the migration's rename declarations and snapshots each declared
    table's columns (PostgreSQL attnums / SQLite names), so the shim can present
    the previous version exactly, even when the same migration adds columns.
    It then looks for statements that would break an active shim: dropping a
    column (or table) a shim exposes stops the migration before anything runs,
    naming the shim and the command that removes it; retyping an exposed
    column drops the affected shim views so they can be rebuilt afterwards.
    Python migrations cannot be inspected, so every active shim is rebuilt
    around them; on SQLite all shim views are rebuilt around every migration
    (table rebuilds would otherwise fail on the views).
``after(ctx)``
    checks each declared rename really happened (the old column's attnum now
    carries the new name), rebuilds the views dropped in ``before``, checks no
    other shim view vanished (``DROP ... CASCADE``), then creates the new
    shims and their registry rows. Any problem raises
    :class:`runner.errors.MigrationFailed`, which rolls the whole migration back.

On rollback of a migration, its shims are dropped (and recorded as such) first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from compat.declarations import RenameDeclaration, declarations_for, quote_ident
from compat.registry import Registry, Shim
from runner.config import Settings
from runner.durations import parse_duration
from runner.errors import MigrationFailed
from runner.hooks import MigrationContext
from runner.logs import get_logger

log = get_logger("migrate.compat")


@dataclass
class _Snapshot:
    """A declared table as it was before the migration's statements."""

    declarations: list[RenameDeclaration]
    name: str  # table name before the migration (the view's name)
    schema: str | None
    oid: int | None = None  # PostgreSQL
    columns: list[tuple[str, int | None]] = field(default_factory=list)  # (name, attnum or None on SQLite)


@dataclass
class _Plan:
    snapshots: list[_Snapshot]
    refresh: list[tuple[Shim, int | None]]  # views dropped in before(): (shim, base table oid on PostgreSQL)
    idle: bool = False  # nothing declared and no active shim: after() has nothing to check


def version_label(ctx: MigrationContext) -> str:
    """The version a shim for ``ctx.migration`` presents: the previous migration's label ("0" if none)."""
    previous = ctx.previous
    if previous is None:
        return "0"
    return previous.version_label or previous.id


def shim_name(schema: str | None, view: str) -> str:
    """Registry name of a shim: ``compat_017.table`` on PostgreSQL, the view name on SQLite."""
    return f"{quote_ident(schema)}.{quote_ident(view)}" if schema else view


def _drop_command(shim: Shim) -> str:
    return f"migrate shims drop '{shim.name}'" if any(c in shim.name for c in ' "$') else f"migrate shims drop {shim.name}"


class CompatHook:
    """Implements :class:`runner.hooks.MigrationHook` for compatibility shims.

    ``create_shims=False`` (``migrate up --no-compat``) still verifies declared
    renames and keeps existing shims intact, but creates no new shims. Shims are
    also not created when ``Settings.compat.enabled`` is false. ``settings`` is
    accepted for the executor's wiring; the settings each context carries are
    the ones used.
    """

    def __init__(self, settings: Settings | None = None, *, create_shims: bool = True) -> None:
        self.create_shims = create_shims
        self._plans: dict[str, _Plan] = {}
        # Whether the registry has active shims, read once per run: only migrations (applied
        # under the runner's lock, through this hook) create shims, so it can only turn True here.
        self._any_active: bool | None = None

    # -- before -----------------------------------------------------------------
    def wants(self, ctx: MigrationContext) -> bool:
        """Idle for a migration that declares no rename while no shim is active."""
        return self._declarations(ctx, Registry(ctx.connection, ctx.dialect, ctx.schema)) is not None

    def _declarations(self, ctx: MigrationContext, registry: Registry) -> list[RenameDeclaration] | None:
        """The migration's rename declarations, or None when there is nothing to do."""
        declarations = declarations_for(ctx.migration, ctx.settings) if ctx.direction == "apply" else []
        if self._any_active is None:
            self._any_active = bool(registry.shims("active"))
        if ctx.direction == "apply" and not declarations and not self._any_active:
            return None
        return declarations

    def before(self, ctx: MigrationContext) -> None:
        registry = Registry(ctx.connection, ctx.dialect, ctx.schema)
        declarations = self._declarations(ctx, registry)
        if declarations is None:
            self._plans[ctx.migration.id] = _Plan([], [], idle=True)
            return
        if ctx.direction == "rollback":
            self._retire_for_rollback(ctx, registry)
        if ctx.dialect == "postgresql":
            snapshots = [self._snapshot_pg(ctx, group) for group in _group_by_table(declarations)]
            refresh = self._prepare_refresh_pg(ctx, registry)
        else:
            snapshots = [self._snapshot_sqlite(ctx, group) for group in _group_by_table(declarations)]
            refresh = self._prepare_refresh_sqlite(ctx, registry)
        self._plans[ctx.migration.id] = _Plan(snapshots, refresh)

    def _retire_for_rollback(self, ctx: MigrationContext, registry: Registry) -> None:
        from compat.commands import retire_shims

        mine = [s for s in registry.shims("active") if s.migration_id == ctx.migration.id]
        if mine:
            retire_shims(ctx.connection, ctx.dialect, registry, mine, f"migration {ctx.migration.id} rolled back")
            log.info("shims dropped with rollback", migration=ctx.migration.id, shims=[s.name for s in mine])

    def _snapshot_pg(self, ctx: MigrationContext, group: list[RenameDeclaration]) -> _Snapshot:
        from compat import views

        first = group[0]
        table = views.find_table(ctx.connection, first.schema, first.table)
        if table is None:
            raise MigrationFailed(
                f"{first.source}: compat rename: table {first.qualified_table} does not exist "
                f"before {ctx.migration.id} runs"
            )
        columns = views.table_columns(ctx.connection, table.oid)
        _check_columns(group, {c.name for c in columns}, table.name)
        return _Snapshot(group, table.name, table.schema, table.oid, [(c.name, c.attnum) for c in columns])

    def _snapshot_sqlite(self, ctx: MigrationContext, group: list[RenameDeclaration]) -> _Snapshot:
        from compat import sqlite_views

        first = group[0]
        if first.schema not in (None, "main"):
            raise MigrationFailed(
                f"{first.source}: compat rename: SQLite shims need a table in the main database, "
                f"not {first.qualified_table}"
            )
        if not sqlite_views.table_exists(ctx.connection, first.table):
            raise MigrationFailed(
                f"{first.source}: compat rename: table {first.qualified_table} does not exist "
                f"before {ctx.migration.id} runs"
            )
        columns = sqlite_views.table_columns(ctx.connection, first.table)
        _check_columns(group, set(columns), first.table)
        return _Snapshot(group, first.table, None, None, [(c, None) for c in columns])

    def _prepare_refresh_pg(self, ctx: MigrationContext, registry: Registry) -> list[tuple[Shim, int | None]]:
        """Raise for statements that would destroy an exposed column; drop views that need rebuilding."""
        from compat import views

        active = [s for s in registry.shims("active") if s.compat_schema is not None]
        if not active:
            return []
        conn = ctx.connection
        by_table: dict[int, list[Shim]] = {}
        base_of: dict[int, int] = {}
        bases = views.view_bases(conn, [(s.compat_schema, s.view_name) for s in active])
        for shim in active:
            base = bases.get((shim.compat_schema, shim.view_name))
            if base is not None:
                by_table.setdefault(base, []).append(shim)
                base_of[shim.id] = base
        statements = ctx.migration.up if ctx.direction == "apply" else ctx.migration.down
        actions = _analyse(statements) if ctx.migration.format != "python" else None
        refresh: list[Shim] = []
        if actions is None:  # cannot tell what it does: rebuild every shim around it (if it is atomic)
            if ctx.migration.transactional:
                refresh = [s for shims in by_table.values() for s in shims]
        else:
            for kind, schema, table_name, column, line in actions:
                table = views.find_table(conn, schema, table_name)
                if table is None or table.oid not in by_table:
                    continue
                where = f"{ctx.migration.path}:{line}" if line else ctx.migration.path
                shims = by_table[table.oid]
                if kind == "drop_table":
                    raise MigrationFailed(_blocked(where, f"drops table {table.schema}.{table.name}", shims))
                attnum = next((c.attnum for c in views.table_columns(conn, table.oid) if c.name == column), None)
                exposing = [s for s in shims if any(c["attnum"] == attnum for c in s.columns)]
                if not exposing:
                    continue
                if kind == "drop_column":
                    raise MigrationFailed(
                        _blocked(where, f"drops column {table.name}.{column}", exposing)
                    )
                if not ctx.migration.transactional:
                    raise MigrationFailed(_blocked(
                        where, f"changes the type of column {table.name}.{column} outside a transaction (the shim "
                        f"cannot be rebuilt around it safely)", exposing))
                refresh.extend(s for s in exposing if s not in refresh)
        for shim in refresh:
            views.drop_view(conn, shim.compat_schema, shim.view_name, keep_schema=True)
        if refresh:
            log.info("rebuilding shims around migration", migration=ctx.migration.id, shims=[s.name for s in refresh])
        return [(shim, base_of[shim.id]) for shim in refresh]

    def _prepare_refresh_sqlite(self, ctx: MigrationContext, registry: Registry) -> list[tuple[Shim, int | None]]:
        """SQLite: drop every active shim view (rebuilt in after; table rebuilds fail on views)."""
        from compat import sqlite_views

        if not ctx.migration.transactional:  # the drop would commit on its own
            return []
        active = [s for s in registry.shims("active") if s.compat_schema is None]
        for shim in active:
            sqlite_views.drop_view(ctx.connection, shim.view_name)
        return [(shim, None) for shim in active]

    # -- after ------------------------------------------------------------------
    def after(self, ctx: MigrationContext) -> None:
        plan = self._plans.pop(ctx.migration.id, None)
        if plan is None:
            raise MigrationFailed(f"{ctx.migration.id}: compat hook: after() called without before()")
        if plan.idle:
            return
        registry = Registry(ctx.connection, ctx.dialect, ctx.schema)
        if ctx.dialect == "postgresql":
            self._verify_pg(ctx, plan)
            self._rebuild_pg(ctx, plan.refresh)
            self._check_views_pg(ctx, registry)
        else:
            self._verify_sqlite(ctx, plan)
            self._rebuild_sqlite(ctx, registry, plan)
        if plan.snapshots and self.create_shims and ctx.settings.compat.enabled:
            self._create(ctx, registry, plan)

    def _verify_pg(self, ctx: MigrationContext, plan: _Plan) -> None:
        from compat import views

        for snap in plan.snapshots:
            live = {c.attnum: c.name for c in views.table_columns(ctx.connection, snap.oid)}
            if not live and views.table_by_oid(ctx.connection, snap.oid) is None:
                first = snap.declarations[0]
                raise MigrationFailed(
                    f"{first.source}: declared rename {_label(first)} did not happen: "
                    f"the migration dropped table {first.qualified_table}"
                )
            attnums = dict(snap.columns)
            names_now = set(live.values())
            for decl in snap.declarations:
                now = live.get(attnums[decl.old])
                if now == decl.new:
                    continue
                if now == decl.old:
                    problem = f"column {decl.old} still exists"
                elif now is not None:
                    problem = f"column {decl.old} was renamed to {now}, not {decl.new}"
                elif decl.new in names_now:
                    problem = (
                        f"column {decl.old} was dropped and {decl.new} added (its data is lost); "
                        f"use ALTER TABLE ... RENAME COLUMN"
                    )
                else:
                    problem = f"column {decl.old} was dropped and {decl.new} does not exist"
                raise MigrationFailed(f"{decl.source}: declared rename {_label(decl)} did not happen: {problem}")

    def _verify_sqlite(self, ctx: MigrationContext, plan: _Plan) -> None:
        from compat import sqlite_views

        for snap in plan.snapshots:
            first = snap.declarations[0]
            if not sqlite_views.table_exists(ctx.connection, snap.name):
                raise MigrationFailed(
                    f"{first.source}: declared rename {_label(first)} did not happen: "
                    f"table {snap.name} no longer exists"
                )
            after = sqlite_views.table_columns(ctx.connection, snap.name)
            renames = {d.old: d.new for d in snap.declarations}
            for decl in snap.declarations:
                if decl.old in after:
                    problem = f"column {decl.old} still exists"
                elif decl.new not in after:
                    problem = f"column {decl.new} does not exist"
                else:
                    continue
                raise MigrationFailed(f"{decl.source}: declared rename {_label(decl)} did not happen: {problem}")
            # A rename keeps the column's place; drop + add moves it to the end.
            expected = [renames.get(c, c) for c, _ in snap.columns if renames.get(c, c) in after]
            if [c for c in after if c in expected] != expected:
                raise MigrationFailed(
                    f"{first.source}: declared rename {_label(first)} did not happen: the column moved (dropped "
                    f"and re-added? its data would be lost); use ALTER TABLE ... RENAME COLUMN"
                )

    def _rebuild_pg(self, ctx: MigrationContext, refresh: list[tuple[Shim, int | None]]) -> None:
        from compat import views

        for shim, oid in refresh:
            table = views.table_by_oid(ctx.connection, oid) if oid is not None else None
            if table is None:
                raise MigrationFailed(
                    f"{ctx.migration.path}: removes table {shim.table}, which active shim {shim.name} exposes; "
                    f"drop the shim first: {_drop_command(shim)}"
                )
            try:
                views.create_view(
                    ctx.connection, schema=shim.compat_schema, view=shim.view_name, table=table,
                    columns=[(c["name"], c["attnum"]) for c in shim.columns],
                    comment=_comment(shim.name, shim.as_of, shim.migration_id),
                )
            except views.ColumnGone as gone:
                raise MigrationFailed(
                    f"{ctx.migration.path}: removes the column behind {gone.view_column} of {shim.table}, which "
                    f"active shim {shim.name} exposes to version {shim.as_of} consumers; "
                    f"drop the shim first: {_drop_command(shim)}"
                ) from None

    def _check_views_pg(self, ctx: MigrationContext, registry: Registry) -> None:
        from compat import views

        active = [s for s in registry.shims("active") if s.compat_schema is not None]
        gone = set(views.missing_views(ctx.connection, [(s.compat_schema, s.view_name) for s in active]))
        for shim in active:
            if (shim.compat_schema, shim.view_name) in gone:
                raise MigrationFailed(
                    f"{ctx.migration.path}: the migration removed the view of active shim {shim.name} "
                    f"(DROP ... CASCADE?); drop the shim first: {_drop_command(shim)}"
                )

    def _rebuild_sqlite(self, ctx: MigrationContext, registry: Registry, plan: _Plan) -> None:
        from compat import sqlite_views

        renames: dict[str, dict[str, str]] = {}
        for snap in plan.snapshots:
            renames.setdefault(snap.name, {}).update({d.old: d.new for d in snap.declarations})
        for shim, _ in plan.refresh:
            mapping = renames.get(shim.table_name, {})
            live = set(sqlite_views.table_columns(ctx.connection, shim.table_name)) if sqlite_views.table_exists(
                ctx.connection, shim.table_name) else set()
            columns = [{"name": c["name"], "column": mapping.get(c["column"], c["column"])} for c in shim.columns]
            for column in columns:
                if column["column"] not in live:
                    raise MigrationFailed(
                        f"{ctx.migration.path}: removes column {column['column']} of {shim.table_name}, which active "
                        f"shim {shim.name} exposes as {column['name']} to version {shim.as_of} consumers (an "
                        f"undeclared rename counts too: declare it with -- compat: rename); "
                        f"drop the shim first: {_drop_command(shim)}"
                    )
            sqlite_views.create_view(
                ctx.connection, view=shim.view_name, table=shim.table_name,
                columns=[(c["name"], c["column"]) for c in columns],
            )
            if columns != shim.columns:
                registry.set_columns(shim, columns)

    # -- creation -----------------------------------------------------------------
    def _create(self, ctx: MigrationContext, registry: Registry, plan: _Plan) -> None:
        from compat import sqlite_views, views

        registry.ensure()
        self._any_active = True
        label = version_label(ctx)
        now = registry.now()
        default_window = _default_window(ctx)
        is_pg = ctx.dialect == "postgresql"
        schema = views.compat_schema_name(ctx.settings.compat.schema_template, label) if is_pg else None
        for snap in plan.snapshots:
            renamed = {d.old: d for d in snap.declarations}
            first = snap.declarations[0]
            view_cols: list[tuple[str, Any]] = []
            for name, attnum in snap.columns:
                decl = renamed.get(name)
                base = attnum if is_pg else (decl.new if decl else name)
                view_cols.append((name, base))
                if decl is not None and decl.expose == "both":
                    view_cols.append((decl.new, base))
            if is_pg:
                view = snap.name
                if views.relation_exists(ctx.connection, schema, view):
                    raise MigrationFailed(
                        f"{first.source}: cannot create shim {shim_name(schema, view)}: {schema}.{view} already "
                        f"exists (a shim for another table of that name, or a leftover object)"
                    )
                name = shim_name(schema, view)
                try:
                    views.create_view(
                        ctx.connection, schema=schema, view=view, table=views.table_by_oid(ctx.connection, snap.oid),
                        columns=view_cols, comment=_comment(name, label, ctx.migration.id),
                    )
                except views.ColumnGone as gone:
                    raise MigrationFailed(_lost_column(first, gone.view_column, label)) from None
                columns = [{"name": n, "attnum": a} for n, a in view_cols]
            else:
                view = sqlite_views.view_name(ctx.settings.compat.sqlite_view_template, snap.name, label)
                if sqlite_views.object_exists(ctx.connection, view):
                    raise MigrationFailed(
                        f"{first.source}: cannot create shim view {view}: an object of that name already exists"
                    )
                name = view
                live = set(sqlite_views.table_columns(ctx.connection, snap.name))
                lost = next((n for n, c in view_cols if c not in live), None)
                if lost is not None:
                    raise MigrationFailed(_lost_column(first, lost, label))
                sqlite_views.create_view(ctx.connection, view=view, table=snap.name, columns=view_cols)
                columns = [{"name": n, "column": c} for n, c in view_cols]
            expires = max(d.expires_at(now, default_window) for d in snap.declarations)
            shim = registry.add(
                name=name, migration_id=ctx.migration.id, table_schema=snap.schema, table_name=snap.name,
                renames=[{"old": d.old, "new": d.new} for d in snap.declarations],
                expose="both" if any(d.expose == "both" for d in snap.declarations) else "old",
                as_of=label, compat_schema=schema, view_name=view, columns=columns,
                created_at=now, expires_at=expires,
            )
            log.info("shim created", shim=shim.name, table=shim.table, old=shim.old, new=shim.new,
                     expires_at=shim.expires_at.isoformat())


def _label(decl: RenameDeclaration) -> str:
    return f"{decl.qualified_table}.{quote_ident(decl.old)} -> {quote_ident(decl.new)}"


def _comment(name: str, as_of: str, migration_id: str) -> str:
    return (
        f"migrate compat shim {name}: version {as_of} shape, created by migration {migration_id}; "
        f"see `migrate shims list`, remove with `migrate shims drop`"
    )


def _default_window(ctx: MigrationContext) -> timedelta:
    try:
        return parse_duration(ctx.settings.compat.default_window, "[compat] default_window")
    except ValueError as err:
        raise MigrationFailed(str(err)) from None


def _group_by_table(declarations: list[RenameDeclaration]) -> list[list[RenameDeclaration]]:
    groups: dict[tuple[str | None, str], list[RenameDeclaration]] = {}
    for decl in declarations:
        groups.setdefault((decl.schema, decl.table), []).append(decl)
    return list(groups.values())


def _check_columns(group: list[RenameDeclaration], names: set[str], table: str) -> None:
    for decl in group:
        if decl.old not in names:
            raise MigrationFailed(
                f"{decl.source}: compat rename {_label(decl)}: column {decl.old} does not exist in {table} "
                f"before the migration runs"
            )
        if decl.new in names:
            raise MigrationFailed(
                f"{decl.source}: compat rename {_label(decl)}: column {decl.new} already exists in {table} "
                f"before the migration runs"
            )
    news = [d.new for d in group]
    for new in news:
        if news.count(new) > 1:
            raise MigrationFailed(f"{group[0].source}: compat rename: two columns of {table} renamed to {new}")


def _blocked(where: str, what: str, shims: list[Shim]) -> str:
    listed = ", ".join(f"{s.name} (version {s.as_of}, expires {s.expires_at:%Y-%m-%d %H:%M} UTC)" for s in shims)
    commands = "; ".join(_drop_command(s) for s in shims)
    return (
        f"{where}: the migration {what}, which active shim {listed} exposes; nothing was applied. "
        f"Drop the shim first ({commands}) or wait until its consumers have moved on"
    )


def _lost_column(decl: RenameDeclaration, column: str, label: str) -> str:
    return (
        f"{decl.source}: cannot create the shim for {_label(decl)}: the migration also removes column {column}, "
        f"which version {label} consumers still see; move that change to a later migration, after the shim's window"
    )


def _analyse(statements: list[Any]) -> list[tuple[str, str | None, str, str | None, int]] | None:
    """What the statements do to existing columns: (kind, schema, table, column, line).

    kind is drop_column, alter_type or drop_table. Returns None when a
    statement cannot be parsed (the caller then assumes the worst).
    """
    from pglast import parse_sql
    from pglast.enums import AlterTableType, ObjectType
    from pglast.parser import ParseError

    found: list[tuple[str, str | None, str, str | None, int]] = []
    for statement in statements:
        try:
            parsed = parse_sql(statement.sql)
        except ParseError:
            return None
        for raw in parsed:
            node = raw.stmt
            kind = type(node).__name__
            if kind == "AlterTableStmt" and node.relation is not None:
                for cmd in node.cmds or ():
                    if cmd.subtype == AlterTableType.AT_DropColumn:
                        found.append(("drop_column", node.relation.schemaname, node.relation.relname, cmd.name,
                                      statement.line))
                    elif cmd.subtype == AlterTableType.AT_AlterColumnType:
                        found.append(("alter_type", node.relation.schemaname, node.relation.relname, cmd.name,
                                      statement.line))
            elif kind == "DropStmt" and node.removeType == ObjectType.OBJECT_TABLE:
                for obj in node.objects or ():
                    names = [getattr(part, "sval", None) for part in obj]
                    if names and all(names):
                        schema = names[-2] if len(names) >= 2 else None
                        found.append(("drop_table", schema, names[-1], None, statement.line))
    return found
