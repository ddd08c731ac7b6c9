"""Consumer contracts: check what a consumer's code reads, not a version number.

A contract file (TOML or JSON) says, per table, which columns a consumer
selects and whether it scans ``SELECT *`` strictly (the exact column set, as
sqlx does: an unknown column is "missing destination name ...", and a column
the struct expects but does not get leaves it silently empty):

    [consumer]
    name = "workflow-api 1.4 (017 code)"

    [tables.remediation_workflow_catalog]
    columns = ["workflow_id", "workflow_name", "execution_bundle"]
    strict_select_star = true

:func:`verify_consumers` checks each consumer against the live schema, first
directly (``search_path`` = the runner's schema), then through each active
compat shim (``search_path`` = ``compat_017,public``), and returns per
consumer either the ``search_path`` it must use or the precise reasons it
cannot be served ("container_image missing from remediation_workflow_catalog:
database is at 017; 018 is pending ...").

A bad contract file (unknown key, wrong type, a table that exists nowhere: not
in the database, not in a shim, not in any migration file) is a ConfigError
(exit 2) naming the file and the key.
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compat.declarations import declared_renames
from compat.dialects import for_database
from compat.model import Shim
from compat.registry import Registry
from runner import history
from runner.errors import ConfigError
from runner.sources import load_migrations

if TYPE_CHECKING:
    from runner.db import Database

_TOP_KEYS = {"consumer", "tables"}
_CONSUMER_KEYS = {"name", "description"}
_TABLE_KEYS = {"columns", "strict_select_star"}


# --------------------------------------------------------------------------- contract files

@dataclass(frozen=True)
class TableNeed:
    table: str
    columns: tuple[str, ...]
    strict_select_star: bool


@dataclass(frozen=True)
class Contract:
    path: str
    name: str
    tables: tuple[TableNeed, ...]


def load_contract(path: Path) -> Contract:
    """Read and validate one contract file; ConfigError names the file and the key."""
    shown = str(path)
    try:
        raw = path.read_bytes().decode("utf-8-sig")
    except OSError as err:
        raise ConfigError(f"{shown}: cannot read contract file: {err.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{shown}: contract file is not UTF-8") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{shown}:{err.lineno}: invalid JSON: {err.msg}") from None
    elif path.suffix.lower() == ".toml":
        try:
            data = tomllib.loads(raw)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{shown}: invalid TOML: {err}") from None
    else:
        raise ConfigError(f"{shown}: contract files must end in .toml or .json")
    if not isinstance(data, dict):
        raise ConfigError(f"{shown}: expected a table/object at the top level")
    _known(data, _TOP_KEYS, shown, "")
    consumer = data.get("consumer", {})
    if not isinstance(consumer, dict):
        raise ConfigError(f"{shown}: consumer: expected a table with 'name'")
    _known(consumer, _CONSUMER_KEYS, shown, "consumer.")
    name = consumer.get("name", path.stem)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{shown}: consumer.name: expected a non-empty string")
    tables = data.get("tables")
    if not isinstance(tables, dict) or not tables:
        raise ConfigError(f"{shown}: tables: expected at least one [tables.<name>] entry")
    needs = []
    for table, spec in tables.items():
        where = f"tables.{table}"
        if not isinstance(spec, dict):
            raise ConfigError(f"{shown}: {where}: expected a table with 'columns'")
        _known(spec, _TABLE_KEYS, shown, where + ".")
        columns = spec.get("columns")
        if not isinstance(columns, list) or not columns or not all(isinstance(c, str) and c for c in columns):
            raise ConfigError(f"{shown}: {where}.columns: expected a non-empty list of column names")
        if len(set(columns)) != len(columns):
            dup = next(c for c in columns if columns.count(c) > 1)
            raise ConfigError(f"{shown}: {where}.columns: '{dup}' is listed twice")
        strict = spec.get("strict_select_star", False)
        if not isinstance(strict, bool):
            raise ConfigError(f"{shown}: {where}.strict_select_star: expected true or false, got {strict!r}")
        needs.append(TableNeed(table, tuple(columns), strict))
    return Contract(shown, name, tuple(needs))


def _known(table: dict[str, Any], known: set[str], shown: str, prefix: str) -> None:
    for key in table:
        if key not in known:
            hint = difflib.get_close_matches(key, sorted(known), n=1)
            also = f" (did you mean '{hint[0]}'?)" if hint else f" (known: {', '.join(sorted(known))})"
            raise ConfigError(f"{shown}: {prefix}{key}: unknown key{also}")


# --------------------------------------------------------------------------- checking

@dataclass
class ConsumerResult:
    """``ok``: the database can serve the consumer; ``search_path`` it must use (PostgreSQL)."""

    consumer: str
    file: str
    ok: bool
    search_path: str | None = None
    via_shim: str | None = None
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    relations: dict[str, str] = field(default_factory=dict)  # SQLite: table -> view to read instead

    def as_text(self) -> str:
        if self.ok:
            if self.relations:
                where = ", ".join(f"read {v} instead of {t}" for t, v in self.relations.items())
                line = f"ok    {self.consumer} ({self.file}): {where}"
            else:
                via = f" (through shim {self.via_shim})" if self.via_shim else ""
                line = f"ok    {self.consumer} ({self.file}): search_path={self.search_path}{via}"
        else:
            line = f"FAIL  {self.consumer} ({self.file}): " + "; ".join(self.reasons)
        return "\n".join([line] + [f"      note: {n}" for n in self.notes])


@dataclass
class ContractReport:
    results: list[ConsumerResult]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "consumers": [asdict(r) for r in self.results]}

    def as_text(self) -> str:
        return "\n".join(r.as_text() for r in self.results)


@dataclass
class _History:
    """What the reasons need to know about migrations: where the database is, what is pending."""

    at: str | None  # version label (or id) of the last applied migration
    applied: list[Any]  # MigrationFile
    pending: list[Any]  # MigrationFile


def _label(m: Any) -> str:
    return m.version_label or m.id


def _mentions(migrations: Sequence[Any], table: str, column: str | None) -> Any | None:
    """The last migration whose statements mention ``table`` (and ``column``) as whole words."""
    words = [re.compile(r"(?<![\w$])" + re.escape(w) + r"(?![\w$])", re.I) for w in (table, column) if w]
    for m in reversed(list(migrations)):
        text = "\n".join(s.sql for s in m.up)
        text += "\n".join(d.value for d in m.directives)
        if all(w.search(text) for w in words):
            return m
    return None


def _introduced_by(migrations: Sequence[Any], table: str, column: str) -> Any | None:
    """The last migration that adds ``column`` to ``table`` (ADD COLUMN, RENAME ... TO, CREATE TABLE),
    else the last one that mentions both."""
    col = r"\"?" + re.escape(column) + r"\"?(?![\w$])"
    tab = re.compile(r"(?<![\w$])" + re.escape(table) + r"(?![\w$])", re.I)
    adds = re.compile(r"(add\s+(column\s+)?(if\s+not\s+exists\s+)?" + col + r"|rename\s+(column\s+)?\S+\s+to\s+"
                      + col + r")", re.I)
    creates = re.compile(r"create\s+table\s+(if\s+not\s+exists\s+)?(\S+\.)?\"?" + re.escape(table) + r"\"?\s*\(", re.I)
    mention = re.compile(r"(?<![\w$])" + re.escape(column) + r"(?![\w$])", re.I)
    for m in reversed(list(migrations)):
        for s in m.up:
            if tab.search(s.sql) and (adds.search(s.sql) or (creates.search(s.sql) and mention.search(s.sql))):
                return m
        if any(d.new == column and d.table == table for d in declared_renames(m)):
            return m
    return _mentions(migrations, table, column)


def _renamed_away(migrations: Sequence[Any], table: str, column: str) -> tuple[Any, str] | None:
    pattern = re.compile(r"rename\s+(?:column\s+)?\"?" + re.escape(column) + r"\"?\s+to\s+\"?(\w+)", re.I)
    for m in reversed(list(migrations)):
        declared = next((d for d in declared_renames(m) if d.old == column and d.table == table), None)
        if declared is not None:
            return m, declared.new
        for s in m.up:
            if re.search(r"(?<!\w)" + re.escape(table) + r"(?!\w)", s.sql):
                found = pattern.search(s.sql)
                if found:
                    return m, found.group(1)
    return None


def _problems(need: TableNeed, have: list[str] | None, hist: _History, shimmed: bool) -> list[str]:
    """Why ``have`` (the relation's columns, None when absent) cannot serve ``need``."""
    table = need.table
    if have is None:
        creator = _mentions(hist.pending, table, None)
        if creator is not None:
            return [f"table {table} missing: database is at {hist.at or 'nothing applied'}; "
                    f"{_label(creator)} is pending ({creator.id}): run `migrate up`"]
        return [f"table {table} missing"]
    reasons = []
    for col in need.columns:
        if col in have:
            continue
        adder = _introduced_by(hist.pending, table, col) if _mentions(hist.pending, table, col) else None
        if adder is not None:
            pending_ids = ", ".join(_label(m) for m in hist.pending[: hist.pending.index(adder) + 1])
            reasons.append(f"{col} missing from {table}: database is at {hist.at or 'nothing applied'}; "
                           f"{pending_ids} {'is' if pending_ids.count(',') == 0 else 'are'} pending "
                           f"({adder.id} adds it): run `migrate up`")
            continue
        renamed = _renamed_away(hist.applied, table, col)
        if renamed is not None and not shimmed:
            m, new = renamed
            reasons.append(f"{col} missing from {table}: {_label(m)} ({m.id}) renamed it to {new} and no active "
                           f"shim presents the old name: update the consumer to read {new}")
            continue
        reasons.append(f"{col} missing from {table}")
    if need.strict_select_star:
        for col in have:
            if col in need.columns:
                continue
            adder = _introduced_by(hist.applied, table, col)
            origin = f" (added by {_label(adder)}, {adder.id})" if adder is not None else ""
            reasons.append(f"strict SELECT * on {table} would get extra column {col}{origin}: sqlx fails with "
                           f"\"missing destination name {col}\"")
    return reasons


def check_contracts(db: Database, contracts: Sequence[Contract], migrations: Sequence[Any],
                    applied_ids: Sequence[str], sqlite_view_template: str = "{table}__v{version}") -> ContractReport:
    """Check each contract against the live schema (directly, then through active shims)."""
    applied_set = set(applied_ids)
    applied = [m for m in migrations if m.id in applied_set]
    hist = _History(at=_label(applied[-1]) if applied else None, applied=applied,
                    pending=[m for m in migrations if m.id not in applied_set])
    shims = Registry(db).shims("active")
    now = db.now()
    through_search_path = for_database(db).search_path
    base = db.schema or "main"
    shim_schemas = sorted({s.compat_schema for s in shims if s.compat_schema}, reverse=True)
    columns = db.dialect.relation_columns(db, [base, *shim_schemas])
    known_anywhere = {rel for (_, rel) in columns}
    results = []
    for contract in contracts:
        for need in contract.tables:
            if need.table not in known_anywhere and _mentions(migrations, need.table, None) is None:
                hint = difflib.get_close_matches(need.table, sorted(known_anywhere), n=1)
                also = f" (did you mean '{hint[0]}'?)" if hint else ""
                raise ConfigError(
                    f"{contract.path}: tables.{need.table}: unknown table: no table or view {need.table} in "
                    f"{'schema ' + base if db.schema else 'the database'}, in any shim, or in any "
                    f"migration file{also}")
        results.append(_check_one(contract, columns, base, shim_schemas, shims, hist, through_search_path,
                                  sqlite_view_template, now))
    return ContractReport(results)


def _check_one(contract: Contract, columns: dict[tuple[str, str], list[str]], base: str,
               shim_schemas: Sequence[str], shims: Sequence[Shim], hist: _History, through_search_path: bool,
               sqlite_view_template: str, now: datetime) -> ConsumerResult:
    result = ConsumerResult(contract.name, contract.path, ok=False)
    direct = [p for need in contract.tables
              for p in _problems(need, columns.get((base, need.table)), hist, shimmed=False)]
    if not direct:
        result.ok = True
        result.search_path = base if through_search_path else None
        return result
    if through_search_path:  # shims in compat schemas, reached by putting one first in the search_path
        for shim_schema in shim_schemas:
            path = [shim_schema, base]
            ok = True
            for need in contract.tables:
                have = columns.get((shim_schema, need.table), columns.get((base, need.table)))
                if _problems(need, have, hist, shimmed=True):
                    ok = False
                    break
            if ok:
                used = [s for s in shims if s.compat_schema == shim_schema]
                result.ok = True
                result.search_path = ",".join(path)
                result.via_shim = ", ".join(s.name for s in used)
                for s in used:
                    if s.expired(now):
                        result.notes.append(f"shim {s.name} expired at {s.expires_at}: it can be dropped at any "
                                            "time; upgrade this consumer")
                    else:
                        result.notes.append(f"shim {s.name} expires at {s.expires_at}: upgrade before then")
                return result
    else:  # no schemas: shims are views named by the template, read instead of the table
        views = {}
        for need in contract.tables:
            if not _problems(need, columns.get((base, need.table)), hist, shimmed=False):
                continue
            for (_, rel), have in columns.items():
                if _is_sqlite_shim(rel, need.table, sqlite_view_template) and \
                        not _problems(need, have, hist, shimmed=True):
                    views[need.table] = rel
                    break
            else:
                break
        else:
            result.ok = True
            result.relations = views
            return result
    result.reasons = direct
    return result


def _is_sqlite_shim(name: str, table: str, template: str) -> bool:
    pattern = re.escape(template).replace(re.escape("{table}"), re.escape(table)).replace(
        re.escape("{version}"), r"[0-9A-Za-z_.-]+")
    return re.fullmatch(pattern, name) is not None


def load_contracts(paths: Sequence[Path | str]) -> list[Contract]:
    return [load_contract(Path(p)) for p in paths]


def verify_consumers(db: Any, settings: Any, contract_files: Sequence[Contract | Path | str]) -> ContractReport:
    """The entry point for ``migrate verify --consumer FILE``: files are read before the database is touched
    (Contract objects, e.g. from runner.model_contracts, are taken as they are)."""
    contracts = [c if isinstance(c, Contract) else load_contract(Path(c)) for c in contract_files]
    migrations = load_migrations(settings.migrations, settings.sources.get("migrations"))
    applied = [a.migration_id for a in history.read_applied(db)]
    return check_contracts(db, contracts, migrations, applied,
                           settings.compat.sqlite_view_template)
