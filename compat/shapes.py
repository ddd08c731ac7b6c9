"""Table shapes: what each version saw, and how to present it after later changes.

A *shape* is a table's columns as ``SELECT *`` shows them, in order: (column key, name, type).
On PostgreSQL the column key is the attnum, which survives renames and type changes, so a
rename is told apart from a drop plus an add without any declaration.

The compat hook snapshots the shape of every table a migration touches before its statements
run (:func:`touched_tables` learns which from the SQL, with pglast; a migration that touches no
existing table pays nothing), compares it with the shape afterwards, and for every compatibility
window (one compat schema per pinned version) presents the version's shape over the new table:

========== ============================================ ==========================
change      what the version's view shows               writes through the view
========== ============================================ ==========================
added       nothing (the column is hidden)              inserts take its default
renamed     the old name (a plain column reference)     yes
dropped     ``NULL::<old type>`` or a declared ``expr``  no (not updatable column)
retyped     ``col::<old type>`` or a declared ``expr``   no (not updatable column)
table       a view under the old table name             yes (other columns)
========== ============================================ ==========================

A view column entry (as the registry keeps it in the shim's ``columns``) is
``{"name", "attnum", "type", "show", ["expr"], ["base"]}`` where ``show`` is how the column is
presented now (``column``, ``rename``, ``cast``, ``expr``, ``fill``); entries with
``"hidden": true`` are the table's columns the view leaves out (``name`` = their current name).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

SHOWS = ("column", "rename", "cast", "expr", "fill")


@dataclass(frozen=True)
class ColumnShape:
    attnum: int
    name: str
    type: str
    default: str | None = None
    generated: bool = False
    not_null: bool = False


@dataclass
class TableShape:
    """A table's shape at one moment; ``key`` identifies it across renames (PostgreSQL: its oid)."""

    key: Any
    schema: str | None
    name: str
    columns: list[ColumnShape] = field(default_factory=list)

    def signature(self) -> tuple[Any, ...]:
        return (self.schema, self.name, tuple((c.attnum, c.name, c.type) for c in self.columns))

    def by_attnum(self) -> dict[int, ColumnShape]:
        return {c.attnum: c for c in self.columns}


def changed(before: TableShape, after: TableShape | None) -> bool:
    """Whether the shape a ``SELECT *`` reader sees differs (names, order, types, the table's name)."""
    return after is None or before.signature() != after.signature()


def entries_of(shape: TableShape) -> list[dict[str, Any]]:
    """The view column entries presenting ``shape`` as it is."""
    return [{"name": c.name, "attnum": c.attnum, "type": c.type} for c in shape.columns]


@dataclass(frozen=True)
class Presented:
    """How one view column is built over the live table."""

    name: str
    attnum: int
    type: str
    show: str
    base: str | None  # the live column's name (None when it is gone)
    expr: str | None = None


def compose(entries: list[dict[str, Any]], live: dict[int, ColumnShape]) -> tuple[list[Presented], list[ColumnShape]]:
    """Present a version's column ``entries`` over the live columns: (view columns, hidden columns).

    A column still there under the same type is a plain reference (renamed when its name
    changed); under another type it is cast back; gone, it is filled with NULL of its old type;
    an entry with a declared ``expr`` shows that expression (cast to the old type).
    """
    out: list[Presented] = []
    for entry in visible(entries):
        attnum, name = entry["attnum"], entry["name"]
        column = live.get(attnum)
        old_type = entry.get("type") or (column.type if column else "text")
        expr = entry.get("expr")
        if expr is not None and (column is None or column.type != old_type):
            out.append(Presented(name, attnum, old_type, "expr", column.name if column else None, expr))
        elif column is None:
            out.append(Presented(name, attnum, old_type, "fill", None))
        elif column.type != old_type:
            out.append(Presented(name, attnum, old_type, "cast", column.name))
        else:
            out.append(Presented(name, attnum, old_type, "column" if column.name == name else "rename", column.name))
    shown = {p.attnum for p in out if p.base is not None and p.show in ("column", "rename", "cast")}
    hidden = [c for a, c in live.items() if a not in shown]  # in table order
    return out, hidden


def stored(presented: list[Presented], hidden: list[ColumnShape], entries: list[dict[str, Any]]
           ) -> list[dict[str, Any]]:
    """The registry's column map after a build: the entries with how each is shown now, then the hidden columns."""
    exprs = {(e["name"], e["attnum"]): e.get("expr") for e in visible(entries)}
    out: list[dict[str, Any]] = []
    for p in presented:
        entry: dict[str, Any] = {"name": p.name, "attnum": p.attnum, "type": p.type, "show": p.show}
        if p.base is not None and p.base != p.name:
            entry["base"] = p.base
        if exprs.get((p.name, p.attnum)) is not None:
            entry["expr"] = exprs[(p.name, p.attnum)]
        out.append(entry)
    out.extend({"name": c.name, "attnum": c.attnum, "hidden": True} for c in hidden)
    return out


