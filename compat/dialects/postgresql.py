"""PostgreSQL shims: one compat schema per version, one view per table; role routing.

A shim view lists, in order, exactly the columns the table had at the version it presents,
under that version's names, each one a plain reference to the base column (so the view stays
auto-updatable)::

    CREATE VIEW compat_017.remediation_workflow_catalog WITH (security_invoker = true) AS
    SELECT workflow_id AS workflow_id, ..., container_image AS execution_bundle, created_at AS created_at
    FROM public.remediation_workflow_catalog

Columns are tracked by attnum (the registry's column map is ``{"name", "attnum"}``), which
survives renames and type changes of the base column; tables by oid (read from the view's
rewrite rule), which survives table renames. Column defaults are copied onto the view; the base
table's privileges (table and column level) are granted on the view, and USAGE on the compat
schema, to the same roles. On servers older than 15 there is no ``security_invoker``: the view
then reads the table with its owner's rights (the runner's role), so row-level security
policies are not applied to the caller (privileges still are, mirrored on the view).

Trust: a compat schema is used only when the runner's role (or a role it trusts: see
:meth:`runner.dialects.postgresql.PostgreSQL.trusted_roles`) owns it and it holds nothing but
shim views of the registry: a schema another role made first (to serve its own objects to the
consumers routed there) is refused. All identifiers go through :class:`psycopg.sql.Identifier`;
generated names are kept within PostgreSQL's 63-byte limit by :func:`shorten`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from compat.declarations import RenameDeclaration, quote_ident
from compat.dialects import Session, TableSnapshot, blocked, drop_command
from compat.shapes import ColumnShape, TableShape, compose, stored
from compat.model import Route, Shim
from runner.errors import MigrationFailed, UntrustedObject

if TYPE_CHECKING:
    from compat.registry import Registry
    from compat.shapes import Touch
    from runner.config import Settings
    from runner.db import Database
    from runner.hooks import MigrationContext

MAX_IDENTIFIER_BYTES = 63
TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")
COLUMN_PRIVILEGES = ("SELECT", "INSERT", "UPDATE")
# Catalogs holding objects that live in a schema (column that names the schema, what to call them).
_SCHEMA_OBJECTS = (
    ("pg_catalog.pg_class", "relnamespace", "relname", "relation"),
    ("pg_catalog.pg_proc", "pronamespace", "proname", "function"),
    ("pg_catalog.pg_type", "typnamespace", "typname", "type"),
    ("pg_catalog.pg_operator", "oprnamespace", "oprname", "operator"),
    ("pg_catalog.pg_collation", "collnamespace", "collname", "collation"),
    ("pg_catalog.pg_conversion", "connamespace", "conname", "conversion"),
    ("pg_catalog.pg_opclass", "opcnamespace", "opcname", "operator class"),
    ("pg_catalog.pg_opfamily", "opfnamespace", "opfname", "operator family"),
    ("pg_catalog.pg_ts_config", "cfgnamespace", "cfgname", "text search configuration"),
    ("pg_catalog.pg_ts_dict", "dictnamespace", "dictname", "text search dictionary"),
    ("pg_catalog.pg_ts_parser", "prsnamespace", "prsname", "text search parser"),
    ("pg_catalog.pg_ts_template", "tmplnamespace", "tmplname", "text search template"),
    ("pg_catalog.pg_statistic_ext", "stxnamespace", "stxname", "statistics object"),
    ("pg_catalog.pg_extension", "extnamespace", "extname", "extension"),
)


@dataclass(frozen=True)
class TableRef:
    """A table (or partitioned table) as found in the catalog."""

    oid: int
    schema: str
    name: str
    kind: str  # "r" table, "p" partitioned table
    owner: str


@dataclass(frozen=True)
class Column:
    """One live column of a table, as ``SELECT *`` shows it."""

    attnum: int
    name: str
    type: str
    default: str | None
    generated: bool


class ColumnGone(Exception):
    """A shim column's base column (by attnum) no longer exists."""

    def __init__(self, view_column: str, attnum: int) -> None:
        self.view_column = view_column
        self.attnum = attnum
        super().__init__(f"base column of {view_column!r} (attnum {attnum}) no longer exists")


def shorten(name: str) -> str:
    """``name`` if it fits in 63 bytes, else a prefix plus a stable hash suffix that does."""
    encoded = name.encode("utf-8")
    if len(encoded) <= MAX_IDENTIFIER_BYTES:
        return name
    digest = hashlib.sha1(encoded).hexdigest()[:8]
    prefix = encoded[: MAX_IDENTIFIER_BYTES - 9].decode("utf-8", errors="ignore")
    return f"{prefix}_{digest}"


