"""The schema snapshot read with SQLAlchemy's Inspector, on the runner's open connection.

:func:`reflect_snapshot` returns the dict :func:`runner.snapshot.take_snapshot`
returns (same keys, same exclusions, types spelled as PostgreSQL's
``format_type`` / SQLite's lower-cased declared type, index definitions as
``pg_get_indexdef`` / ``sqlite_master.sql`` print them) from SQLAlchemy 2's
bulk reflection (``get_multi_columns``, ``get_multi_indexes``,
``get_multi_pk_constraint``) instead of hand-written catalog queries. It is the
measured alternative (bench/bench_snapshot.py), not the default: the snapshot
hook runs on the ``up`` path, which must not import SQLAlchemy, so stored
snapshots come from :mod:`runner.snapshot`, and a live snapshot compared with
them must come from the same reader.

What the Inspector cannot give back, so differs from ``take_snapshot`` (each
difference is measured by bench/bench_snapshot.py):

- ``num`` is the column's position (1, 2, ...), not PostgreSQL's ``attnum``: the
  two differ after a column was dropped (attnum keeps the gap), which is what
  ``diff_snapshots`` uses to tell a rename from a drop and an add.
- PostgreSQL: a partitioned table's ``kind`` is ``table`` (the Inspector does not
  tell it from a plain one).
- PostgreSQL types SQLAlchemy does not know (``xml``, ``point``, extension types
  other than ``citext`` and ``hstore``) are ``unknown``; ``name`` and ``"char"``
  are ``character varying``; a column of a ``NOT NULL`` domain is not nullable
  (SQLAlchemy folds the domain's constraint in; ``attnotnull`` is false).
- PostgreSQL index definitions are rebuilt from the reflected parts: an
  expression is printed as ``pg_get_indexdef(..., pretty)`` prints it
  (``lower(name::text)``, not ``lower((name)::text)``); a column's non-default
  collation is not shown.
- Older SQLAlchemy versions reflect less: before 2.0.29 a domain column is its
  base type (``integer``, not ``positive``); before 2.1 an index column's
  operator class (``text_pattern_ops``) is not shown.
- SQLite: a declared type is SQLAlchemy's spelling of its type affinity
  (``int`` -> ``integer``, ``money`` -> ``numeric``, ``numeric(10,2)`` ->
  ``numeric(10, 2)``); an index definition is rebuilt in one canonical form
  (``CREATE INDEX i ON t (a, b)``: no ``DESC``, no ``WHERE``), and expression
  indexes are left out (SQLAlchemy skips them).

The engine borrows the connection: SQLAlchemy gets a proxy of it through
``creator`` and a :class:`~sqlalchemy.pool.StaticPool`, so it opens no second
connection (asking twice is an error), and the proxy ignores ``commit``,
``rollback`` and ``close`` (SQLAlchemy ends its own implicit transaction with a
rollback on every check-in, which would end the caller's transaction) and the
session hooks SQLAlchemy installs on connect (a psycopg notice handler, SQLite
functions).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import create_engine, exc, types
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.engine import Connection, Engine, Inspector
from sqlalchemy.engine.reflection import ObjectKind
from sqlalchemy.pool import StaticPool

from runner.snapshot import SNAPSHOT_FORMAT, Snapshot, is_excluded_name, sqlite_shim_pattern

__all__ = ["borrowed_engine", "reflect_snapshot", "UNKNOWN_TYPE"]

UNKNOWN_TYPE = "unknown"
_CITEXT: tuple[type, ...] = tuple(t for t in [getattr(pg, "CITEXT", None)] if t is not None)  # SQLAlchemy >= 2.0.7
_URLS = {"postgresql": "postgresql+psycopg://", "sqlite": "sqlite://"}


class BorrowedConnectionError(RuntimeError):
    """SQLAlchemy tried to do to the runner's connection what a borrower must not."""


class _Borrowed:
    """The runner's DB-API connection as SQLAlchemy sees it.

    Queries and cursors pass through; ending the transaction or the connection
    does nothing; setting an attribute (autocommit, isolation level) is refused.
    """

    __slots__ = ("_connection",)

    def __init__(self, connection: Any) -> None:
        object.__setattr__(self, "_connection", connection)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise BorrowedConnectionError(f"SQLAlchemy tried to set {name!r} on the runner's connection")

    def commit(self) -> None:
        """The caller's transaction is the caller's."""

    def rollback(self) -> None:
        """The caller's transaction is the caller's (SQLAlchemy rolls back its own on check-in)."""

    def close(self) -> None:
        """The caller closes its connection."""

    def add_notice_handler(self, handler: Any) -> None:
        """psycopg: SQLAlchemy's notice logger stays off the runner's connection."""

    def create_function(self, *args: Any, **kwargs: Any) -> None:
        """sqlite3: SQLAlchemy's REGEXP/floor functions stay off the runner's connection."""