def visible(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The view's own columns of a registry column map (without the hidden ones)."""
    return [e for e in entries if not e.get("hidden")]


def renames_of(entries: list[dict[str, Any]]) -> list[dict[str, str]]:
    """``[{"old", "new"}]`` for the columns shown under an older name."""
    return [{"old": e["name"], "new": e["base"]} for e in visible(entries) if e.get("base") and e.get("show") != "expr"]


def describe(entries: list[dict[str, Any]]) -> dict[str, list[str]]:
    """What a view does, for ``shims list``: hides, renames, casts, fills (empty lists left out)."""
    out: dict[str, list[str]] = {}
    for e in entries:
        if e.get("hidden"):
            out.setdefault("hides", []).append(e["name"])
        elif e.get("show") == "rename":
            out.setdefault("renames", []).append(f"{e['base']} as {e['name']}")
        elif e.get("show") == "cast":
            out.setdefault("casts", []).append(f"{e.get('base', e['name'])}::{e['type']} as {e['name']}")
        elif e.get("show") == "fill":
            out.setdefault("fills", []).append(f"{e['name']} with NULL::{e['type']}")
        elif e.get("show") == "expr":
            out.setdefault("fills", []).append(f"{e['name']} with ({e.get('expr')})::{e['type']}")
    return out


# -- which tables a migration touches ---------------------------------------------------------
@dataclass(frozen=True)
class Touch:
    """A statement touching an existing table: ``kind`` alter, rename, rename_table or drop_table.

    For ``alter`` (one per ALTER TABLE command), ``detail`` is add, drop or retype (None for any
    other command) and ``column`` the column; for ``rename`` ``column`` is the old name and
    ``detail`` the new one; for ``rename_table`` ``detail`` is the new table name. ``line`` is the
    statement's line in the migration file. The one model of what a migration does to existing
    tables: the shape path (:mod:`compat.hook`) and the refusals of non-transactional migrations
    (``prepare_refresh`` of :mod:`compat.dialects`) both read these.
    """

    kind: str
    schema: str | None
    table: str
    line: int
    column: str | None = None
    detail: str | None = None


# Every statement that changes an existing table's shape (ALTER TABLE ..., ALTER TABLE ... RENAME,
# DROP TABLE) contains one of these words: statements without them are not parsed at all.
_MAYBE_TOUCHES = re.compile(r"(?<![\w$])(alter|drop)(?![\w$])", re.IGNORECASE)


def touched_tables(statements: list[Any]) -> list[Touch] | None:
    """The tables ``statements`` alter, rename or drop (pglast parse tree), in statement order.

    A touch of a table the same statements created *earlier* is left out (that table did not
    exist before the migration, so it has no shape to keep and no shim); a touch that comes
    before the CREATE is kept: ``DROP TABLE t; CREATE TABLE t (...)`` and ``ALTER TABLE t RENAME
    TO t_old; CREATE TABLE t (...)`` change the existing ``t``. ``ALTER TABLE`` only: ``ALTER
    FOREIGN TABLE``, ``ALTER VIEW`` and the like are not touches (shims are built over ordinary
    and partitioned tables only). None when a statement does not parse (assume the worst).
    Statements without the words ALTER or DROP are skipped unparsed (the cost of auto mode for a
    migration that only creates things is one regular expression search per statement)."""
    if not any(_MAYBE_TOUCHES.search(s.sql) for s in statements):
        return []
    from pglast import parse_sql
    from pglast.enums import AlterTableType, ObjectType
    from pglast.parser import ParseError

    found: list[Touch] = []
    created: set[tuple[str | None, str]] = set()  # tables created so far

    def touch(t: Touch) -> None:
        if (t.schema, t.table) not in created and (None, t.table) not in created:
            found.append(t)

    for statement in statements:
        try:
            parsed = parse_sql(statement.sql)
        except ParseError:
            return None
        for raw in parsed:
            node = raw.stmt
            kind = type(node).__name__
            if kind == "CreateStmt" and node.relation is not None:
                created.add((node.relation.schemaname, node.relation.relname))
            elif kind == "AlterTableStmt" and node.relation is not None and node.objtype in (
                    ObjectType.OBJECT_TABLE, None):
                rel = node.relation
                for cmd in node.cmds or ():
                    detail = {AlterTableType.AT_AddColumn: "add", AlterTableType.AT_DropColumn: "drop",
                              AlterTableType.AT_AlterColumnType: "retype"}.get(cmd.subtype)
                    column = cmd.name
                    if detail == "add" and cmd.def_ is not None:
                        column = cmd.def_.colname
                    touch(Touch("alter", rel.schemaname, rel.relname, statement.line, column, detail))
            elif kind == "RenameStmt" and node.relation is not None and node.renameType in (
                    ObjectType.OBJECT_TABLE, ObjectType.OBJECT_COLUMN):
                rel = node.relation
                if node.renameType == ObjectType.OBJECT_TABLE:
                    touch(Touch("rename_table", rel.schemaname, rel.relname, statement.line, None, node.newname))
                else:
                    touch(Touch("rename", rel.schemaname, rel.relname, statement.line, node.subname, node.newname))
            elif kind == "DropStmt" and node.removeType == ObjectType.OBJECT_TABLE:
                for obj in node.objects or ():
                    names = [getattr(part, "sval", None) for part in obj]
                    if names and all(names):
                        touch(Touch("drop_table", names[-2] if len(names) >= 2 else None, names[-1],
                                    statement.line))
    return found
