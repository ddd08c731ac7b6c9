"""``migrate lint``: unsafe operations in PostgreSQL migrations, found with PostgreSQL's own parser.

Each statement of a migration is parsed with pglast (libpg_query: the
grammar of the PostgreSQL server itself) and checked by the rules below. A
finding names the file, the line and a fix. Rules are disabled per file with a
comment anywhere in it (``-- lint: disable=rule-name[,other-rule]``) or for
the whole project with ``[lint] disable = [...]`` in the config.

Rules (all errors unless noted):

``rename-without-compat``
    ``ALTER TABLE ... RENAME COLUMN`` with no ``-- compat: rename`` declaration
    (or ``[[renames]]`` config entry) for it, or ``ALTER TABLE ... RENAME TO``:
    running consumers break the moment it commits.
``shim-exposed-column``
    ``DROP COLUMN`` / ``ALTER COLUMN ... TYPE`` / ``DROP TABLE`` of something an
    active compat shim still exposes (needs a database to know the shims).
``index-not-concurrent``
    ``CREATE INDEX`` without ``CONCURRENTLY`` on a table this migration did not
    create: it blocks writes for the whole build.
``not-null-without-default``
    ``ADD COLUMN ... NOT NULL`` with no ``DEFAULT`` on an existing table: fails
    on any non-empty table.
``set-not-null``
    ``ALTER COLUMN ... SET NOT NULL`` on an existing table: a full scan under an
    ACCESS EXCLUSIVE lock.
``shape-change-without-window`` (warning)
    In ``[compat] mode = "declared"``: ``ADD COLUMN``, ``DROP COLUMN`` or ``ALTER COLUMN ... TYPE`` on
    an existing table with no ``-- compat: add|drop|retype`` directive for it: consumers pinned at
    earlier versions (``search_path=compat_V,public``) see the change at commit. The fix is the
    directive to add (``mode = "auto"`` opens these windows without directives).
``hidden-column-needs-default`` (warning)
    ``ALTER COLUMN ... DROP DEFAULT`` on an existing table: compat views hide columns added after a
    version, so that version's inserts cannot supply a NOT NULL column without its default (an
    ``ADD COLUMN ... NOT NULL`` without ``DEFAULT`` is ``not-null-without-default``, which says so).
``drop-table`` (warning)
    ``DROP TABLE`` of an existing table: it cannot be shimmed, consumers pinned at earlier versions
    lose it at commit.
``non-transactional-statement``
    A statement PostgreSQL refuses inside a transaction block (``CREATE INDEX
    CONCURRENTLY``, ``DROP INDEX CONCURRENTLY``, ``REINDEX ... CONCURRENTLY``,
    ``DETACH PARTITION ... CONCURRENTLY``, ``VACUUM``, ``CREATE/DROP
    DATABASE``, ``ALTER SYSTEM``, ``CREATE/DROP TABLESPACE``, ``ALTER TYPE ...
    ADD VALUE`` before PostgreSQL 12 (a warning when the server version is
    unknown), transaction control such as ``COMMIT``) in a migration that runs
    in one transaction.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compat.declarations import DeclarationError, declarations_from, is_rename, parse_shape
from compat.registry import Registry
from runner.errors import ConfigError, MigrationFileError

if TYPE_CHECKING:
    from compat.model import Shim
    from runner.db import Database
from runner.logs import get_logger
from runner.migration import MigrationFile
from runner.sqlfile import leading_comment_lines, skip_comments

log = get_logger("migrate.lint")

RULES: dict[str, str] = {
    "rename-without-compat": "a rename with no compat declaration breaks running consumers",
    "shim-exposed-column": "drops or retypes a column an active compat shim still exposes",
    "index-not-concurrent": "CREATE INDEX without CONCURRENTLY on an existing table blocks writes",
    "not-null-without-default": "ADD COLUMN ... NOT NULL without DEFAULT fails on a non-empty table",
    "set-not-null": "SET NOT NULL scans the whole table under an ACCESS EXCLUSIVE lock",
    "non-transactional-statement": "a statement PostgreSQL refuses inside a transaction block",
    "shape-change-without-window": "a shape change of an existing table with no compat window (declared mode)",
    "hidden-column-needs-default": "a column hidden from older versions' views needs a default for their inserts",
    "drop-table": "a dropped table cannot be shimmed: pinned consumers lose it",
}

_DISABLE = re.compile(r"^\s*--\s*lint\s*:\s*disable\s*=\s*(?P<rules>[A-Za-z0-9_,\s-]+?)\s*$", re.M)


@dataclass(frozen=True)
class LintFinding:
    """One problem: where, which rule, what, and how to fix it."""

    file: str
    line: int
    rule: str
    severity: str  # "error" | "warning"
    message: str
    fix: str

    def as_text(self) -> str:
        return f"{self.file}:{self.line}: {self.severity} [{self.rule}] {self.message}\n    fix: {self.fix}"


@dataclass
class LintReport:
    findings: list[LintFinding] = field(default_factory=list)
    linted: list[str] = field(default_factory=list)  # migration ids
    skipped: list[str] = field(default_factory=list)  # ids not linted (Python migrations)

    @property
    def errors(self) -> list[LintFinding]:
        return [f for f in self.findings if f.severity == "error"]

    def as_dict(self) -> dict[str, Any]:
        return {"findings": [asdict(f) for f in self.findings], "linted": self.linted,
                "skipped": self.skipped, "errors": len(self.errors),
                "warnings": len(self.findings) - len(self.errors)}

    def as_text(self) -> str:
        lines = [f.as_text() for f in self.findings]
        for mid in self.skipped:
            lines.append(f"{mid}: not linted (Python migration)")
        noun = "migration" if len(self.linted) == 1 else "migrations"
        lines.append(f"{len(self.linted)} {noun} linted: {len(self.errors)} error(s), "
                     f"{len(self.findings) - len(self.errors)} warning(s)")
        return "\n".join(lines)


def check_rule_names(names: Iterable[str], where: str) -> None:
    """Raise ConfigError for a rule name that does not exist (a typo would silently disable nothing)."""
    for name in names:
        if name not in RULES and name != "all":
            raise ConfigError(f"{where}: unknown lint rule '{name}' (known: {', '.join(sorted(RULES))}, all)")


def _file_disables(migration: MigrationFile, text: str | None) -> set[str]:
    rules: set[str] = set()
    sources: list[tuple[str, int]] = []
    for directive in migration.directives_named("lint"):
        match = re.match(r"^\s*disable\s*=\s*(.+)$", directive.value)
        if not match:
            raise MigrationFileError(migration.path, f"lint directive: expected 'disable=rule-name', got {directive.value!r}",
                                     directive.line or None)
        sources.append((match.group(1), directive.line))
    if text is not None:
        for match in _DISABLE.finditer(text):
            sources.append((match.group("rules"), text.count("\n", 0, match.start()) + 1))
    for value, line in sources:
        for name in (x.strip() for x in value.split(",")):
            if not name:
                continue
            if name not in RULES and name != "all":
                raise MigrationFileError(
                    migration.path, f"unknown lint rule '{name}' in '-- lint: disable=' "
                    f"(known: {', '.join(sorted(RULES))}, all)", line or None)
            rules.add(name)
    return rules


def check_lint_directives(migration: MigrationFile, text: str | None) -> None:
    """Raise MigrationFileError for a malformed ``-- lint: disable=`` or an unknown rule in it
    (``migrate check-files``)."""
    _file_disables(migration, text)


def _declared_renames(migration: MigrationFile, renames: Sequence[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """(table, old, new) triples declared for ``migration``, exactly as the compat hook reads them."""
    return {(d.table, d.old, d.new) for d in declarations_from(migration, renames)}


def _relname(node: Any) -> str:
    return node.relname if node is not None else "?"


def _qualified(node: Any) -> str:
    if node is None:
        return "?"
    return f"{node.schemaname}.{node.relname}" if getattr(node, "schemaname", None) else node.relname


def _has_concurrently(params: Any) -> bool:
    return any(getattr(p, "defname", None) == "concurrently" for p in (params or ()))


class _Linter:
    """Lints the statements of one migration."""

    def __init__(self, migration: MigrationFile, disabled: set[str], declared: set[tuple[str, str, str]],
                 shims: Sequence[Shim], server_version: int | None, compat_mode: str | None = None) -> None:
        self.m = migration
        self.compat_mode = compat_mode
        self.windows = _declared_shapes(migration)
        self.disabled = disabled
        self.declared = declared
        self.shims = shims
        self.server_version = server_version
        self.created: set[str] = set()
        self.findings: list[LintFinding] = []

    def add(self, rule: str, line: int, message: str, fix: str, severity: str = "error") -> None:
        if rule in self.disabled or "all" in self.disabled:
            return
        self.findings.append(LintFinding(self.m.path, line, rule, severity, message, fix))

    def existing(self, rel: Any) -> bool:
        return _relname(rel) not in self.created

    def shim_exposing(self, table: str, column: str | None) -> Shim | None:
        for shim in self.shims:
            if shim.table_name == table and (column is None or column in shim.exposed):
                return shim
        return None

    def window(self, line: int, kind: str, rel: Any, column: str, what: str) -> None:
        """shape-change-without-window for ``kind`` (add/drop/retype) of ``rel.column`` when undeclared."""
        if self.compat_mode != "declared" or not self.existing(rel) or (kind, _relname(rel), column) in self.windows:
            return
        self.add("shape-change-without-window", line,
                 f"{what} {_relname(rel)}.{column} with no compat window: consumers pinned at earlier versions "
                 "see the change at commit",
                 f"add to the migration's header: `-- compat: {kind} {_qualified(rel)}.{column} window=14d` "
                 "(or set [compat] mode = \"auto\")", "warning")

    def non_tx(self, line: int, what: str, severity: str = "error", extra: str = "") -> None:
        if not self.m.transactional:
            return
        self.add("non-transactional-statement", line,
                 f"{what} cannot run inside a transaction block, and this migration runs in one{extra}",
                 "move it to its own migration whose header says `-- transactional: false` "
                 "(goose: `-- +goose NO TRANSACTION`)", severity)

    def statement(self, stmt: Any, line: int) -> None:
        from pglast import ast, enums

        AT = enums.AlterTableType
        OT = enums.ObjectType
        if isinstance(stmt, (ast.CreateStmt,)):
            self.created.add(_relname(stmt.relation))
        elif isinstance(stmt, ast.CreateTableAsStmt):
            self.created.add(_relname(stmt.into.rel))
        elif isinstance(stmt, ast.RenameStmt):
            self.rename(stmt, line, OT)
        elif isinstance(stmt, ast.IndexStmt):
            table = _relname(stmt.relation)
            if stmt.concurrent:
                self.non_tx(line, "CREATE INDEX CONCURRENTLY")
            elif self.existing(stmt.relation):
                name = f" {stmt.idxname}" if stmt.idxname else ""
                self.add("index-not-concurrent", line,
                         f"CREATE INDEX{name} on existing table {table} without CONCURRENTLY blocks writes "
                         "to it until the index is built",
                         f"use CREATE INDEX CONCURRENTLY{name} ON {_qualified(stmt.relation)} ... in a migration "
                         "with `-- transactional: false` (one statement per such migration)")
        elif isinstance(stmt, ast.AlterTableStmt):
            self.alter_table(stmt, line, AT)
        elif isinstance(stmt, ast.DropStmt):
            if stmt.concurrent:
                self.non_tx(line, "DROP INDEX CONCURRENTLY")
            if stmt.removeType == OT.OBJECT_TABLE:
                for obj in stmt.objects or ():
                    table = getattr(obj[-1], "sval", None)
                    if table and table not in self.created and self.compat_mode is not None:
                        self.add("drop-table", line,
                                 f"DROP TABLE {table}: a dropped table cannot be shimmed; consumers pinned at earlier "
                                 "versions (compat schemas) lose it at commit",
                                 f"stop every consumer reading {table} first (`migrate verify --consumer` with their "
                                 "contracts), or rename it away (`ALTER TABLE ... RENAME TO`, shimmed) and drop it "
                                 "after the window", "warning")
                    shim = self.shim_exposing(table, None) if table else None
                    if shim:
                        self.add("shim-exposed-column", line,
                                 f"DROP TABLE {table}: active shim {shim.name} still exposes it in schema {shim.compat_schema}",
                                 f"drop the shim first (`migrate shims drop {shim.name}`) once its consumers "
                                 "have moved, or wait for it to expire")
        elif isinstance(stmt, ast.ReindexStmt):
            if _has_concurrently(stmt.params):
                self.non_tx(line, "REINDEX ... CONCURRENTLY")
        elif isinstance(stmt, ast.VacuumStmt):
            if stmt.is_vacuumcmd:  # ANALYZE alone is allowed in a transaction block
                self.non_tx(line, "VACUUM")
        elif isinstance(stmt, (ast.CreatedbStmt, ast.DropdbStmt)):
            self.non_tx(line, "CREATE DATABASE" if isinstance(stmt, ast.CreatedbStmt) else "DROP DATABASE")
        elif isinstance(stmt, ast.AlterSystemStmt):
            self.non_tx(line, "ALTER SYSTEM")
        elif isinstance(stmt, (ast.CreateTableSpaceStmt, ast.DropTableSpaceStmt)):
            self.non_tx(line, "CREATE/DROP TABLESPACE")
        elif isinstance(stmt, ast.AlterEnumStmt) and stmt.newVal is not None and stmt.oldVal is None:
            if self.server_version is None:
                self.non_tx(line, "ALTER TYPE ... ADD VALUE", "warning",
                            " on PostgreSQL before 12 (server version unknown: lint with --database)")
            elif self.server_version < 120000:
                self.non_tx(line, "ALTER TYPE ... ADD VALUE", "error", f" on this server ({self.server_version})")
        elif isinstance(stmt, ast.TransactionStmt):
            if self.m.transactional:
                self.add("non-transactional-statement", line,
                         "transaction control (BEGIN/COMMIT/ROLLBACK) inside a migration the runner already "
                         "wraps in a transaction: a COMMIT here would commit half the migration without its "
                         "bookkeeping", "remove it; use `-- transactional: false` if the migration must manage "
                         "transactions itself")

    def rename(self, stmt: Any, line: int, OT: Any) -> None:
        table = _relname(stmt.relation)
        if stmt.renameType == OT.OBJECT_COLUMN and stmt.relationType in (OT.OBJECT_TABLE, OT.OBJECT_FOREIGN_TABLE):
            if not self.existing(stmt.relation):
                return
            if (table, stmt.subname, stmt.newname) in self.declared or self.compat_mode == "auto":
                return
            self.add("rename-without-compat", line,
                     f"column {table}.{stmt.subname} renamed to {stmt.newname} with no compat declaration: "
                     f"running consumers that read {stmt.subname} (or scan SELECT * strictly) break at commit",
                     f"add to the migration's header: `-- compat: rename {_qualified(stmt.relation)}."
                     f"{stmt.subname} -> {stmt.newname} window=14d`")
        elif stmt.renameType in (OT.OBJECT_TABLE, OT.OBJECT_VIEW) and stmt.relation is not None:
            if not self.existing(stmt.relation):
                return
            if stmt.renameType == OT.OBJECT_TABLE and (
                    self.compat_mode == "auto" or ("rename-table", table, stmt.newname) in self.windows):
                return
            self.add("rename-without-compat", line,
                     f"table {table} renamed to {stmt.newname}: every consumer still using {table} breaks at "
                     "commit",
                     f"add to the migration's header: `-- compat: rename-table {_qualified(stmt.relation)} -> "
                     f"{stmt.newname} window=14d` (a view under the old name for pinned consumers), or "
                     "`-- lint: disable=rename-without-compat` if nothing reads it")

    def alter_table(self, stmt: Any, line: int, AT: Any) -> None:
        from pglast import ast, enums

        table = _relname(stmt.relation)
        existing = self.existing(stmt.relation)
        for cmd in stmt.cmds or ():
            if cmd.subtype == AT.AT_AddColumn and isinstance(cmd.def_, ast.ColumnDef) and existing:
                col = cmd.def_
                kinds = {c.contype for c in (col.constraints or ())}
                CT = enums.ConstrType
                not_null = col.is_not_null or CT.CONSTR_NOTNULL in kinds or CT.CONSTR_PRIMARY in kinds
                filled = (col.raw_default is not None or kinds & {CT.CONSTR_DEFAULT, CT.CONSTR_IDENTITY,
                                                                   CT.CONSTR_GENERATED})
                if not_null and not filled:
                    self.add("not-null-without-default", line,
                             f"ADD COLUMN {table}.{col.colname} NOT NULL without DEFAULT fails as soon as "
                             f"{table} has a row (and compat views hide it from older versions, so their inserts "
                             "would fail too)",
                             f"add a DEFAULT (constant defaults are metadata-only since PostgreSQL 11), or add "
                             f"{col.colname} nullable, backfill it, then enforce NOT NULL in a later migration")
                self.window(line, "add", stmt.relation, col.colname, "ADD COLUMN")
            elif cmd.subtype == AT.AT_ColumnDefault and cmd.def_ is None and existing:
                self.add("hidden-column-needs-default", line,
                         f"ALTER COLUMN {table}.{cmd.name} DROP DEFAULT: if the column is NOT NULL and hidden from "
                         "older versions' compat views, their inserts fail from now on",
                         "keep the default while any compat window on the table is open (`migrate shims list`)",
                         "warning")
            elif cmd.subtype == AT.AT_SetNotNull and existing:
                self.add("set-not-null", line,
                         f"SET NOT NULL on {table}.{cmd.name} scans the whole table under an ACCESS EXCLUSIVE "
                         "lock (reads and writes wait)",
                         f"ALTER TABLE {table} ADD CONSTRAINT {table}_{cmd.name}_not_null CHECK ({cmd.name} IS NOT "
                         f"NULL) NOT VALID; then in a later migration VALIDATE CONSTRAINT (no exclusive lock) and "
                         "SET NOT NULL (PostgreSQL 12+ skips the scan thanks to the valid constraint)")
            elif cmd.subtype in (AT.AT_DropColumn, AT.AT_AlterColumnType):
                shim = self.shim_exposing(table, cmd.name)
                if shim:
                    verb = "DROP COLUMN" if cmd.subtype == AT.AT_DropColumn else "ALTER COLUMN ... TYPE"
                    self.add("shim-exposed-column", line,
                             f"{verb} {table}.{cmd.name}: active shim {shim.name} still exposes this column in "
                             f"schema {shim.compat_schema}",
                             f"wait until consumers leave {shim.compat_schema}, then `migrate shims drop {shim.name}` "
                             "before this migration")
                kind = "drop" if cmd.subtype == AT.AT_DropColumn else "retype"
                self.window(line, kind, stmt.relation, cmd.name,
                            "DROP COLUMN" if kind == "drop" else "ALTER COLUMN ... TYPE of")
            elif cmd.subtype == AT.AT_DetachPartition and isinstance(cmd.def_, ast.PartitionCmd) \
                    and cmd.def_.concurrent:
                self.non_tx(line, "DETACH PARTITION ... CONCURRENTLY")


def _declared_shapes(migration: MigrationFile) -> set[tuple[str, str, str | None]]:
    """(kind, table, column or new table name) of the migration's add/drop/retype/rename-table directives."""
    found: set[tuple[str, str, str | None]] = set()
    for directive in migration.directives_named("compat"):
        if is_rename(directive.value):
            continue
        try:
            d = parse_shape(directive.value)
        except DeclarationError:
            continue
        found.add((d.kind, d.table, d.new if d.kind == "rename-table" else d.column))
    return found