@contextmanager
def borrowed_engine(connection: Any, dialect: str) -> Iterator[Engine]:
    """An Engine whose only connection is ``connection`` (psycopg 3 or sqlite3), lent, never owned."""
    if dialect not in _URLS:
        raise ValueError(f"unsupported dialect {dialect!r}")
    lent: list[_Borrowed] = []

    def creator() -> _Borrowed:
        if lent:
            raise BorrowedConnectionError("SQLAlchemy asked for a second connection")
        lent.append(_Borrowed(connection))
        return lent[0]

    options: dict[str, Any] = {"use_native_hstore": False} if dialect == "postgresql" else {}
    engine = create_engine(_URLS[dialect], creator=creator, poolclass=StaticPool, pool_reset_on_return=None,
                           **options)
    try:
        yield engine
    finally:
        engine.dispose(close=False)


def reflect_snapshot(connection: Any, dialect: str, schema: str | None,
                     sqlite_view_template: str = "{table}__v{version}") -> Snapshot:
    """The snapshot of the managed schema, read through SQLAlchemy's Inspector (see the module docstring)."""
    with borrowed_engine(connection, dialect) as engine, engine.connect() as conn, warnings.catch_warnings():
        # "Did not recognize type ...", "Skipped unsupported reflection of expression-based index ...":
        # the snapshot shows the first as UNKNOWN_TYPE and documents the second.
        warnings.simplefilter("ignore", exc.SAWarning)
        inspector = sa_inspect(conn)
        if dialect == "postgresql":
            return _reflect_pg(conn, inspector, schema or "public")
        return _reflect_sqlite(conn, inspector, sqlite_shim_pattern(sqlite_view_template))


def _empty(dialect: str, schema: str | None) -> Snapshot:
    return {"format": SNAPSHOT_FORMAT, "dialect": dialect, "schema": schema,
            "tables": {}, "views": {}, "indexes": {}}


# --------------------------------------------------------------------------- PostgreSQL

def _reflect_pg(conn: Connection, inspector: Inspector, schema: str) -> Snapshot:
    snap = _empty("postgresql", schema)
    views = set(inspector.get_view_names(schema))
    matviews = set(inspector.get_materialized_view_names(schema))
    foreign = set(inspector.get_foreign_table_names(schema))  # type: ignore[attr-defined]  # PGInspector
    dialect = conn.dialect
    for (_, relname), columns in sorted(inspector.get_multi_columns(schema=schema, kind=ObjectKind.ANY).items(),
                                        key=lambda item: item[0][1]):
        if is_excluded_name(relname):
            continue
        if relname in views or relname in matviews:
            bucket, kind = snap["views"], "view" if relname in views else "materialized view"
        else:
            bucket, kind = snap["tables"], "foreign table" if relname in foreign else "table"
        bucket[relname] = {"kind": kind, "columns": [
            {"name": c["name"], "type": pg_type_text(c["type"], dialect), "nullable": bool(c["nullable"]),
             "num": n}
            for n, c in enumerate(columns, start=1)]}
    quote = dialect.identifier_preparer.quote
    definitions: dict[str, dict[str, str]] = {}
    for (_, table), pk in inspector.get_multi_pk_constraint(schema=schema, kind=ObjectKind.ANY).items():
        if pk.get("name") and pk.get("constrained_columns"):
            include = (pk.get("dialect_options") or {}).get("postgresql_include") or []
            definitions[pk["name"]] = {"table": table, "definition": (
                f"CREATE UNIQUE INDEX {quote(pk['name'])} ON {quote(schema)}.{quote(table)} USING btree ("
                + ", ".join(quote(c) for c in pk["constrained_columns"]) + ")"
                + (" INCLUDE (" + ", ".join(quote(c) for c in include) + ")" if include else ""))}
    for (_, table), indexes in inspector.get_multi_indexes(schema=schema, kind=ObjectKind.ANY).items():
        for index in indexes:
            definitions[index["name"]] = {"table": table, "definition": _pg_index_definition(index, schema, table,
                                                                                              quote)}
    for name in sorted(definitions):
        if not (is_excluded_name(definitions[name]["table"]) or is_excluded_name(name)):
            snap["indexes"][name] = definitions[name]
    return snap


