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
    SEQUENCE``, ``CREATE INDEX`` (B-tree, not ``CONCURRENTLY``; plain columns only, no expression,
    no ``WHERE``, no explicit operator class), ``ALTER TABLE`` with the subcommands below, ``CREATE
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
    only constants are allowed: a function call, an operator, a subquery, a ``CASE``, a cast to a
    type that is not built in (a domain's ``CHECK`` would run) there make the statement not effect
    free.
  - ``ALTER TABLE`` subcommands: ``ADD COLUMN`` of a built-in type (a domain's ``CHECK`` runs when
    a column of that domain is added) with no default or a constant one, ``NOT NULL``, ``NULL``,
    ``PRIMARY KEY``, ``UNIQUE``, ``REFERENCES``, identity; ``DROP COLUMN``; ``SET``/``DROP
    DEFAULT``; ``SET``/``DROP NOT NULL``; ``ADD`` a primary key, unique or foreign key constraint, or
    a ``CHECK ... NOT VALID``; ``DROP CONSTRAINT``; identity changes; ``OWNER TO``; row level
    security switches.
  - Nothing that names one of the tables the transaction writes besides (``protected``: the
    runner's bookkeeping), where a trigger or a policy would run code on those writes.

  What is trusted: the functions behind built-in types (their input functions, comparison
  operators for index builds and foreign-key checks over rows an earlier migration inserted), and
  built-in type names resolving to ``pg_catalog`` (it comes first unless a search_path names it
  later: :func:`builtins_first` tells, and the engine batches only then). Event triggers (which run
  code on any DDL) are the engine's concern: it batches only while none exists.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator
from typing import Any

from runner.dialects.postgresql import split_search_path
from runner.errors import MigrationFileError
from runner.migration import MigrationFile, Statement
from runner.sqlfile import leading_comment_lines, skip_comments

# Words a transaction-control statement starts with: texts without any of them cannot hold one,
# so they are not parsed (a fast path only; the decision is the parse tree's).
_TRANSACTION_WORDS = re.compile(r"\b(BEGIN|START|COMMIT|END|ROLLBACK|ABORT|SAVEPOINT|RELEASE|PREPARE)\b",
                                re.IGNORECASE)


# ----------------------------------------------------------------------------- transaction control

def transaction_control(statement: Statement) -> tuple[int, str] | None:
    """The file line and the words of the first top-level transaction-control statement in
    ``statement`` (a goose block may hold several statements), or None."""
    sql = statement.sql
    if not _TRANSACTION_WORDS.search(sql):
        return None
    from pglast import ast, enums, parse_sql
    from pglast.parser import ParseError

    first = statement.line - leading_comment_lines(sql)
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
            offset = skip_comments(sql, raw.stmt_location or 0)
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




# ----------------------------------------------------------------------------- effects outside the transaction

# Built-in type names the grammar leaves unqualified (keywords such as int or varchar come back as
# pg_catalog.int4, pg_catalog.varchar): allowed for ADD COLUMN, whose domain CHECKs would run.
_BUILTIN_TYPES = frozenset({
    "text", "uuid", "json", "jsonb", "date", "bytea", "inet", "cidr", "macaddr", "money", "xml", "tsvector",
    "tsquery", "int2", "int4", "int8", "float4", "float8", "bool", "timestamptz", "timetz",
    "serial", "bigserial", "smallserial", "serial4", "serial8", "serial2", "name", "oid", "char", "varchar",
    "bpchar", "numeric", "interval", "time", "timestamp", "point", "line", "lseg", "box", "path", "polygon",
    "circle", "bit", "varbit", "int4range", "int8range", "numrange", "tsrange", "tstzrange", "daterange",
    "regclass", "regtype", "regproc", "pg_lsn", "txid_snapshot", "pg_snapshot",
})


@functools.lru_cache(maxsize=4096)
def effect_free(sql: str, protected: frozenset[str] = frozenset()) -> bool:
    """Whether ``sql`` (one statement, or a goose block of several) can have no effect outside its
    transaction (see the module's docstring for the rule).

    ``protected``: names of tables written while the statement's transaction goes on (the runner's
    bookkeeping): a statement naming one of them, in any schema, is not effect free (a trigger or
    a policy there would run code on those writes).

    Read from libpg_query's JSON parse tree (ten times cheaper than pglast's Python nodes; it runs
    for every migration of a fresh database): a node is ``{"TypeName": {fields}}``, fields that are
    false or empty are left out, enums are their names."""
    import json

    from pglast.parser import ParseError, parse_sql_json

    try:
        tree = json.loads(parse_sql_json(sql))
    except ParseError:
        return False
    statements = [raw.get("stmt") for raw in tree.get("stmts", ())]
    if protected and not protected.isdisjoint(_relations_below(statements)):
        return False
    return bool(statements) and all(_node_effect_free(stmt) for stmt in statements)


def builtins_first(search_path: str | None) -> bool:
    """Whether unqualified built-in type names resolve to ``pg_catalog`` under ``search_path`` (a
    ``SHOW search_path`` value): it names ``pg_catalog`` first or not at all (then it is searched
    first)."""
    schemas = [name for name in split_search_path(search_path or "") if name]
    return "pg_catalog" not in schemas or schemas[0] == "pg_catalog"


def _kind(node: Any) -> tuple[str, dict[str, Any]]:
    """The type name and the fields of a wrapped node (``("", {})`` for anything else)."""
    if isinstance(node, dict) and len(node) == 1:
        (name, fields), = node.items()
        if name[:1].isupper() and isinstance(fields, dict):
            return name, fields
    return "", {}


def _dicts_below(value: Any) -> Iterator[dict[str, Any]]:
    """Every dict in the JSON tree ``value``: wrapped nodes, their fields, unwrapped RangeVars."""
    if isinstance(value, list):
        for item in value:
            yield from _dicts_below(item)
    elif isinstance(value, dict):
        yield value
        for item in value.values():
            yield from _dicts_below(item)


def _nodes_below(value: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """The type name and fields of every wrapped node in ``value``."""
    for found in _dicts_below(value):
        name, fields = _kind(found)
        if name:
            yield name, fields


def _relations_below(value: Any) -> Iterator[str]:
    """The names of the relations ``value`` names (RangeVar fields: the JSON leaves them unwrapped)."""
    for found in _dicts_below(value):
        if isinstance(found.get("relname"), str):
            yield found["relname"]


_CONSTANT_NODES = frozenset({"A_Const", "TypeCast", "TypeName", "String", "Integer", "Float", "Boolean", "BitString",
                             "ColumnRef", "A_Star", "SQLValueFunction", "NullTest", "BoolExpr", "List"})


def _constant(value: Any) -> bool:
    """No code runs when ``value`` is evaluated: constants, casts of constants to built-in types
    (a cast to a domain runs its CHECK, to a composite type its columns' domains' CHECKs), column
    names, built-in SQL value functions (CURRENT_TIMESTAMP...), and type names."""
    for name, fields in _nodes_below(value):
        if name not in _CONSTANT_NODES or (name == "TypeCast" and not _builtin_type(fields.get("typeName", {}))):
            return False
    return True


def _builtin_type(type_name: dict[str, Any]) -> bool:
    names = [_kind(n)[1].get("sval") for n in type_name.get("names", ())]
    if type_name.get("pct_type") or not names:
        return False
    return (len(names) == 2 and names[0] == "pg_catalog") or (len(names) == 1 and names[0] in _BUILTIN_TYPES)


_STORES = frozenset({"ViewStmt", "CreateSeqStmt", "CreateEnumStmt", "CompositeTypeStmt", "CreateDomainStmt",
                     "CreateTrigStmt", "CreatePolicyStmt", "AlterPolicyStmt", "CommentStmt", "GrantStmt",
                     "AlterDefaultPrivilegesStmt", "AlterOwnerStmt", "AlterObjectSchemaStmt", "RenameStmt"})


def _node_effect_free(node: Any) -> bool:
    kind, stmt = _kind(node)
    if kind == "CreateStmt":
        return _create_table_effect_free(stmt)
    if kind == "IndexStmt":
        params = [_kind(p)[1] for p in stmt.get("indexParams", ())]
        including = [_kind(p)[1] for p in stmt.get("indexIncludingParams", ())]
        # B-tree only: the support functions of other access methods may be a user's (a range
        # type's subtype_diff, for GiST), run for each row an earlier migration inserted.
        return (not stmt.get("concurrent") and "whereClause" not in stmt and stmt.get("accessMethod") == "btree"
                and all(p.get("name") and "expr" not in p and not p.get("opclass") for p in params)
                and all("expr" not in p for p in including))
    if kind == "AlterTableStmt":
        return all(_alter_table_cmd_effect_free(_kind(cmd)[1]) for cmd in stmt.get("cmds", ()))
    if kind == "CreateFunctionStmt":
        language = "sql"
        for option in stmt.get("options", ()):
            fields = _kind(option)[1]
            if fields.get("defname") == "language":
                language = _kind(fields.get("arg"))[1].get("sval", "")
        return language.lower() in ("sql", "plpgsql")
    if kind == "CreateSchemaStmt":
        return all(_node_effect_free(element) for element in stmt.get("schemaElts", ()))
    if kind == "DropStmt":
        return not stmt.get("concurrent")
    return kind in _STORES


def _create_table_effect_free(stmt: dict[str, Any]) -> bool:
    """CREATE TABLE of a new, empty table: column DEFAULTs and CHECKs are stored, not evaluated;
    everything else (generated columns, partition keys, EXCLUDE) must be constant."""
    if "partbound" in stmt or stmt.get("inhRelations"):
        return False
    for param in stmt.get("partspec", {}).get("partParams", ()):
        fields = _kind(param)[1]
        if "expr" in fields or fields.get("opclass"):
            return False
    for element in stmt.get("tableElts", ()):
        kind, fields = _kind(element)
        if kind == "ColumnDef":
            for constraint in fields.get("constraints", ()):
                c = _kind(constraint)[1]
                if c.get("contype") not in ("CONSTR_DEFAULT", "CONSTR_CHECK") and not _constant(c.get("raw_expr")):
                    return False
        elif kind == "Constraint":
            if fields.get("contype") == "CONSTR_EXCLUSION" or "where_clause" in fields:
                return False
            if fields.get("contype") != "CONSTR_CHECK" and not _constant(fields.get("raw_expr")):
                return False
        else:  # LIKE other_table (copies its expressions, indexes...)
            return False
    return True


_ADD_COLUMN_CONSTRAINTS = frozenset({"CONSTR_NULL", "CONSTR_NOTNULL", "CONSTR_DEFAULT", "CONSTR_PRIMARY",
                                     "CONSTR_UNIQUE", "CONSTR_FOREIGN", "CONSTR_IDENTITY"})
_SIMPLE_SUBCOMMANDS = frozenset({
    "AT_DropColumn", "AT_ColumnDefault", "AT_DropNotNull", "AT_SetNotNull", "AT_DropConstraint", "AT_ChangeOwner",
    "AT_EnableRowSecurity", "AT_DisableRowSecurity", "AT_ForceRowSecurity", "AT_NoForceRowSecurity",
    "AT_AddIdentity", "AT_SetIdentity", "AT_DropIdentity"})


def _alter_table_cmd_effect_free(cmd: dict[str, Any]) -> bool:
    subtype = cmd.get("subtype")
    kind, definition = _kind(cmd.get("def"))
    if subtype == "AT_AddColumn":
        if kind != "ColumnDef" or not _builtin_type(definition.get("typeName", {})):
            return False
        if not _constant(definition.get("raw_default")):
            return False
        constraints = [_kind(c)[1] for c in definition.get("constraints", ())]
        return all(c.get("contype") in _ADD_COLUMN_CONSTRAINTS and _constant(c.get("raw_expr")) for c in constraints)
    if subtype == "AT_AddConstraint":
        if kind != "Constraint":
            return False
        if definition.get("contype") == "CONSTR_CHECK":
            return bool(definition.get("skip_validation"))  # NOT VALID: stored, no row checked
        return (definition.get("contype") in ("CONSTR_PRIMARY", "CONSTR_UNIQUE", "CONSTR_FOREIGN")
                and "where_clause" not in definition and _constant(definition.get("raw_expr")))
    return subtype in _SIMPLE_SUBCOMMANDS
