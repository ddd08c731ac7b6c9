"""The migration hook: open compatibility windows, verify declared changes, keep existing shims.

:class:`CompatHook` runs inside each migration's transaction (see :mod:`runner.hooks`), over the
database's view builder (:mod:`compat.dialects`). For a transactional migration (the shape path,
see :mod:`compat.shapes`):

``before(ctx)``
    parses the migration's ``-- compat:`` declarations, learns which existing tables its
    statements touch (pglast; every table for a Python migration) and snapshots their shapes
    (columns by attnum, names, types, order), then drops the views of active shims on those
    tables (SQLite: on every table) so the statements can change them freely.
``after(ctx)``
    checks each declared change really happened, rebuilds the dropped views over the new tables
    in their own version's shape (a dropped column is filled, a retyped one cast back), and for
    each table whose shape changed (in ``[compat] mode = "auto"``, or when declared) opens a
    window: a view of the table as it was, for the version just before the migration and for
    every other version with an open window. Any problem raises
    :class:`runner.errors.MigrationFailed`, which rolls the whole migration back.

A non-transactional migration keeps the older path: declared renames only, and a statement that
would drop or retype a column an active shim exposes (or drop its table) is refused before
anything runs (the builder's ``prepare_refresh`` reads the same :func:`compat.shapes.touched_tables`
as the shape path). On rollback of a migration, the shims it created are dropped (and recorded as
such) first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from compat import lifecycle
from compat.declarations import RenameDeclaration, ShapeDeclaration, declarations_for, shape_declarations
from compat.dialects import TableSnapshot, ViewBuilder, blocked, for_database
from compat.shapes import TableShape, changed, entries_of, renames_of, touched_tables
from compat.model import Shim
from compat.registry import Registry
from runner.durations import parse_duration
from runner.errors import MigrationFailed, UntrustedObject
from runner.hooks import MigrationContext
from runner.logs import get_logger

log = get_logger("migrate.compat")


@dataclass
class _Plan:
    snapshots: list[TableSnapshot]
    refresh: list[tuple[Shim, Any]]  # views dropped in before(): (shim, what the builder needs to rebuild it)
    idle: bool = False  # nothing declared and no active shim: after() has nothing to check
    # The shape path (builders with ``shapes``, transactional migrations): the touched tables'
    # shapes before the statements, the shims detached from them, the tables declared.
    shapes: dict[Any, TableShape] | None = None
    detached: list[tuple[Shim, Any]] = field(default_factory=list)
    declared: list[ShapeDeclaration] = field(default_factory=list)
    active: list[Shim] = field(default_factory=list)  # the active shims before the statements


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
        """Idle for a migration that declares nothing and (in auto mode) touches no existing table
        while no shim is active."""
        return self._declarations(ctx) is not None

    def _declarations(self, ctx: MigrationContext, registry: Registry | None = None) -> list[RenameDeclaration] | None:
        """The migration's rename declarations, or None when there is nothing to do."""
        declarations = declarations_for(ctx.migration, ctx.settings) if ctx.direction == "apply" else []
        if self._any_active is None:
            self._any_active = bool((registry or Registry(ctx.db)).shims("active"))
        if ctx.direction == "apply" and not declarations and not self._any_active \
                and not ctx.migration.directives_named("compat") and not self._auto_touches(ctx):
            return None
        return declarations

    def _auto(self, ctx: MigrationContext) -> bool:
        """Whether windows open for undeclared shape changes too (``[compat] mode = "auto"``)."""
        return (ctx.settings.compat.mode == "auto" and self.create_shims and ctx.settings.compat.enabled
                and ctx.migration.transactional)

    def _auto_touches(self, ctx: MigrationContext) -> bool:
        if not self._auto(ctx):
            return False
        if ctx.migration.format == "python":
            return True
        touches = touched_tables(ctx.migration.statements(ctx.direction))
        return touches is None or bool(touches)

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
        if builder.shapes and ctx.migration.transactional:
            self._plans[ctx.migration.id] = self._shape_plan(ctx, builder, active, snapshots)
            return
        touches = None if ctx.migration.format == "python" else touched_tables(ctx.migration.statements(ctx.direction))
        refresh = builder.prepare_refresh(ctx, active, touches)
        if refresh:
            log.info("rebuilding shims around migration", migration=ctx.migration.id,
                     shims=[s.name for s, _ in refresh])
        self._plans[ctx.migration.id] = _Plan(snapshots, refresh)

    def _shape_plan(self, ctx: MigrationContext, builder: Any, active: list[Shim], snapshots: list[TableSnapshot]
                    ) -> _Plan:
        """Snapshot the shapes of the tables the migration touches; detach their shims' views."""
        declared = shape_declarations(ctx.migration) if ctx.direction == "apply" else []
        names: list[tuple[str | None, str]] | None = [(s.schema, s.name) for s in snapshots]
        names += [(d.schema, d.table) for d in declared]  # type: ignore[operator]
        touches = None if ctx.migration.format == "python" else touched_tables(ctx.migration.statements(ctx.direction))
        bases = builder.shim_bases(ctx.db, active) if active else {}
        if self._auto(ctx) or bases:
            if touches is None:
                names = None
            else:
                names += [(t.schema, t.table) for t in touches]  # type: ignore[operator]
        keys = builder.shape_keys(ctx.db, names)
        if builder.rebuild_all:  # the database cannot keep any view across the migration's statements
            keys += [key for key in dict.fromkeys(bases.values()) if key not in keys]
        shapes = builder.shapes_of(ctx.db, keys)
        for decl in declared:
            _check_declared(decl, builder, ctx, shapes)
        detached = [(shim, bases[shim.id]) for shim in active if bases.get(shim.id) in shapes]
        for decl in declared:
            if decl.kind == "drop" and decl.refuse:
                _refuse_drop(ctx, builder, decl, shapes, detached)
        builder.detach(ctx.db, [shim for shim, _ in detached])
        if detached:
            log.info("rebuilding shims around migration", migration=ctx.migration.id,
                     shims=[s.name for s, _ in detached])
        return _Plan(snapshots, [], shapes=shapes, detached=detached, declared=declared, active=active)

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
        if plan.shapes is not None:
            self._after_shapes(ctx, registry, builder, plan)
            builder.rebuild(ctx, registry, [], plan.snapshots)
            return
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


    def _after_shapes(self, ctx: MigrationContext, registry: Registry, builder: Any, plan: _Plan) -> None:
        """Rebuild the detached shims over the new shapes; open windows for the changed tables."""
        assert plan.shapes is not None
        after = builder.shapes_after(ctx, plan.shapes)
        creating = self.create_shims and ctx.settings.compat.enabled and ctx.direction == "apply"
        label = version_label(ctx)
        now = registry.now()
        versions = _active_versions(plan.active) if creating else {}
        occupied = {(shim.compat_schema, shim.view_name) for shim in plan.active}
        checked: set[str | None] = set()  # compat schemas found to be the runner's in this migration
        for key, before in plan.shapes.items():
            mine = [shim for shim, base in plan.detached if base == key]
            now_shape = after.get(key)
            if now_shape is None:
                if mine:
                    raise MigrationFailed(lifecycle_blocked(ctx, f"drops table {before.schema}.{before.name}", mine))
                continue
            for decl in plan.declared:
                if _names(decl, before):
                    _verify_declared(decl, before, now_shape)
            exprs = _exprs(plan.declared, before)
            for shim in mine:
                entries = [dict(e) for e in shim.view_columns]
                for entry in entries:  # registries from before shapes kept no types: the type seen until now
                    entry.setdefault("attnum", entry.get("column"))
                    if not entry.get("type"):
                        col = before.by_attnum().get(entry["attnum"])
                        entry["type"] = col.type if col else "text"
                    if entry.get("expr") is None and entry["attnum"] in exprs:
                        entry["expr"] = exprs[entry["attnum"]]
                columns = builder.build_shape(ctx.db, schema=shim.compat_schema, view=shim.view_name,
                                              table=now_shape, entries=entries,
                                              comment=builder.comment(shim.name, shim.as_of, shim.migration_id))
                registry.set_shape(shim, columns, renames_of(columns) or shim.renames, now_shape.name)
            if not creating or not changed(before, now_shape):
                continue
            snaps = [s for s in plan.snapshots if s.key == key]
            decls = [d for d in plan.declared if _names(d, before)]
            if not (self._auto(ctx) or snaps or decls):
                continue
            entries = _entries(before, snaps, exprs)
            registry.ensure()
            self._any_active = True
            expires = max([d.expires_at(now, _default_window(ctx)) for s in snaps for d in s.declarations]
                          + [d.expires_at(now, _default_window(ctx)) for d in decls]
                          or [now + _default_window(ctx)])
            targets = {label: expires, **{v: until for v, until in versions.items() if v != label}}
            # A version is served already by this table's own shims, or, when another table took
            # this name from it (renamed away, a new table created under the name), by that
            # table's view: the consumer at that version never saw the table changed now.
            taken = {shim.as_of for shim in mine}
            for as_of, until in targets.items():
                if as_of not in taken and builder.location(ctx.settings, before.name, as_of) not in occupied:
                    self._open(ctx, registry, builder, now_shape, before, as_of, (now, until), entries, snaps,
                               checked)

    def _open(self, ctx: MigrationContext, registry: Registry, builder: Any, table: TableShape, before: TableShape,
              as_of: str, window: tuple[datetime, datetime], entries: list[dict[str, Any]],
              snaps: list[TableSnapshot], checked: set[str | None]) -> None:
        """Create the view presenting ``before`` to version ``as_of`` and its registry row."""
        schema, view = builder.location(ctx.settings, before.name, as_of)
        name = builder.shim_name(schema, view)
        source = snaps[0].declarations[0].source if snaps else ctx.migration.path
        if schema not in checked:  # nobody else can add objects to it inside this transaction after the check
            try:
                builder.require_ours(ctx.db, schema, registry, f"create shim {name}")
            except UntrustedObject as refused:
                raise MigrationFailed(f"{source}: {refused}; nothing was applied") from None
            checked.add(schema)
        if builder.relation_exists(ctx.db, schema, view):
            raise MigrationFailed(f"{source}: cannot create shim {name}: {name} already exists "
                                  "(a shim for another table of that name, or a leftover object)")
        columns = builder.build_shape(ctx.db, schema=schema, view=view, table=table, entries=entries,
                                      comment=builder.comment(name, as_of, ctx.migration.id))
        expose = "both" if any(d.expose == "both" for s in snaps for d in s.declarations) else "old"
        shim = registry.add(name=name, migration_id=ctx.migration.id, table_schema=table.schema,
                            table_name=table.name, renames=renames_of(columns), expose=expose, as_of=as_of,
                            compat_schema=schema, view_name=view, columns=columns, created_at=window[0],
                            expires_at=window[1])
        log.info("shim created", shim=shim.name, table=shim.table, as_of=as_of, shape=shim.shape,
                 expires_at=shim.expires_at.isoformat())


