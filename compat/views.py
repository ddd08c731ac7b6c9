"""PostgreSQL shim views: one compat schema per version, one view per renamed table.

A shim view lists, in order, exactly the columns the table had at the version
it presents, under that version's names, each one a plain reference to the
base column (so the view stays auto-updatable)::

    CREATE VIEW compat_017.remediation_workflow_catalog WITH (security_invoker = true) AS
    SELECT workflow_id AS workflow_id, ..., container_image AS execution_bundle, created_at AS created_at
    FROM public.remediation_workflow_catalog

Columns are tracked by attnum (``columns`` is a list of ``(view_column,
attnum)``), which survives renames and type changes of the base column. Column
defaults are copied onto the view; the base table's privileges (table and
column level) are granted on the view, and USAGE on the compat schema, to the
same roles. On servers older than 15 there is no ``security_invoker``: the view
then reads the table with its owner's rights (the runner's role), so the table's
row-level security policies are not applied to the caller (privileges are still
checked, because they are mirrored on the view).

All identifiers go through :class:`psycopg.sql.Identifier`; generated names
are kept within PostgreSQL's 63-byte limit by :func:`shorten`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

MAX_IDENTIFIER_BYTES = 63
TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")
COLUMN_PRIVILEGES = ("SELECT", "INSERT", "UPDATE")


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


def find_table(conn: Any, schema: str | None, table: str) -> TableRef | None:
    """The ordinary or partitioned table ``schema.table`` (``table`` via search_path when no schema)."""
    query = (
        "SELECT c.oid, n.nspname, c.relname, c.relkind, pg_get_userbyid(c.relowner) "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p') AND "
    )
    if schema is not None:
        row = conn.execute(query + "n.nspname = %s AND c.relname = %s", (schema, table)).fetchone()
    else:
        row = conn.execute(query + "c.oid = to_regclass(quote_ident(%s))", (table,)).fetchone()
    return TableRef(*row) if row else None


def table_by_oid(conn: Any, oid: int) -> TableRef | None:
    row = conn.execute(
        "SELECT c.oid, n.nspname, c.relname, c.relkind, pg_get_userbyid(c.relowner) "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %s",
        (oid,),
    ).fetchone()
    return TableRef(*row) if row else None


def table_columns(conn: Any, oid: int) -> list[Column]:
    """Live columns of table ``oid`` in ``SELECT *`` order (attnum)."""
    rows = conn.execute(
        "SELECT a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), "
        "pg_get_expr(d.adbin, d.adrelid), a.attgenerated <> '' "
        "FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
        "WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        (oid,),
    ).fetchall()
    return [Column(*r) for r in rows]


def security_invoker_supported(conn: Any) -> bool:
    """True on PostgreSQL 15+ (views WITH (security_invoker = true))."""
    return int(conn.execute("SHOW server_version_num").fetchone()[0]) >= 150000


def relation_exists(conn: Any, schema: str, name: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s",
        (schema, name),
    ).fetchone()
    return row is not None


def create_view(
    conn: Any, *, schema: str, view: str, table: TableRef, columns: list[tuple[str, int]], comment: str = ""
) -> None:
    """Create ``schema.view`` over ``table`` with ``columns`` = [(view column, base attnum)].

    Creates the schema if needed, copies defaults, mirrors privileges.
    Raises :class:`ColumnGone` when an attnum no longer names a live column.
    """
    from psycopg import sql

    live = {c.attnum: c for c in table_columns(conn, table.oid)}
    for name, attnum in columns:
        if attnum not in live:
            raise ColumnGone(name, attnum)
    target = sql.Identifier(schema, view)
    select_list = sql.SQL(", ").join(
        sql.SQL("{} AS {}").format(sql.Identifier(live[attnum].name), sql.Identifier(name)) for name, attnum in columns
    )
    options = sql.SQL(" WITH (security_invoker = true)") if security_invoker_supported(conn) else sql.SQL("")
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    conn.execute(
        sql.SQL("CREATE VIEW {}{} AS SELECT {} FROM {}").format(
            target, options, select_list, sql.Identifier(table.schema, table.name)
        )
    )
    for name, attnum in columns:
        column = live[attnum]
        if column.default is not None and not column.generated:
            conn.execute(
                sql.SQL("ALTER VIEW {} ALTER COLUMN {} SET DEFAULT {}").format(
                    target, sql.Identifier(name), sql.SQL(column.default)
                )
            )
    if comment:
        conn.execute(sql.SQL("COMMENT ON VIEW {} IS {}").format(target, sql.Literal(comment)))
    grant_like_table(conn, schema=schema, view=view, table=table, columns=columns)


def _grantee(role: str | None) -> Any:
    from psycopg import sql

    return sql.SQL("PUBLIC") if role is None else sql.Identifier(role)


def grant_like_table(conn: Any, *, schema: str, view: str, table: TableRef, columns: list[tuple[str, int]]) -> None:
    """Grant on the view what each role holds on the table (table and column level), plus USAGE on the schema."""
    from psycopg import sql

    me = conn.execute("SELECT current_user").fetchone()[0]
    target = sql.Identifier(schema, view)
    grantees: set[str | None] = set()
    table_rows = conn.execute(
        "SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END, a.privilege_type, "
        "a.is_grantable FROM pg_class c, aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a "
        "WHERE c.oid = %s ORDER BY 1, 2",
        (table.oid,),
    ).fetchall()
    for role, privilege, grantable in table_rows:
        if privilege not in TABLE_PRIVILEGES or role == me:
            continue
        grantees.add(role)
        conn.execute(
            sql.SQL("GRANT {} ON {} TO {}{}").format(
                sql.SQL(privilege), target, _grantee(role), sql.SQL(" WITH GRANT OPTION" if grantable else "")
            )
        )
    by_attnum: dict[int, list[str]] = {}
    for name, attnum in columns:
        by_attnum.setdefault(attnum, []).append(name)
    column_rows = conn.execute(
        "SELECT att.attnum, CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END, "
        "a.privilege_type, a.is_grantable FROM pg_attribute att, aclexplode(att.attacl) a "
        "WHERE att.attrelid = %s AND att.attnum > 0 AND NOT att.attisdropped AND att.attacl IS NOT NULL "
        "ORDER BY 1, 2, 3",
        (table.oid,),
    ).fetchall()
    for attnum, role, privilege, grantable in column_rows:
        if privilege not in COLUMN_PRIVILEGES or role == me or attnum not in by_attnum:
            continue
        grantees.add(role)
        conn.execute(
            sql.SQL("GRANT {} ({}) ON {} TO {}{}").format(
                sql.SQL(privilege), sql.SQL(", ").join(sql.Identifier(n) for n in by_attnum[attnum]), target,
                _grantee(role), sql.SQL(" WITH GRANT OPTION" if grantable else ""),
            )
        )
    for role in sorted(grantees, key=lambda r: (r is not None, r or "")):
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), _grantee(role)))


def drop_view(conn: Any, schema: str, view: str, keep_schema: bool = False) -> bool:
    """Drop ``schema.view`` (if present) and the schema when nothing is left in it; True if the schema went."""
    from psycopg import sql

    conn.execute(sql.SQL("DROP VIEW IF EXISTS {}").format(sql.Identifier(schema, view)))
    if keep_schema:
        return False
    row = conn.execute(
        "SELECT n.oid, EXISTS (SELECT 1 FROM pg_depend d WHERE d.refclassid = 'pg_namespace'::regclass "
        "AND d.refobjid = n.oid) FROM pg_namespace n WHERE n.nspname = %s",
        (schema,),
    ).fetchone()
    if row is None or row[1]:
        return False
    conn.execute(sql.SQL("DROP SCHEMA {}").format(sql.Identifier(schema)))
    return True


def view_bases(conn: Any, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """For each existing (schema, view) of ``pairs``, the oid of the table it selects from.

    Read from the view's rewrite rule dependencies, so it survives table renames. One query.
    """
    if not pairs:
        return {}
    rows = conn.execute(
        "SELECT x.s, x.v, (SELECT d.refobjid FROM pg_rewrite r JOIN pg_depend d "
        "  ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid AND d.refclassid = 'pg_class'::regclass "
        "  WHERE r.ev_class = c.oid AND d.refobjid <> c.oid LIMIT 1) "
        "FROM unnest(%s::text[], %s::text[]) AS x(s, v) "
        "JOIN pg_namespace n ON n.nspname = x.s JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = x.v "
        "AND c.relkind = 'v'",
        ([p[0] for p in pairs], [p[1] for p in pairs]),
    ).fetchall()
    return {(r[0], r[1]): r[2] for r in rows if r[2] is not None}


def missing_views(conn: Any, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The (schema, view) pairs of ``pairs`` that do not exist as views."""
    if not pairs:
        return []
    rows = conn.execute(
        "SELECT x.s, x.v FROM unnest(%s::text[], %s::text[]) AS x(s, v) WHERE NOT EXISTS ("
        "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = x.s AND c.relname = x.v AND c.relkind = 'v')",
        ([p[0] for p in pairs], [p[1] for p in pairs]),
    ).fetchall()
    return [(r[0], r[1]) for r in rows]