def compat_schema_name(template: str, version: str) -> str:
    """The compat schema for ``version`` (``compat_{version}`` -> ``compat_017``), within 63 bytes."""
    return shorten(template.format(version=version))


def _sql() -> Any:
    from psycopg import sql

    return sql


class PostgresShims:
    name = "postgresql"
    search_path = True  # consumers reach shims through their search_path (compat schemas, routable by role)
    shapes = True  # every shape change is presented per pinned version (compat.shapes)

    # -- naming ------------------------------------------------------------------------
    def location(self, settings: Settings, table: str, version: str) -> tuple[str | None, str]:
        return compat_schema_name(settings.compat.schema_template, version), table

    def shim_name(self, schema: str | None, view: str) -> str:
        """Registry name of a shim: ``compat_017.table``."""
        return f"{quote_ident(schema or '')}.{quote_ident(view)}"

    # -- catalog -----------------------------------------------------------------------
    _TABLE = ("SELECT c.oid, n.nspname, c.relname, c.relkind, pg_catalog.pg_get_userbyid(c.relowner) "
              "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace ")

    def find_table(self, db: Database, schema: str | None, table: str) -> TableRef | None:
        """The ordinary or partitioned table ``schema.table`` (``table`` through the migrations'
        search_path when no schema is given: the tables migrations name)."""
        if schema is not None:
            row = db.execute(self._TABLE + "WHERE c.relkind IN ('r', 'p') AND n.nspname = %s AND c.relname = %s",
                             (schema, table)).fetchone()
            return TableRef(*row) if row else None
        for name in self.migration_schemas(db):
            row = db.execute(self._TABLE + "WHERE n.nspname = %s AND c.relname = %s", (name, table)).fetchone()
            if row:
                return TableRef(*row) if row[3] in ("r", "p") else None
        return None

    def migration_schemas(self, db: Database) -> list[str]:
        """The schemas of the migrations' search_path that exist, in order (``$user`` resolved)."""
        from runner.dialects.postgresql import split_search_path

        names = split_search_path(db.migration_search_path or "")
        user = db.scalar("SELECT current_user")
        names = [user if n == "$user" else n for n in names]
        existing = {r[0] for r in db.execute("SELECT nspname FROM pg_catalog.pg_namespace WHERE "
                                             "nspname = ANY(%s::pg_catalog.text[])", (names,)).fetchall()}
        return [n for n in names if n in existing]

    def table_by_oid(self, db: Database, oid: int) -> TableRef | None:
        row = db.execute(self._TABLE + "WHERE c.oid = %s::pg_catalog.oid", (oid,)).fetchone()
        return TableRef(*row) if row else None

    def table_columns(self, db: Database, oid: int) -> list[Column]:
        """Live columns of table ``oid`` in ``SELECT *`` order (attnum)."""
        rows = db.execute(
            "SELECT a.attnum, a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), "
            "pg_catalog.pg_get_expr(d.adbin, d.adrelid), a.attgenerated <> '' "
            "FROM pg_catalog.pg_attribute a LEFT JOIN pg_catalog.pg_attrdef d "
            "ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
            "WHERE a.attrelid = %s::pg_catalog.oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            (oid,)).fetchall()
        return [Column(*r) for r in rows]

    def relation_exists(self, db: Database, schema: str, name: str) -> bool:
        return db.execute("SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
                          "WHERE n.nspname = %s AND c.relname = %s", (schema, name)).fetchone() is not None

    def view_bases(self, db: Database, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """For each existing (schema, view) of ``pairs``, the oid of the table it selects from
        (from the view's rewrite rule dependencies, so it survives table renames). One query."""
        if not pairs:
            return {}
        rows = db.execute(
            "SELECT x.s, x.v, (SELECT d.refobjid FROM pg_catalog.pg_rewrite r JOIN pg_catalog.pg_depend d "
            "  ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass::pg_catalog.oid AND d.objid = r.oid "
            "  AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass::pg_catalog.oid "
            "  WHERE r.ev_class = c.oid AND d.refobjid <> c.oid LIMIT 1) "
            "FROM ROWS FROM (pg_catalog.unnest(%s::pg_catalog.text[]), pg_catalog.unnest(%s::pg_catalog.text[])) AS x(s, v) "
            "JOIN pg_catalog.pg_namespace n ON n.nspname = x.s "
            "JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = x.v AND c.relkind = 'v'",
            ([p[0] for p in pairs], [p[1] for p in pairs])).fetchall()
        return {(r[0], r[1]): r[2] for r in rows if r[2] is not None}

    def missing_views(self, db: Database, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """The (schema, view) pairs of ``pairs`` that do not exist as views."""
        if not pairs:
            return []
        rows = db.execute(
            "SELECT x.s, x.v FROM ROWS FROM (pg_catalog.unnest(%s::pg_catalog.text[]), pg_catalog.unnest(%s::pg_catalog.text[])) AS x(s, v) "
            "WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = x.s AND c.relname = x.v AND c.relkind = 'v')",
            ([p[0] for p in pairs], [p[1] for p in pairs])).fetchall()
        return [(r[0], r[1]) for r in rows]

    # -- trust ---------------------------------------------------------------------------
    def schema_owner(self, db: Database, schema: str) -> tuple[int, str] | None:
        row = db.execute("SELECT nspowner, pg_catalog.pg_get_userbyid(nspowner) FROM pg_catalog.pg_namespace "
                         "WHERE nspname = %s", (schema,)).fetchone()
        return (row[0], row[1]) if row else None

    def strangers(self, db: Database, schema: str, registry: Registry) -> list[str]:
        """What makes ``schema`` not the runner's: an owner it does not trust, or objects in it that
        are not shim views of the registry. [] when it is the runner's (or does not exist)."""
        owner = self.schema_owner(db, schema)
        if owner is None:
            return []
        trusted = db.dialect.trusted_roles(db)  # type: ignore[attr-defined]
        found = []
        if owner[0] not in trusted:
            found.append(f"schema {schema} is owned by role {owner[1]}")
        ours = registry.view_names(schema)
        union = " UNION ALL ".join(
            f"SELECT '{kind}', {name}::pg_catalog.text FROM {catalog} WHERE {column} = "
            "(SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = %s)"
            for catalog, column, name, kind in _SCHEMA_OBJECTS)
        rows = db.execute(union, (schema,) * len(_SCHEMA_OBJECTS)).fetchall()
        views = {r[0] for r in db.execute(
            "SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind = 'v' AND c.relowner = ANY(%s::pg_catalog.oid[])",
            (schema, list(trusted))).fetchall()}
        for kind, name in rows:
            if kind == "relation" and name in ours and name in views:
                continue
            if kind == "type" and (name in ours or name.lstrip("_") in ours) and name.lstrip("_") in views:
                continue  # a view's row type (and its array type)
            found.append(f"{kind} {schema}.{name} is not a shim view of the runner")
        return found

    def require_ours(self, db: Database, schema: str, registry: Registry, doing: str) -> None:
        """Raise UntrustedObject when ``schema`` exists and is not the runner's."""
        found = self.strangers(db, schema, registry)
        if found:
            raise UntrustedObject(
                f"refusing to {doing}: compat schema {schema} is not the runner's ({'; '.join(found[:3])}"
                f"{f'; and {len(found) - 3} more' if len(found) > 3 else ''}): another role made it or put objects "
                "in it that consumers routed there would use; check who did, then drop the schema or those objects")

    def foreign_objects(self, db: Database, settings: Settings, registry: Registry) -> list[tuple[str, str]]:
        """(schema, what) for every compat schema (registered, routed to, or named like the template)
        that is not the runner's."""
        prefix = settings.compat.schema_template.split("{", 1)[0]
        schemas = {s.compat_schema for s in registry.shims() if s.compat_schema}
        if prefix:
            schemas |= {r[0] for r in db.execute(
                "SELECT nspname FROM pg_catalog.pg_namespace WHERE pg_catalog.starts_with(nspname, %s)",
                (prefix,)).fetchall()}
        return [(schema, what) for schema in sorted(schemas) for what in self.strangers(db, schema, registry)]

    def reserve(self, db: Database, schema: str) -> None:
        """Create ``schema`` (empty, the runner's) if it does not exist, so no other role can take the name."""
        if self.schema_owner(db, schema) is None:
            db.execute(_sql().SQL("CREATE SCHEMA {}").format(_sql().Identifier(schema)))

    def grant_route(self, db: Database, role: str, schema: str, shims: list[Shim]) -> None:
        """What a role routed to ``schema`` needs: USAGE on it, and on each shim view the
        privileges it holds on the view's table now (mirrored again for every role)."""
        sql = _sql()
        db.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), sql.Identifier(role)))
        bases = self.view_bases(db, [(s.compat_schema or "", s.view_name) for s in shims])
        for shim in shims:
            table = self.table_by_oid(db, bases[(schema, shim.view_name)]) if (schema, shim.view_name) in bases else None
            if table is not None:
                self.grant_like_table(db, schema=schema, view=shim.view_name, table=table,
                                      columns=[(c["name"], c["attnum"]) for c in shim.columns
                                               if c.get("show", "column") in ("column", "rename")
                                               and not c.get("hidden")])

    # -- views ---------------------------------------------------------------------------
    def create_view(self, db: Database, *, schema: str, view: str, table: TableRef, columns: list[tuple[str, int]],
                    comment: str = "") -> None:
        """Create ``schema.view`` over ``table`` with ``columns`` = [(view column, base attnum)].

        Creates the schema if needed, copies defaults, mirrors privileges.
        Raises :class:`ColumnGone` when an attnum no longer names a live column.
        """
        sql = _sql()
        live = {c.attnum: c for c in self.table_columns(db, table.oid)}
        for name, attnum in columns:
            if attnum not in live:
                raise ColumnGone(name, attnum)
        items = [sql.SQL("{} AS {}").format(sql.Identifier(live[attnum].name), sql.Identifier(name))
                 for name, attnum in columns]
        self._make_view(db, schema=schema, view=view, table=table, items=items, plain=columns, live=live,
                        comment=comment)

    def _make_view(self, db: Database, *, schema: str, view: str, table: TableRef, items: list[Any],
                   plain: list[tuple[str, int]], live: Any, comment: str) -> None:
        """CREATE VIEW ``schema.view`` AS SELECT ``items`` FROM ``table`` (security_invoker), in a
        schema created if needed; the table's defaults on the ``plain`` columns (view name, attnum),
        the comment, and the table's privileges."""
        sql = _sql()
        target = sql.Identifier(schema, view)
        options = sql.SQL(" WITH (security_invoker = true)") if db.dialect.server_version(db) >= 150000 else sql.SQL("")
        if self.schema_owner(db, schema) is None:
            db.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        db.execute(sql.SQL("CREATE VIEW {}{} AS SELECT {} FROM {}").format(
            target, options, sql.SQL(", ").join(items), sql.Identifier(table.schema, table.name)))
        for name, attnum in plain:
            column = live[attnum]
            if column.default is not None and not column.generated:
                db.execute(sql.SQL("ALTER VIEW {} ALTER COLUMN {} SET DEFAULT {}").format(
                    target, sql.Identifier(name), sql.SQL(column.default)))
        if comment:
            db.execute(sql.SQL("COMMENT ON VIEW {} IS {}").format(target, sql.Literal(comment)))
        self.grant_like_table(db, schema=schema, view=view, table=table, columns=plain)

    @staticmethod
    def _grantee(role: str | None) -> Any:
        sql = _sql()
        return sql.SQL("PUBLIC") if role is None else sql.Identifier(role)

    def grant_like_table(self, db: Database, *, schema: str, view: str, table: TableRef,
                         columns: list[tuple[str, int]]) -> None:
        """Grant on the view what each role holds on the table (table and column level), plus USAGE on the schema."""
        sql = _sql()
        me = db.scalar("SELECT current_user")
        target = sql.Identifier(schema, view)
        grantees: set[str | None] = set()
        for role, privilege, grantable in self.table_grants(db, table.oid):
            if privilege not in TABLE_PRIVILEGES or role == me:
                continue
            grantees.add(role)
            db.execute(sql.SQL("GRANT {} ON {} TO {}{}").format(
                sql.SQL(privilege), target, self._grantee(role), sql.SQL(" WITH GRANT OPTION" if grantable else "")))
        by_attnum: dict[int, list[str]] = {}
        for name, attnum in columns:
            by_attnum.setdefault(attnum, []).append(name)
        for attnum, role, privilege, grantable in self.column_grants(db, table.oid):
            if privilege not in COLUMN_PRIVILEGES or role == me or attnum not in by_attnum:
                continue
            grantees.add(role)
            db.execute(sql.SQL("GRANT {} ({}) ON {} TO {}{}").format(
                sql.SQL(privilege), sql.SQL(", ").join(sql.Identifier(n) for n in by_attnum[attnum]), target,
                self._grantee(role), sql.SQL(" WITH GRANT OPTION" if grantable else "")))
        for role in sorted(grantees, key=lambda r: (r is not None, r or "")):
            db.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), self._grantee(role)))

    def table_grants(self, db: Database, oid: int) -> list[tuple[str | None, str, bool]]:
        """(role or None for PUBLIC, privilege, grantable) on table ``oid``."""
        return db.execute(
            "SELECT CASE WHEN a.grantee = 0::pg_catalog.oid THEN NULL ELSE pg_catalog.pg_get_userbyid(a.grantee) END, a.privilege_type, "
            "a.is_grantable FROM pg_catalog.pg_class c, "
            "pg_catalog.aclexplode(coalesce(c.relacl, pg_catalog.acldefault('r', c.relowner))) a "
            "WHERE c.oid = %s::pg_catalog.oid ORDER BY 1, 2", (oid,)).fetchall()

    def column_grants(self, db: Database, oid: int) -> list[tuple[int, str | None, str, bool]]:
        return db.execute(
            "SELECT att.attnum, CASE WHEN a.grantee = 0::pg_catalog.oid THEN NULL ELSE pg_catalog.pg_get_userbyid(a.grantee) END, "
            "a.privilege_type, a.is_grantable FROM pg_catalog.pg_attribute att, pg_catalog.aclexplode(att.attacl) a "
            "WHERE att.attrelid = %s::pg_catalog.oid AND att.attnum > 0 AND NOT att.attisdropped "
            "AND att.attacl IS NOT NULL ORDER BY 1, 2, 3", (oid,)).fetchall()

    def drop_view(self, db: Database, schema: str, view: str, keep_schema: bool = False) -> bool:
        """Drop ``schema.view`` (if present) and the schema when nothing is left in it; True if the schema went."""
        sql = _sql()
        db.execute(sql.SQL("DROP VIEW IF EXISTS {}").format(sql.Identifier(schema, view)))
        if keep_schema:
            return False
        row = db.execute(
            "SELECT n.oid, EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.refclassid = "
            "'pg_catalog.pg_namespace'::pg_catalog.regclass::pg_catalog.oid AND d.refobjid = n.oid) "
            "FROM pg_catalog.pg_namespace n WHERE n.nspname = %s", (schema,)).fetchone()
        if row is None or row[1]:
            return False
        db.execute(sql.SQL("DROP SCHEMA {}").format(sql.Identifier(schema)))
        return True

    def drop(self, db: Database, shim: Shim) -> str | None:
        """Drop a shim's view; returns its compat schema when that went too (nothing left in it)."""
        return shim.compat_schema if self.drop_view(db, shim.compat_schema or "", shim.view_name) else None

    # -- the hook ---------------------------------------------------------------------------
    def snapshot(self, ctx: MigrationContext, group: list[RenameDeclaration]) -> TableSnapshot:
        first = group[0]
        table = self.find_table(ctx.db, first.schema, first.table)
        if table is None:
            raise MigrationFailed(f"{first.source}: compat rename: table {first.qualified_table} does not exist "
                                  f"before {ctx.migration.id} runs")
        columns = self.table_columns(ctx.db, table.oid)
        check_columns(group, {c.name for c in columns}, table.name)
        return TableSnapshot(group, table.name, table.schema, table.oid, [(c.name, c.attnum) for c in columns])

    def prepare_refresh(self, ctx: MigrationContext, active: list[Shim], touches: list[Touch] | None
                        ) -> list[tuple[Shim, Any]]:
        """Raise for statements that would destroy an exposed column; drop views that need rebuilding.

        ``touches``: what the statements do to existing tables (:func:`compat.shapes.touched_tables`;
        column drops, retypes and table drops matter here), None when they cannot be told (a Python
        migration, a statement that does not parse): then every shim is rebuilt around it."""
        active = [s for s in active if s.compat_schema is not None]
        if not active:
            return []
        db = ctx.db
        by_table: dict[int, list[Shim]] = {}
        base_of: dict[int, int] = {}
        bases = self.view_bases(db, [(s.compat_schema or "", s.view_name) for s in active])
        for shim in active:
            base = bases.get((shim.compat_schema or "", shim.view_name))
            if base is not None:
                by_table.setdefault(base, []).append(shim)
                base_of[shim.id] = base
        refresh: list[Shim] = []
        if touches is None:  # cannot tell what it does: rebuild every shim around it (if it is atomic)
            if ctx.migration.transactional:
                refresh = [s for shims in by_table.values() for s in shims]
        else:
            for touch in touches:
                if touch.kind != "drop_table" and not (touch.kind == "alter" and touch.detail in ("drop", "retype")):
                    continue  # adds and renames: the views follow the table's columns by attnum
                table = self.find_table(db, touch.schema, touch.table)
                if table is None or table.oid not in by_table:
                    continue
                where = f"{ctx.migration.path}:{touch.line}" if touch.line else ctx.migration.path
                shims = by_table[table.oid]
                if touch.kind == "drop_table":
                    raise MigrationFailed(blocked(where, f"drops table {table.schema}.{table.name}", shims))
                column = touch.column
                attnum = next((c.attnum for c in self.table_columns(db, table.oid) if c.name == column), None)
                exposing = [s for s in shims if any(c["attnum"] == attnum for c in s.view_columns)]  # not hidden
                if not exposing:
                    continue
                if touch.detail == "drop":
                    raise MigrationFailed(blocked(where, f"drops column {table.name}.{column}", exposing))
                if not ctx.migration.transactional:
                    raise MigrationFailed(blocked(
                        where, f"changes the type of column {table.name}.{column} outside a transaction (the shim "
                        f"cannot be rebuilt around it safely)", exposing))
                refresh.extend(s for s in exposing if s not in refresh)
        for shim in refresh:
            self.drop_view(db, shim.compat_schema or "", shim.view_name, keep_schema=True)
        return [(shim, base_of[shim.id]) for shim in refresh]

    def verify(self, ctx: MigrationContext, snap: TableSnapshot) -> None:
        """Each declared rename really happened: the old column's attnum now carries the new name."""
        live = {c.attnum: c.name for c in self.table_columns(ctx.db, snap.key)}
        if not live and self.table_by_oid(ctx.db, snap.key) is None:
            first = snap.declarations[0]
            raise MigrationFailed(f"{first.source}: declared rename {label(first)} did not happen: "
                                  f"the migration dropped table {first.qualified_table}")
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
                problem = (f"column {decl.old} was dropped and {decl.new} added (its data is lost); "
                           "use ALTER TABLE ... RENAME COLUMN")
            else:
                problem = f"column {decl.old} was dropped and {decl.new} does not exist"
            raise MigrationFailed(f"{decl.source}: declared rename {label(decl)} did not happen: {problem}")

    def rebuild(self, ctx: MigrationContext, registry: Registry, refresh: list[tuple[Shim, Any]],
                snapshots: list[TableSnapshot]) -> None:
        """Rebuild the views dropped in prepare_refresh, then check no other shim view vanished."""
        db = ctx.db
        for shim, oid in refresh:
            table = self.table_by_oid(db, oid) if oid is not None else None
            if table is None:
                raise MigrationFailed(f"{ctx.migration.path}: removes table {shim.table}, which active shim {shim.name} "
                                      f"exposes; drop the shim first: {drop_command(shim)}")
            try:
                self.create_view(db, schema=shim.compat_schema or "", view=shim.view_name, table=table,
                                 columns=[(c["name"], c["attnum"]) for c in shim.columns],
                                 comment=comment(shim.name, shim.as_of, shim.migration_id))
            except ColumnGone as gone:
                raise MigrationFailed(
                    f"{ctx.migration.path}: removes the column behind {gone.view_column} of {shim.table}, which active "
                    f"shim {shim.name} exposes to version {shim.as_of} consumers; drop the shim first: "
                    f"{drop_command(shim)}") from None
        active = [s for s in registry.shims("active") if s.compat_schema is not None]
        gone = set(self.missing_views(db, [(s.compat_schema or "", s.view_name) for s in active]))
        for shim in active:
            if (shim.compat_schema, shim.view_name) in gone:
                raise MigrationFailed(f"{ctx.migration.path}: the migration removed the view of active shim {shim.name} "
                                      f"(DROP ... CASCADE?); drop the shim first: {drop_command(shim)}")

    def create(self, ctx: MigrationContext, registry: Registry, snap: TableSnapshot, version: str,
               view_columns: list[tuple[str, str]]) -> tuple[str | None, str, list[dict[str, Any]]]:
        """Create the shim view of ``snap`` for ``version``; ``view_columns`` = [(view column, name
        of the column in the snapshot)]. Returns (compat schema, view, registry column map)."""
        first = snap.declarations[0]
        schema, view = self.location(ctx.settings, snap.name, version)
        assert schema is not None
        try:
            self.require_ours(ctx.db, schema, registry, f"create shim {self.shim_name(schema, view)}")
        except UntrustedObject as refused:
            raise MigrationFailed(f"{first.source}: {refused}; nothing was applied") from None
        if self.relation_exists(ctx.db, schema, view):
            raise MigrationFailed(
                f"{first.source}: cannot create shim {self.shim_name(schema, view)}: {schema}.{view} already exists "
                "(a shim for another table of that name, or a leftover object)")
        attnums = dict(snap.columns)
        columns = [(name, attnums[base]) for name, base in view_columns]
        table = self.table_by_oid(ctx.db, snap.key)
        assert table is not None
        try:
            self.create_view(ctx.db, schema=schema, view=view, table=table, columns=columns,
                             comment=comment(self.shim_name(schema, view), version, ctx.migration.id))
        except ColumnGone as gone:
            raise MigrationFailed(lost_column(first, gone.view_column, version)) from None
        return schema, view, [{"name": n, "attnum": a} for n, a in columns]

    # -- shapes (compat.shapes) -----------------------------------------------------------
    def tables_for(self, db: Database, names: list[tuple[str | None, str]] | None) -> list[TableRef]:
        """The existing tables named (schema or the migrations' search_path); ``None``: every table
        of the migrations' schemas (a migration whose statements cannot be read)."""
        if names is None:
            rows = db.execute(self._TABLE + "WHERE c.relkind IN ('r', 'p') AND n.nspname = ANY(%s::pg_catalog.text[]) "
                              "ORDER BY c.oid", (self.migration_schemas(db),)).fetchall()
            return [TableRef(*r) for r in rows]
        found: dict[int, TableRef] = {}
        for schema, table in dict.fromkeys(names):
            ref = self.find_table(db, schema, table)
            if ref is not None:
                found.setdefault(ref.oid, ref)
        return list(found.values())

    def shapes_of(self, db: Database, oids: list[int]) -> dict[int, TableShape]:
        """The shape of each existing table of ``oids`` (one catalog query)."""
        if not oids:
            return {}
        rows = db.execute(
            "SELECT c.oid, n.nspname, c.relname, a.attnum, a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), "
            "pg_catalog.pg_get_expr(d.adbin, d.adrelid), a.attgenerated <> '', a.attnotnull "
            "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
            "LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
            "WHERE c.oid = ANY(%s::pg_catalog.oid[]) AND c.relkind IN ('r', 'p') ORDER BY c.oid, a.attnum",
            (list(oids),)).fetchall()
        out: dict[int, TableShape] = {}
        for oid, schema, name, attnum, attname, typ, default, generated, not_null in rows:
            shape = out.setdefault(oid, TableShape(oid, schema, name))
            if attnum is not None:
                shape.columns.append(ColumnShape(attnum, attname, typ, default, generated, not_null))
        return out

    def shim_bases(self, db: Database, shims: list[Shim]) -> dict[int, int]:
        """shim id -> oid of the table its view reads (shims whose view exists)."""
        bases = self.view_bases(db, [(s.compat_schema or "", s.view_name) for s in shims if s.compat_schema])
        return {s.id: bases[(s.compat_schema or "", s.view_name)] for s in shims
                if (s.compat_schema or "", s.view_name) in bases}

    def detach(self, db: Database, shims: list[Shim]) -> None:
        """Drop the views of ``shims`` (kept schemas) so the migration can change their tables freely."""
        for shim in shims:
            self.drop_view(db, shim.compat_schema or "", shim.view_name, keep_schema=True)

    def build_shape(self, db: Database, *, schema: str | None, view: str, table: TableShape,
                    entries: list[dict[str, Any]], comment: str = "") -> list[dict[str, Any]]:
        """Create ``schema.view`` presenting ``entries`` (a version's columns) over ``table`` as it is
        now; return the column map to store (how each column is shown, which are hidden)."""
        sql = _sql()
        assert schema is not None
        live = table.by_attnum()
        ref = self.table_by_oid(db, table.key)
        assert ref is not None
        presented, hidden = compose(entries, live)
        items = []
        for p in presented:
            if p.show in ("column", "rename"):
                source = sql.Identifier(p.base or "")
            elif p.show == "cast":
                source = sql.SQL("{}::{}").format(sql.Identifier(p.base or ""), sql.SQL(p.type))
            elif p.show == "expr":
                source = sql.SQL("({})::{}").format(sql.SQL(p.expr or "NULL"), sql.SQL(p.type))
            else:
                source = sql.SQL("NULL::{}").format(sql.SQL(p.type))
            items.append(sql.SQL("{} AS {}").format(source, sql.Identifier(p.name)))
        plain = [(p.name, p.attnum) for p in presented if p.show in ("column", "rename")]
        self._make_view(db, schema=schema, view=view, table=ref, items=items, plain=plain, live=live, comment=comment)
        return stored(presented, hidden, entries)

    def shape_keys(self, db: Database, names: list[tuple[str | None, str]] | None) -> list[int]:
        """The oids of the existing tables ``names`` (None: every table of the migrations' schemas)."""
        return [ref.oid for ref in self.tables_for(db, names)]

    def shapes_after(self, ctx: MigrationContext, before: dict[int, TableShape]) -> dict[int, TableShape]:
        """The same tables after the statements (oids and attnums survive renames)."""
        return self.shapes_of(ctx.db, list(before))

    rebuild_all = False  # views on untouched tables survive a migration

    @staticmethod
    def comment(name: str, as_of: str, migration_id: str) -> str:
        return comment(name, as_of, migration_id)

    # -- who uses a shim ----------------------------------------------------------------------
    def sessions_using(self, db: Database, shims: list[Shim], routes: list[Route]) -> tuple[list[Session], list[str]]:
        """Sessions using ``shims`` (locks on the views; connections of roles routed to their
        schemas) and notes from pg_stat_statements when installed."""
        if not shims:
            return [], []
        rows = db.execute(
            "SELECT DISTINCT l.pid, a.usename, a.application_name, pg_catalog.host(a.client_addr), a.state, n.nspname, "
            "c.relname, l.mode FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_class c ON c.oid = l.relation "
            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'relation' AND l.pid <> pg_catalog.pg_backend_pid() AND (n.nspname, c.relname) IN "
            "(SELECT * FROM ROWS FROM (pg_catalog.unnest(%s::pg_catalog.text[]), pg_catalog.unnest(%s::pg_catalog.text[]))) ORDER BY l.pid",
            ([s.compat_schema for s in shims], [s.view_name for s in shims])).fetchall()
        sessions = [Session(pid, user, app, addr, state, f"holds {mode} on {quote_ident(schema)}.{quote_ident(view)}")
                    for pid, user, app, addr, state, schema, view, mode in rows]
        schemas = {s.compat_schema for s in shims if s.compat_schema}
        routed = [r for r in routes if r.compat_schema in schemas]
        if routed:
            seen = {s.pid for s in sessions}
            rows = db.execute(
                "SELECT pid, usename, application_name, pg_catalog.host(client_addr), state "
                "FROM pg_catalog.pg_stat_activity WHERE datname = pg_catalog.current_database() "
                "AND pid <> pg_catalog.pg_backend_pid() AND usename = ANY(%s::pg_catalog.name[]) ORDER BY pid",
                ([r.role for r in routed],)).fetchall()
            for pid, user, app, addr, state in rows:
                if pid not in seen:
                    route = next(r for r in routed if r.role == user)
                    sessions.append(Session(pid, user, app, addr, state, f"role {user} is routed to "
                                            f"{route.compat_schema} (search_path {route.search_path})"))
        return sessions, self._statement_notes(db, shims)

    def _statement_notes(self, db: Database, shims: list[Shim]) -> list[str]:
        """pg_stat_statements entries that mention a compat schema or an old column name (counts since its reset)."""
        import psycopg

        if not db.scalar("SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pg_stat_statements'"):
            return []
        schema = db.scalar("SELECT n.nspname FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n "
                           "ON n.oid = e.extnamespace WHERE e.extname = 'pg_stat_statements'")
        patterns = sorted({s.compat_schema for s in shims if s.compat_schema} | {r["old"] for s in shims for r in s.renames})
        view = _sql().Identifier(schema, "pg_stat_statements").as_string(db.connection)
        try:
            from runner.db import transaction

            with transaction(db):  # a failure (not preloaded, no permission) must not end the caller's transaction
                rows = db.execute(
                    f"SELECT p.pattern, count(*), sum(s.calls) FROM {view} s, "
                    "pg_catalog.unnest(%s::pg_catalog.text[]) AS p(pattern) "
                    "WHERE s.dbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()) "
                    "AND pg_catalog.strpos(pg_catalog.lower(s.query), pg_catalog.lower(p.pattern)) > 0 "
                    "GROUP BY p.pattern ORDER BY 1", (patterns,)).fetchall()
        except psycopg.Error as err:
            return [f"pg_stat_statements not readable: {str(err).splitlines()[0]}"]
        return [f"pg_stat_statements: {count} statement(s) mentioning {pattern}, {calls} call(s) since its last reset "
                "(they may predate the rename)" for pattern, count, calls in rows]