def lint_migration(migration: MigrationFile, settings_disable: Sequence[str] = (),
                   renames: Sequence[dict[str, Any]] = (), shims: Sequence[Shim] = (),
                   server_version: int | None = None, compat_mode: str | None = None) -> list[LintFinding]:
    """Lint one SQL migration; raise MigrationFileError (exit 2) when pglast cannot parse it."""
    from pglast import parse_sql
    from pglast.parser import ParseError

    try:
        text: str | None = Path(migration.path).read_text(encoding="utf-8-sig")
    except OSError:
        text = None
    disabled = _file_disables(migration, text) | set(settings_disable)
    linter = _Linter(migration, disabled, _declared_renames(migration, renames), shims, server_version, compat_mode)
    for statement in migration.up:
        # Statement.line is the line of its first non-comment line; the text may start with comments.
        first = statement.line - leading_comment_lines(statement.sql)
        try:
            raws = parse_sql(statement.sql)
        except ParseError as err:
            message, location = (err.args + (None,))[:2]
            line = statement.line
            if isinstance(location, int):
                line = first + statement.sql.count("\n", 0, max(location, 0))
            raise MigrationFileError(migration.path, f"PostgreSQL parser (pglast): {message}", line) from None
        for raw in raws:
            offset = raw.stmt_location or 0
            # stmt_location may point at comments before the statement: skip them too.
            offset = skip_comments(statement.sql, offset)
            line = first + statement.sql.count("\n", 0, offset)
            linter.statement(raw.stmt, line)
    return linter.findings




def lint_migrations(migrations: Sequence[MigrationFile], settings_disable: Sequence[str] = (),
                    renames: Sequence[dict[str, Any]] = (), shims: Sequence[Shim] = (),
                    server_version: int | None = None, compat_mode: str | None = None) -> LintReport:
    """Lint several migrations (Python migrations are listed as skipped). ``compat_mode``: the
    project's ``[compat] mode`` (the CLI passes it); None leaves compat windows unchecked."""
    check_rule_names(settings_disable, "[lint] disable")
    report = LintReport()
    for migration in migrations:
        if migration.format == "python":
            report.skipped.append(migration.id)
            continue
        report.findings.extend(lint_migration(migration, settings_disable, renames, shims, server_version,
                                              compat_mode))
        report.linted.append(migration.id)
    return report


# --------------------------------------------------------------------------- with a database

def read_active_shims(db: Database) -> list[Shim]:
    """Active shims from the compat registry ([] when there is no registry)."""
    return Registry(db).shims("active")
