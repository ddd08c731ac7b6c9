"""What a SQL statement can do, decided from PostgreSQL's parse tree (pglast).

Two questions the runner asks before it runs anything:

* :func:`transaction_control`: is the statement, at the top level, a ``BEGIN``, ``START
  TRANSACTION``, ``COMMIT``/``END``, ``ROLLBACK``/``ABORT``, ``SAVEPOINT``, ``RELEASE``,
  ``ROLLBACK TO``, ``PREPARE TRANSACTION``, ``COMMIT PREPARED`` or ``ROLLBACK PREPARED``
  (pglast's ``TransactionStmt``)? In a migration the runner wraps in a transaction these would end
  or split it, so :func:`refuse_transaction_control` refuses the file before anything runs.
  Statements inside a ``DO`` block or a function body are not top level (and PostgreSQL refuses
  transaction control there inside a transaction block anyway). SQL pglast cannot parse (SQLite-only
  syntax) falls back to sqlparse's lexer: its first keyword.

* :func:`effect_free`: can the statement have no effect outside its transaction, so that a batch
  of migrations rolled back and applied again one by one repeats nothing (runner.engine)? The rule
  is a whitelist, conservative: anything not listed, or not parsed, is not effect free.

  - Statement kinds that only store definitions: ``CREATE TABLE`` (not ``AS``, not ``PARTITION
    OF``, no ``LIKE``, no ``INHERITS``), ``CREATE VIEW`` (the query is stored, not run), ``CREATE
    SEQUENCE``, ``CREATE INDEX`` (not ``CONCURRENTLY``; plain columns only, no expression, no
    ``WHERE``, no explicit operator class), ``ALTER TABLE`` with the subcommands below, ``CREATE
    FUNCTION``/``PROCEDURE`` in ``sql`` or ``plpgsql`` (bodies are checked, not run),
    ``CREATE TYPE ... AS ENUM``/``AS (...)``, ``CREATE DOMAIN``, ``CREATE TRIGGER``, ``CREATE
    POLICY``/``ALTER POLICY``, ``CREATE SCHEMA`` (of such elements), ``COMMENT``, ``GRANT``/
    ``REVOKE`` on objects, ``ALTER DEFAULT PRIVILEGES``, ``ALTER ... OWNER TO``, ``ALTER ... SET
    SCHEMA``, ``ALTER ... RENAME``, ``DROP`` (not ``CONCURRENTLY``).
  - Expressions are allowed only where PostgreSQL stores them without evaluating them: column
    ``DEFAULT`` and ``CHECK`` of a new table (it has no rows), ``ALTER COLUMN ... SET DEFAULT``,
    ``ADD CONSTRAINT ... CHECK ... NOT VALID``, the query of a view, function bodies, a trigger's
    ``WHEN``, a policy's expressions, a domain's ``DEFAULT``/``CHECK``. Anywhere else (generated
    columns and index expressions are constant-folded at creation even on an empty table; ``ADD
    COLUMN ... DEFAULT`` evaluates a non-volatile default once; partition bounds are evaluated)
    only constants are allowed: a function call, an operator, a subquery, a ``CASE`` there make
    the statement not effect free.
  - ``ALTER TABLE`` subcommands: ``ADD COLUMN`` of a built-in type (a domain's ``CHECK`` runs when
    a column of that domain is added) with no default or a constant one, ``NOT NULL``, ``NULL``,
    ``PRIMARY KEY``, ``UNIQUE``, ``REFERENCES``, identity; ``DROP COLUMN``; ``SET``/``DROP
    DEFAULT``; ``SET``/``DROP NOT NULL``; ``ADD`` a primary key, unique or foreign key constraint, or
    a ``CHECK ... NOT VALID``; ``DROP CONSTRAINT``; identity changes; ``OWNER TO``; row level
    security switches.

  What is trusted: the functions behind built-in types (their input functions, comparison
  operators for index builds and foreign-key checks over rows an earlier migration inserted), and
  built-in type names resolving to ``pg_catalog`` (it comes first unless a search_path names it
  later). Event triggers (which run code on any DDL) are the engine's concern: it batches only
  while none exists.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator
from typing import Any

from runner.errors import MigrationFileError
from runner.migration import MigrationFile, Statement

# Words a transaction-control statement starts with: texts without any of them cannot hold one,
# so they are not parsed (a fast path only; the decision is the parse tree's).
_TRANSACTION_WORDS = re.compile(r"\b(BEGIN|START|COMMIT|END|ROLLBACK|ABORT|SAVEPOINT|RELEASE|PREPARE)\b",
                                re.IGNORECASE)
_COMMENT_OR_BLANK = re.compile(r"^\s*(--.*)?$")


# ----------------------------------------------------------------------------- transaction control

def transaction_control(statement: Statement) -> tuple[int, str] | None:
    """The file line and the words of the first top-level transaction-control statement in
    ``statement`` (a goose block may hold several statements), or None."""
    sql = statement.sql
    if not _TRANSACTION_WORDS.search(sql):
        return None
    from pglast import ast, enums, parse_sql
    from pglast.parser import ParseError

    first = statement.line - _leading_comment_lines(sql)
    try:
        raws = parse_sql(sql)
    except ParseError:
        return _transaction_control_lexed(statement)
    kinds = enums.TransactionStmtKind
    labels = {kinds.TRANS_STMT_START: "START TRANSACTION", kinds.TRANS_STMT_ROLLBACK_TO: "ROLLBACK TO SAVEPOINT",
              kinds.TRANS_STMT_PREPARE: "PREPARE TRANSACTION", kinds.TRANS_STMT_COMMIT_PREPARED: "COMMIT PREPARED",
              kinds.TRANS_STMT_ROLLBACK_PREPARED: "ROLLBACK PREPARED"}
    for raw in raws:
        if isinstance(raw.stmt, ast.TransactionStmt):
            offset = _skip_comments(sql, raw.stmt_location or 0)
            word = re.match(r"\w*", sql[offset:]).group(0).upper()  # type: ignore[union-attr]
            return first + sql.count("\n", 0, offset), labels.get(raw.stmt.kind, word)
    return None


def _transaction_control_lexed(statement: Statement) -> tuple[int, str] | None:
    """For SQL pglast cannot parse (split by sqlparse, as runner.sqlfile does): the first keyword."""
    import sqlparse
    from sqlparse import tokens

    for parsed in sqlparse.parse(statement.sql):
        token = parsed.token_first(skip_ws=True, skip_cm=True)
        if token is None or token.ttype not in tokens.Keyword:
            continue
        word = token.normalized.upper().split()[0]
        if word in ("BEGIN", "START", "COMMIT", "END", "ROLLBACK", "ABORT", "SAVEPOINT", "RELEASE"):
            return statement.line, word
        if word == "PREPARE" and re.match(r"\s*PREPARE\s+TRANSACTION\b", str(parsed).lstrip(), re.IGNORECASE):
            return statement.line, "PREPARE TRANSACTION"
    return None


def refuse_transaction_control(migrations: Iterable[MigrationFile], direction: str = "apply") -> None:
    """Raise MigrationFileError (exit 2, file:line) for the first transactional SQL migration among
    ``migrations`` whose statements for ``direction`` control the transaction themselves."""
    for migration in migrations:
        if not migration.transactional or migration.format == "python":
            continue
        for statement in migration.statements(direction):
            found = transaction_control(statement)
            if found is None:
                continue
            line, words = found
            path = migration.path
            if direction == "rollback" and migration.format == "sql":
                path = path[:-len(".sql")] + ".rollback.sql"
            marker = "`-- +goose NO TRANSACTION`" if migration.format == "goose" else "`-- transactional: false`"
            raise MigrationFileError(
                path, f"{words} at the top level of a transactional migration: the runner already runs "
                f"{migration.id} and its bookkeeping in one transaction, which this statement would end or "
                f"split (a later failure would not roll back what came before it); nothing was run: drop the "
                f"BEGIN/COMMIT wrapper, or mark the file {marker} to manage transactions yourself", line)


def _leading_comment_lines(sql: str) -> int:
    count = 0
    for line in sql.split("\n"):
        if not _COMMENT_OR_BLANK.match(line):
            break
        count += 1
    return count


def _skip_comments(sql: str, offset: int) -> int:
    """The offset of the first character at or after ``offset`` that is not blank or a comment."""
    while offset < len(sql):
        if sql[offset].isspace():
            offset += 1
        elif sql.startswith("--", offset):
            end = sql.find("\n", offset)
            offset = len(sql) if end < 0 else end + 1
        elif sql.startswith("/*", offset):
            end = sql.find("*/", offset + 2)
            offset = len(sql) if end < 0 else end + 2
        else:
            break
    return offset


# ----------------------------------------------------------------------------- effects outside the transaction

# Built-in type names the grammar leaves unqualified (keywords such as int or varchar come back as
# pg_catalog.int4, pg_catalog.varchar): allowed for ADD COLUMN, whose domain CHECKs would run.
_BUILTIN_TYPES = frozenset({
    "text", "uuid", "json", "jsonb", "date", "bytea", "inet", "cidr", "macaddr", "money", "xml", "tsvector",
    "tsquery", "citext", "int2", "int4", "int8", "float4", "float8", "bool", "timestamptz", "timetz",
    "serial", "bigserial", "smallserial", "serial4", "serial8", "serial2", "name", "oid", "char", "varchar",
    "bpchar", "numeric", "interval", "time", "timestamp", "point", "line", "lseg", "box", "path", "polygon",
    "circle", "bit", "varbit", "int4range", "int8range", "numrange", "tsrange", "tstzrange", "daterange",
    "regclass", "regtype", "regproc", "pg_lsn", "txid_snapshot", "pg_snapshot",
})


@functools.lru_cache(maxsize=4096)
def effect_free(sql: str) -> bool:
    """Whether ``sql`` (one statement, or a goose block of several) can have no effect outside its
    transaction (see the module's docstring for the rule)."""
    from pglast import parse_sql
    from pglast.parser import ParseError

    try:
        raws = parse_sql(sql)
    except ParseError:
        return False
    return bool(raws) and all(_stmt_effect_free(raw.stmt) for raw in raws)


def _walk(node: Any) -> Iterator[Any]:
    """``node`` and every node below it."""
    from pglast import ast

    if isinstance(node, (list, tuple)):
        for item in node:
            yield from _walk(item)
    elif isinstance(node, ast.Node):
        yield node
        for slot in type(node).__slots__:
            value = getattr(node, slot, None)
            if isinstance(value, (ast.Node, list, tuple)):
                yield from _walk(value)


def _constant(node: Any) -> bool:
    """No code runs when ``node`` is evaluated: constants, casts of constants, column names,
    built-in SQL value functions (CURRENT_TIMESTAMP...), and type names."""
    from pglast import ast

    allowed = (ast.A_Const, ast.TypeCast, ast.TypeName, ast.String, ast.Integer, ast.Float, ast.Boolean,
               ast.BitString, ast.ColumnRef, ast.A_Star, ast.SQLValueFunction, ast.NullTest, ast.BoolExpr)
    return all(isinstance(n, allowed) for n in _walk(node))


def _builtin_type(type_name: Any) -> bool:
    names = [n.sval for n in (type_name.names or ())]
    if type_name.pct_type or not names:
        return False
    return (len(names) == 2 and names[0] == "pg_catalog") or (len(names) == 1 and names[0] in _BUILTIN_TYPES)


def _stmt_effect_free(stmt: Any) -> bool:
    from pglast import ast

    if isinstance(stmt, ast.CreateStmt):
        return _create_table_effect_free(stmt)
    if isinstance(stmt, ast.IndexStmt):
        return (not stmt.concurrent and stmt.whereClause is None
                and all(p.expr is None and not p.opclass and p.name for p in (stmt.indexParams or ()))
                and all(p.expr is None for p in (stmt.indexIncludingParams or ())))
    if isinstance(stmt, ast.AlterTableStmt):
        return all(_alter_table_cmd_effect_free(cmd) for cmd in (stmt.cmds or ()))
    if isinstance(stmt, ast.CreateFunctionStmt):
        language = next((o.arg.sval for o in (stmt.options or ()) if o.defname == "language"), "sql")
        return language.lower() in ("sql", "plpgsql")
    if isinstance(stmt, ast.CreateSchemaStmt):
        return all(_stmt_effect_free(element) for element in (stmt.schemaElts or ()))
    if isinstance(stmt, ast.DropStmt):
        return not stmt.concurrent
    stores = (ast.ViewStmt, ast.CreateSeqStmt, ast.CreateEnumStmt, ast.CompositeTypeStmt, ast.CreateDomainStmt,
              ast.CreateTrigStmt, ast.CreatePolicyStmt, ast.AlterPolicyStmt, ast.CommentStmt, ast.GrantStmt,
              ast.AlterDefaultPrivilegesStmt, ast.AlterOwnerStmt, ast.AlterObjectSchemaStmt, ast.RenameStmt)
    return isinstance(stmt, stores)


def _create_table_effect_free(stmt: Any) -> bool:
    """CREATE TABLE of a new, empty table: column DEFAULTs and CHECKs are stored, not evaluated;
    everything else (generated columns, partition keys, EXCLUDE) must be constant."""
    from pglast import ast, enums

    stored = (enums.ConstrType.CONSTR_DEFAULT, enums.ConstrType.CONSTR_CHECK)
    if stmt.partbound is not None or stmt.inhRelations:
        return False
    if stmt.partspec is not None and any(p.expr is not None or p.opclass for p in (stmt.partspec.partParams or ())):
        return False
    for element in stmt.tableElts or ():
        if isinstance(element, ast.ColumnDef):
            for constraint in element.constraints or ():
                if constraint.contype not in stored and not _constant(constraint.raw_expr):
                    return False
        elif isinstance(element, ast.Constraint):
            if element.contype == enums.ConstrType.CONSTR_EXCLUSION or element.where_clause is not None:
                return False
            if element.contype != enums.ConstrType.CONSTR_CHECK and not _constant(element.raw_expr):
                return False
        else:  # LIKE other_table (copies its expressions, indexes...)
            return False
    return True


def _alter_table_cmd_effect_free(cmd: Any) -> bool:
    from pglast import ast, enums

    AT = enums.AlterTableType
    CT = enums.ConstrType
    if cmd.subtype == AT.AT_AddColumn:
        column = cmd.def_
        if not isinstance(column, ast.ColumnDef) or not _builtin_type(column.typeName):
            return False
        if column.raw_default is not None and not _constant(column.raw_default):
            return False
        allowed = {CT.CONSTR_NULL, CT.CONSTR_NOTNULL, CT.CONSTR_DEFAULT, CT.CONSTR_PRIMARY, CT.CONSTR_UNIQUE,
                   CT.CONSTR_FOREIGN, CT.CONSTR_IDENTITY}
        return all(c.contype in allowed and _constant(c.raw_expr) for c in (column.constraints or ()))
    if cmd.subtype == AT.AT_AddConstraint:
        constraint = cmd.def_
        if not isinstance(constraint, ast.Constraint):
            return False
        if constraint.contype == CT.CONSTR_CHECK:
            return bool(constraint.skip_validation)  # NOT VALID: stored, no row checked
        return (constraint.contype in (CT.CONSTR_PRIMARY, CT.CONSTR_UNIQUE, CT.CONSTR_FOREIGN)
                and constraint.where_clause is None and _constant(constraint.raw_expr))
    simple = {AT.AT_DropColumn, AT.AT_ColumnDefault, AT.AT_DropNotNull, AT.AT_SetNotNull, AT.AT_DropConstraint,
              AT.AT_ChangeOwner, AT.AT_EnableRowSecurity, AT.AT_DisableRowSecurity, AT.AT_ForceRowSecurity,
              AT.AT_NoForceRowSecurity, AT.AT_AddIdentity, AT.AT_SetIdentity, AT.AT_DropIdentity}
    return cmd.subtype in simple