def lifecycle_blocked(ctx: MigrationContext, what: str, shims: list[Shim]) -> str:
    return blocked(ctx.migration.path, what, shims) + " (a dropped table cannot be shimmed)"


def _active_versions(active: list[Shim]) -> dict[str, datetime]:
    """Each version with an open window (a compat schema, or views on SQLite): its latest expiry.
    A view added to an open window later shares that expiry (the window is the pinned consumer's)."""
    out: dict[str, datetime] = {}
    for shim in active:
        out[shim.as_of] = max(out.get(shim.as_of, shim.expires_at), shim.expires_at)
    return out


def _names(decl: ShapeDeclaration, shape: TableShape) -> bool:
    return decl.table == shape.name and decl.schema in (None, shape.schema)


def _exprs(declared: list[ShapeDeclaration], before: TableShape) -> dict[int, str]:
    """attnum -> declared expression for the dropped/retyped columns of ``before``."""
    names = {c.name: c.attnum for c in before.columns}
    return {names[d.column]: d.expr for d in declared
            if _names(d, before) and d.expr is not None and d.column in names}


def _entries(before: TableShape, snaps: list[TableSnapshot], exprs: dict[int, str]) -> list[dict[str, Any]]:
    """The view columns presenting ``before`` (plus the new names of renames declared expose=both)."""
    both = {d.old: d.new for s in snaps for d in s.declarations if d.expose == "both"}
    out: list[dict[str, Any]] = []
    for entry in entries_of(before):
        if entry["attnum"] in exprs:
            entry["expr"] = exprs[entry["attnum"]]
        out.append(entry)
        if entry["name"] in both:
            out.append({**entry, "name": both[entry["name"]]})
    return out


