"""The migration hook: verify declared renames, create shims, keep existing shims intact.

:class:`CompatHook` runs inside each migration's transaction (see :mod:`runner.hooks`), over the
database's view builder (:mod:`compat.dialects`):

``before(ctx)``
    parses the migration's rename declarations and snapshots each declared table's columns, so
    the shim can present the previous version exactly, even when the same migration adds
    columns. It then looks for statements that would break an active shim: dropping a column
    (or table) a shim exposes stops the migration before anything runs, naming the shim and the
    command that removes it; retyping an exposed column drops the affected shim views so they
    can be rebuilt afterwards. Python migrations cannot be inspected, so every active shim is
    rebuilt around them (SQLite rebuilds every shim view around every migration).
``after(ctx)``
    checks each declared rename really happened, rebuilds the views dropped in ``before``,
    checks no other shim view vanished (``DROP ... CASCADE``), then creates the new shims and
    their registry rows. Any problem raises :class:`runner.errors.MigrationFailed`, which rolls
    the whole migration back.

On rollback of a migration, its shims are dropped (and recorded as such) first.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from compat import lifecycle
from compat.declarations import RenameDeclaration, declarations_for
from compat.dialects import TableSnapshot, ViewBuilder, for_database
from compat.model import Shim
from compat.registry import Registry
from runner.durations import parse_duration
from runner.errors import MigrationFailed
from runner.hooks import MigrationContext
from runner.logs import get_logger

log = get_logger("migrate.compat")


@dataclass
class _Plan:
    snapshots: list[TableSnapshot]
    refresh: list[tuple[Shim, Any]]  # views dropped in before(): (shim, what the builder needs to rebuild it)
    idle: bool = False  # nothing declared and no active shim: after() has nothing to check


def version_label(ctx: MigrationContext) -> str:
    """The version a shim for ``ctx.migration`` presents: the previous migration's label ("0" if none)."""
    previous = ctx.previous
    if previous is None:
        return "0"
    return previous.version_label or previous.id


class CompatHook:
    """Implements :class:`runner.hooks.MigrationHook` for compatibility shims.

    ``create_shims=False`` (``migrate up --no-compat``) still verifies declared renames and keeps
    existing shims intact, but creates no new shims. Shims are also not created when
    ``Settings.compat.enabled`` is false.
    """

    def __init__(self, *, create_shims: bool = True) -> None:
        self.create_shims = create_shims
        self._plans: dict[str, _Plan] = {}
        # Whether the registry has active shims, read once per run: only migrations (applied
        # under the runner's lock, through this hook) create shims, so it can only turn True here.
        self._any_active: bool | None = None

    def wants(self, ctx: MigrationContext) -> bool:
        """Idle for a migration that declares no rename while no shim is active."""
        return self._declarations(ctx, Registry(ctx.db)) is not None

    def _declarations(self, ctx: MigrationContext, registry: Registry) -> list[RenameDeclaration] | None:
        """The migration's rename declarations, or None when there is nothing to do."""
        declarations = declarations_for(ctx.migration, ctx.settings) if ctx.direction == "apply" else []
        if self._any_active is None:
            self._any_active = bool(registry.shims("active"))
        if ctx.direction == "apply" and not declarations and not self._any_active:
            return None
        return declarations

    # -- before -----------------------------------------------------------------
    def before(self, ctx: MigrationContext) -> None:
        registry = Registry(ctx.db)
        declarations = self._declarations(ctx, registry)
        if declarations is None:
            self._plans[ctx.migration.id] = _Plan([], [], idle=True)
            return
        builder = for_database(ctx.db)
        if ctx.direction == "rollback":
            self._retire_for_rollback(ctx, registry)
        snapshots = [builder.snapshot(ctx, group) for group in _group_by_table(declarations)]
        # Lock the registry's rows: `shims drop`, `extend` and another hook wait for this migration.
        active = registry.shims("active", for_update=True)
        statements = ctx.migration.statements(ctx.direction)
        actions = analyse(statements) if ctx.migration.format != "python" else None
        refresh = builder.prepare_refresh(ctx, active, actions)
        if refresh:
            log.info("rebuilding shims around migration", migration=ctx.migration.id,
                     shims=[s.name for s, _ in refresh])
        self._plans[ctx.migration.id] = _Plan(snapshots, refresh)

    def _retire_for_rollback(self, ctx: MigrationContext, registry: Registry) -> None:
        mine = [s for s in registry.shims("active", for_update=True) if s.migration_id == ctx.migration.id]
        if mine:
            lifecycle.retire(ctx.db, registry, mine, f"migration {ctx.migration.id} rolled back")
            log.info("shims dropped with rollback", migration=ctx.migration.id, shims=[s.name for s in mine])

    # -- after ------------------------------------------------------------------
    def after(self, ctx: MigrationContext) -> None:
        plan = self._plans.pop(ctx.migration.id, None)
        if plan is None:
            raise MigrationFailed(f"{ctx.migration.id}: compat hook: after() called without before()")
        if plan.idle:
            return
        registry = Registry(ctx.db)
        builder = for_database(ctx.db)
        for snap in plan.snapshots:
            builder.verify(ctx, snap)
        builder.rebuild(ctx, registry, plan.refresh, plan.snapshots)
        if plan.snapshots and self.create_shims and ctx.settings.compat.enabled:
            self._create(ctx, registry, builder, plan)

    def _create(self, ctx: MigrationContext, registry: Registry, builder: ViewBuilder, plan: _Plan) -> None:
        registry.ensure()
        self._any_active = True
        label = version_label(ctx)
        now = registry.now()
        default_window = _default_window(ctx)
        for snap in plan.snapshots:
            renamed = {d.old: d for d in snap.declarations}
            view_columns: list[tuple[str, str]] = []
            for name, _ in snap.columns:
                view_columns.append((name, name))
                decl = renamed.get(name)
                if decl is not None and decl.expose == "both":
                    view_columns.append((decl.new, name))
            schema, view, columns = builder.create(ctx, registry, snap, label, view_columns)
            shim = registry.add(
                name=builder.shim_name(schema, view), migration_id=ctx.migration.id, table_schema=snap.schema,
                table_name=snap.name, renames=[{"old": d.old, "new": d.new} for d in snap.declarations],
                expose="both" if any(d.expose == "both" for d in snap.declarations) else "old",
                as_of=label, compat_schema=schema, view_name=view, columns=columns,
                created_at=now, expires_at=max(d.expires_at(now, default_window) for d in snap.declarations))
            log.info("shim created", shim=shim.name, table=shim.table, old=shim.old, new=shim.new,
                     expires_at=shim.expires_at.isoformat())


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


def analyse(statements: list[Any]) -> list[tuple[str, str | None, str, str | None, int]] | None:
    """What the statements do to existing columns: (kind, schema, table, column, line).

    kind is drop_column, alter_type or drop_table. Returns None when a statement cannot be parsed
    (the caller then assumes the worst).
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