def _pg_index_definition(index: dict[str, Any], schema: str, table: str, quote: Any) -> str:
    """``pg_get_indexdef``'s text, rebuilt from a reflected index."""
    options = index.get("dialect_options") or {}
    sorting = index.get("column_sorting") or {}
    ops = options.get("postgresql_ops") or {}
    expressions = index.get("expressions") or []
    keys = []
    for n, column in enumerate(index["column_names"]):
        if column is None:
            text = expressions[n] if n < len(expressions) else "?"
            text = text if re.match(r"^[\w.]+\(.*\)$", text) else f"({text})"
            key = text
        else:
            key = quote(column)
        if column is not None and column in ops:
            key += f" {ops[column]}"
        flags = sorting.get(column if column is not None else expressions[n] if n < len(expressions) else "", ())
        key += "".join({"desc": " DESC", "nulls_first": " NULLS FIRST", "nulls_last": " NULLS LAST"}.get(f, "")
                       for f in flags)
        keys.append(key)
    text = (f"CREATE {'UNIQUE ' if index.get('unique') else ''}INDEX {quote(index['name'])} ON "
            f"{quote(schema)}.{quote(table)} USING {options.get('postgresql_using', 'btree')} ({', '.join(keys)})")
    include = options.get("postgresql_include") or []
    if include:
        text += " INCLUDE (" + ", ".join(quote(c) for c in include) + ")"
    if options.get("postgresql_nulls_not_distinct"):
        text += " NULLS NOT DISTINCT"
    with_ = options.get("postgresql_with") or {}
    if with_:
        text += " WITH (" + ", ".join(f"{k}={_reloption(str(v))}" for k, v in with_.items()) + ")"
    if options.get("postgresql_where"):
        text += f" WHERE {options['postgresql_where']}"
    return text


def _reloption(value: str) -> str:
    return value if re.fullmatch(r"[a-z_][a-z0-9_$]*", value) else "'" + value.replace("'", "''") + "'"


def pg_type_text(type_: types.TypeEngine[Any], dialect: Any) -> str:
    """A reflected PostgreSQL type spelled as ``format_type`` spells it (``character varying(20)``)."""
    if isinstance(type_, pg.ARRAY):
        return pg_type_text(type_.item_type, dialect) + "[]"
    if isinstance(type_, (pg.ENUM, pg.DOMAIN)):
        return str(dialect.identifier_preparer.format_type(type_))
    if isinstance(type_, types.NullType):
        return UNKNOWN_TYPE
    if isinstance(type_, (types.TIMESTAMP, types.TIME)):
        precision = getattr(type_, "precision", None)
        base = "timestamp" if isinstance(type_, types.TIMESTAMP) else "time"
        zone = "with time zone" if type_.timezone else "without time zone"
        return f"{base}{f'({precision})' if precision is not None else ''} {zone}"
    if isinstance(type_, pg.INTERVAL):
        text = "interval" + (f" {type_.fields}" if type_.fields else "")
        return text + (f"({type_.precision})" if type_.precision is not None else "")
    if isinstance(type_, pg.BIT):
        name = "bit varying" if type_.varying else "bit"
        return name + (f"({type_.length})" if type_.length is not None else "")
    if isinstance(type_, types.NUMERIC) and not isinstance(type_, types.Float):
        if type_.precision is None:
            return "numeric"
        return f"numeric({type_.precision},{type_.scale or 0})"
    if isinstance(type_, pg.DOUBLE_PRECISION):
        return "double precision"
    if isinstance(type_, types.CHAR):
        return "character" + (f"({type_.length})" if type_.length is not None else "")
    if isinstance(type_, _CITEXT):
        return "citext"
    if isinstance(type_, types.String) and not isinstance(type_, types.TEXT):
        return "character varying" + (f"({type_.length})" if type_.length is not None else "")
    if isinstance(type_, types.TEXT):
        return "text"
    plain = type_.copy()
    if hasattr(plain, "collation"):
        plain.collation = None
    return str(plain.compile(dialect=dialect)).lower()


# --------------------------------------------------------------------------- SQLite

def _reflect_sqlite(conn: Connection, inspector: Inspector, shim: re.Pattern[str]) -> Snapshot:
    snap = _empty("sqlite", None)
    views = set(inspector.get_view_names())
    dialect = conn.dialect
    for (_, relname), columns in sorted(inspector.get_multi_columns(kind=ObjectKind.ANY).items(),
                                        key=lambda item: item[0][1]):
        if is_excluded_name(relname) or (relname in views and shim.match(relname)) or not columns:
            continue
        bucket = snap["views"] if relname in views else snap["tables"]
        bucket[relname] = {"kind": "view" if relname in views else "table", "columns": [
            {"name": c["name"], "type": sqlite_type_text(c["type"], dialect), "nullable": bool(c["nullable"]),
             "num": n}
            for n, c in enumerate(columns, start=1)]}
    quote = dialect.identifier_preparer.quote
    found: dict[str, dict[str, str]] = {}
    for (_, table), indexes in inspector.get_multi_indexes(kind=ObjectKind.TABLE).items():
        for index in indexes:
            found[index["name"]] = {"table": table, "definition": (
                f"CREATE {'UNIQUE ' if index.get('unique') else ''}INDEX {quote(index['name'])} ON {quote(table)} ("
                + ", ".join(quote(c) for c in index["column_names"] if c is not None) + ")")}
    for name in sorted(found):
        if not (is_excluded_name(found[name]["table"]) or is_excluded_name(name)):
            snap["indexes"][name] = found[name]
    return snap


def sqlite_type_text(type_: types.TypeEngine[Any], dialect: Any) -> str:
    """A reflected SQLite type as SQLAlchemy spells it, lower-cased (no declared type: ``""``)."""
    if isinstance(type_, types.NullType):
        return ""
    return str(type_.compile(dialect=dialect)).lower()