def _check_declared(decl: ShapeDeclaration, builder: Any, ctx: MigrationContext, shapes: dict[Any, TableShape]
                    ) -> None:
    shape = next((s for s in shapes.values() if _names(decl, s)), None)
    if shape is None:
        raise MigrationFailed(f"{decl.source}: compat {decl.kind}: table {decl.qualified_table} does not exist "
                              f"before {ctx.migration.id} runs")
    names = {c.name for c in shape.columns}
    if decl.kind in ("drop", "retype") and decl.column not in names:
        raise MigrationFailed(f"{decl.source}: compat {decl.kind}: column {decl.column} does not exist in "
                              f"{shape.name} before the migration runs")
    if decl.kind == "add" and decl.column in names:
        raise MigrationFailed(f"{decl.source}: compat add: column {decl.column} already exists in {shape.name}")


def _verify_declared(decl: ShapeDeclaration, before: TableShape, after: TableShape) -> None:
    """Raise MigrationFailed when a declared change did not happen."""
    was = {c.name: c for c in before.columns}
    now = after.by_attnum()
    problem = None
    if decl.kind == "add" and not any(c.name == decl.column and c.attnum not in before.by_attnum()
                                      for c in after.columns):
        problem = f"no new column {decl.column} in {after.name}"
    elif decl.kind == "drop" and was[decl.column or ""].attnum in now:
        problem = f"column {decl.column} still exists (as {now[was[decl.column or ''].attnum].name})"
    elif decl.kind == "retype":
        column = now.get(was[decl.column or ""].attnum)
        if column is None:
            problem = f"column {decl.column} was dropped"
        elif column.type == was[decl.column or ""].type:
            problem = f"column {decl.column} is still {column.type}"
    elif decl.kind == "rename-table" and after.name != decl.new:
        problem = f"the table is called {after.name}, not {decl.new}"
    if problem:
        raise MigrationFailed(f"{decl.source}: declared change `{decl.text}` did not happen: {problem}")


def _refuse_drop(ctx: MigrationContext, builder: Any, decl: ShapeDeclaration, shapes: dict[Any, TableShape],
                 detached: list[tuple[Shim, Any]]) -> None:
    shape = next(s for s in shapes.values() if _names(decl, s))
    attnum = next(c.attnum for c in shape.columns if c.name == decl.column)
    showing = [shim for shim, base in detached if base == shape.key
               and any(c["attnum"] == attnum for c in shim.view_columns)]
    if showing:
        raise MigrationFailed(blocked(decl.source, f"drops column {shape.name}.{decl.column} (declared refuse)", showing))


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