def label(decl: RenameDeclaration) -> str:
    return f"{decl.qualified_table}.{quote_ident(decl.old)} -> {quote_ident(decl.new)}"


def comment(name: str, as_of: str, migration_id: str) -> str:
    return (f"migrate compat shim {name}: version {as_of} shape, created by migration {migration_id}; "
            f"see `migrate shims list`, remove with `migrate shims drop`")


def check_columns(group: list[RenameDeclaration], names: set[str], table: str) -> None:
    for decl in group:
        if decl.old not in names:
            raise MigrationFailed(f"{decl.source}: compat rename {label(decl)}: column {decl.old} does not exist in "
                                  f"{table} before the migration runs")
        if decl.new in names:
            raise MigrationFailed(f"{decl.source}: compat rename {label(decl)}: column {decl.new} already exists in "
                                  f"{table} before the migration runs")
    news = [d.new for d in group]
    for new in news:
        if news.count(new) > 1:
            raise MigrationFailed(f"{group[0].source}: compat rename: two columns of {table} renamed to {new}")


def lost_column(decl: RenameDeclaration, column: str, version: str) -> str:
    return (f"{decl.source}: cannot create the shim for {label(decl)}: the migration also removes column {column}, "
            f"which version {version} consumers still see; move that change to a later migration, after the "
            "shim's window")


BUILDER = PostgresShims()
