"""``migrate adopt yoyo|goose|golang-migrate|alembic``: take over a database from another tool.

The other tool's history is read and mapped onto the migration files (by
migration id for yoyo, by numeric version for the others); the matching
migrations are recorded as applied, with their
checksums, WITHOUT running them. Dry run by default (the mapping is printed);
``--yes`` applies it, in one transaction, under the runner's lock, and stores
a schema snapshot as the baseline for ``migrate doctor``.

Refusals (exit 1), each saying what to check:
- the history names a version (or id) that has no file (the files are not the
  ones this database was built from, or a file was deleted);
- a gap: a file that comes before the newest applied one but which the history
  does not list as applied (``migrate up`` would run it out of order, possibly a
  second time); ``--allow-gaps`` leaves such files pending;
- golang-migrate's ``dirty`` flag (a migration failed half-way).

Migrations the runner already records are left as they are (listed as
"already recorded"), so adopting again after `migrate up` is harmless.

A missing history table is a usage error (exit 2).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from runner import history as runner_history, yoyo_adapter
from runner.db import open_database, transaction
from runner.errors import MigrateError, NOT_AT_HEAD, UsageError
from runner.lock import runner_lock
from runner.logs import get_logger
from runner.migration import MigrationFile
from runner.snapshot import store_snapshot, take_snapshot
from runner.sources import load_migrations

log = get_logger("migrate.adopt")

TOOLS = ("yoyo", "goose", "golang-migrate", "alembic")
DEFAULT_TABLES = {"yoyo": yoyo_adapter.MIGRATION_TABLE, "goose": "goose_db_version",
                  "golang-migrate": "schema_migrations", "alembic": "alembic_version"}


@dataclass(frozen=True)
class ForeignTool:
    """Another migration tool whose history table the runner recognises, and the way to take it over."""

    table: str
    tool: str
    fix: str


FOREIGN_TOOLS = (
    ForeignTool("goose_db_version", "goose", "`migrate adopt goose --yes`"),
    ForeignTool("schema_migrations", "golang-migrate (or Rails)", "`migrate adopt golang-migrate --yes`"),
    ForeignTool("alembic_version", "Alembic", "`migrate adopt alembic --yes`"),
    ForeignTool(yoyo_adapter.MIGRATION_TABLE, "yoyo's own CLI", "`migrate adopt yoyo --yes`"),
    ForeignTool("flyway_schema_history", "Flyway", "`migrate mark ID...` (the versions Flyway applied)"),
)


def foreign_tool(db: Any) -> ForeignTool | None:
    """The first other tool whose history table exists in the runner's schema, or None."""
    return next((tool for tool in FOREIGN_TOOLS if db.dialect.plain_table_exists(db, tool.table)), None)


def foreign_history(db: Any) -> ForeignTool | None:
    """Another tool's history that holds rows (the database was migrated with it), or None.

    yoyo's own table is left out: the runner writes it too (see runner.history)."""
    for tool in FOREIGN_TOOLS:
        if tool.table == yoyo_adapter.MIGRATION_TABLE or not db.dialect.plain_table_exists(db, tool.table):
            continue
        if db.dialect.read_untrusted(db, f"SELECT 1 FROM {db.qualify(tool.table)} LIMIT 1"):
            return tool
    return None


class AdoptRefused(MigrateError):
    """The other tool's history and the files disagree; nothing was recorded."""

    exit_code = NOT_AT_HEAD


@dataclass
class ForeignHistory:
    """What another tool says is applied.

    ``ids``: applied migration ids (yoyo, whose ids are the file names);
    ``versions``: applied numeric versions (goose); ``upto``: every file up to
    this version is applied (golang-migrate, numeric alembic); ``revision``:
    an alembic revision id matched against file names.
    """

    tool: str
    table: str
    ids: list[str] | None = None
    versions: list[int] = field(default_factory=list)
    upto: int | None = None
    revision: str | None = None
    dirty: bool = False
    detail: dict[int | str, str] = field(default_factory=dict)  # version (id for yoyo) -> where it came from


@dataclass
class AdoptEntry:
    version: int | None
    migration_id: str
    path: str
    checksum: str
    source: str


@dataclass
class AdoptionPlan:
    tool: str
    table: str
    entries: list[AdoptEntry] = field(default_factory=list)  # to record
    already_recorded: list[str] = field(default_factory=list)
    stays_pending: list[str] = field(default_factory=list)
    gaps: list[str] = field(default_factory=list)  # left pending with --allow-gaps
    applied: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def as_text(self) -> str:
        head = (f"adopted from {self.tool} ({self.table}): recorded {len(self.entries)} migration(s) as applied"
                if self.applied else
                f"{self.table} ({self.tool}) -> migrations: dry run, nothing recorded; apply with `migrate adopt "
                f"{self.tool} --yes`")
        lines = [head]
        for e in self.entries:
            lines.append(f"  {e.source:<28} -> {e.migration_id}  (sha256 {e.checksum[:12]})")
        for mid in self.already_recorded:
            lines.append(f"  already recorded by the runner: {mid}")
        for mid in self.gaps:
            lines.append(f"  gap, left pending (--allow-gaps): {mid}")
        if self.stays_pending:
            lines.append("  stays pending (`migrate up` applies it): " + ", ".join(self.stays_pending))
        return "\n".join(lines)


# --------------------------------------------------------------------------- reading the other tool

def _table_columns(db: Any, table: str) -> list[str] | None:
    """Column names of ``table`` in the runner's schema, None when it does not exist."""
    return db.dialect.table_columns(db, table)


def _read(db: Any, sql: str) -> list[tuple[Any, ...]]:
    """Rows of another tool's table (another role may own it)."""
    return db.dialect.read_untrusted(db, sql)


def _require(db: Any, tool: str, table: str, needed: Sequence[str]) -> list[str]:
    columns = _table_columns(db, table)
    where = f" in schema {db.schema}" if db.schema else ""
    if columns is None:
        raise UsageError(f"adopt {tool}: no table {table}{where}: is this a {tool} database? "
                         f"(use --table if {tool} was configured with another table name)")
    missing = [c for c in needed if c not in columns]
    if missing:
        raise UsageError(f"adopt {tool}: table {table}{where} has no column(s) {', '.join(missing)}: "
                         f"not the table {tool} writes (columns: {', '.join(columns)})")
    return columns


def read_yoyo(db: Any, table: str = "_yoyo_migration") -> ForeignHistory:
    """Every row of yoyo's ``_yoyo_migration`` (schema version 2, yoyo 6 and later), in the order applied."""
    columns = _table_columns(db, table)
    if columns is not None and "migration_id" not in columns and "id" in columns:
        raise UsageError(f"adopt yoyo: {table} is in yoyo's old layout (before yoyo 6): run any yoyo command against "
                         "this database once (`yoyo list` upgrades yoyo's tables), then adopt")
    _require(db, "yoyo", table, ("migration_hash", "migration_id", "applied_at_utc"))
    rows = _read(db, f"SELECT migration_id, applied_at_utc FROM {db.qualify(table)} ORDER BY applied_at_utc, migration_id")
    history = ForeignHistory("yoyo", table, ids=[])
    for migration_id, applied_at in rows:
        history.ids.append(migration_id)  # type: ignore[union-attr]
        history.detail[migration_id] = f"yoyo, applied {str(applied_at)[:16]}"
    return history


def read_goose(db: Any, table: str = "goose_db_version") -> ForeignHistory:
    """Latest row per version_id; applied when that row has is_applied (version 0 is goose's own)."""
    _require(db, "goose", table, ("id", "version_id", "is_applied"))
    rows = _read(db, f"SELECT version_id, is_applied, id FROM {db.qualify(table)} ORDER BY version_id, id")
    latest: dict[int, tuple[bool, int]] = {}
    for version, is_applied, row_id in rows:
        latest[int(version)] = (bool(is_applied), int(row_id))
    history = ForeignHistory("goose", table)
    for version, (is_applied, row_id) in sorted(latest.items()):
        if version == 0 or not is_applied:
            continue
        history.versions.append(version)
        history.detail[version] = f"goose version {version}"
    return history


def read_golang_migrate(db: Any, table: str = "schema_migrations") -> ForeignHistory:
    columns = _table_columns(db, table)
    if columns is not None and "dirty" not in columns and columns == ["version"]:
        raise UsageError(f"adopt golang-migrate: {table} has a single 'version' column and no 'dirty' column: "
                         "that is Rails' table, not golang-migrate's")
    _require(db, "golang-migrate", table, ("version", "dirty"))
    rows = _read(db, f"SELECT version, dirty FROM {db.qualify(table)}")
    if len(rows) > 1:
        raise AdoptRefused(f"adopt golang-migrate: {table} has {len(rows)} rows; golang-migrate keeps exactly one")
    history = ForeignHistory("golang-migrate", table)
    if rows:
        history.upto = int(rows[0][0])
        history.dirty = bool(rows[0][1])
    return history


def read_alembic(db: Any, table: str = "alembic_version") -> ForeignHistory:
    _require(db, "alembic", table, ("version_num",))
    rows = [r[0] for r in _read(db, f"SELECT version_num FROM {db.qualify(table)}")]
    if len(rows) > 1:
        raise AdoptRefused(f"adopt alembic: {table} has {len(rows)} heads ({', '.join(rows)}): merge the "
                           "branches with alembic first (`alembic merge`), then adopt")
    history = ForeignHistory("alembic", table)
    if rows:
        if re.fullmatch(r"\d+", rows[0]):
            history.upto = int(rows[0])
        else:
            history.revision = rows[0]
    return history


READERS = {"yoyo": read_yoyo, "goose": read_goose, "golang-migrate": read_golang_migrate, "alembic": read_alembic}


# --------------------------------------------------------------------------- mapping

def plan_adoption(history: ForeignHistory, migrations: Sequence[MigrationFile], recorded: Sequence[str],
                  allow_gaps: bool = False) -> AdoptionPlan:
    """Map ``history`` onto ``migrations`` (in apply order); raise AdoptRefused on any disagreement."""
    tool, table = history.tool, history.table
    if history.dirty:
        raise AdoptRefused(
            f"adopt {tool}: {table} is dirty at version {history.upto}: golang-migrate stopped half-way through "
            f"that migration. Check which of its statements took effect, finish or undo them by hand, then clear "
            f"the flag (`migrate force {history.upto}` with golang-migrate's CLI, or "
            f"UPDATE {table} SET dirty = false) and run adopt again")
    by_version = {m.version: m for m in migrations if m.version is not None}
    if history.ids is not None:
        return _plan(history, migrations, recorded, allow_gaps, _ids_with_files(history, migrations))
    applied_versions: list[int]
    if history.revision is not None:
        match = [m for m in migrations if history.revision in m.id]
        if len(match) != 1:
            raise AdoptRefused(
                f"adopt {tool}: {table} is at revision {history.revision}, and "
                f"{'no' if not match else str(len(match))} migration file name(s) contain that id: name the "
                f"file of each alembic revision with a numeric prefix and its revision id "
                f"(e.g. 017_{history.revision}_add.sql)")
        cut = migrations.index(match[0])
        applied_versions = []
        chosen = list(migrations[: cut + 1])
        unversioned = [m.id for m in chosen if m.version is None]
        if unversioned:
            raise AdoptRefused(f"adopt {tool}: files without a numeric version before {match[0].id}: "
                               f"{', '.join(unversioned)}")
        applied_versions = [m.version for m in chosen]  # type: ignore[misc]
        for v in applied_versions:
            history.detail[v] = f"alembic <= {history.revision}"
    elif history.upto is not None:
        if history.upto not in by_version:
            raise AdoptRefused(
                f"adopt {tool}: {table} says version {history.upto} is applied, but no migration file has version "
                f"{history.upto} (files: {_versions_text(by_version)}): these are not the files this database "
                "was built from")
        applied_versions = sorted(v for v in by_version if v <= history.upto)
        for v in applied_versions:
            history.detail[v] = f"{tool} <= {history.upto}"
    else:
        applied_versions = list(history.versions)
    no_file = [v for v in applied_versions if v not in by_version]
    if no_file:
        raise AdoptRefused(
            f"adopt {tool}: {table} records version(s) {', '.join(map(str, no_file))} as applied, but no "
            f"migration file has {'that version' if len(no_file) == 1 else 'those versions'} "
            f"(files: {_versions_text(by_version)}): restore the missing file(s) before adopting")
    return _plan(history, migrations, recorded, allow_gaps, {by_version[v].id for v in applied_versions})


def _ids_with_files(history: ForeignHistory, migrations: Sequence[MigrationFile]) -> set[str]:
    on_disk = {m.id for m in migrations}
    no_file = [i for i in history.ids or () if i not in on_disk]
    if no_file:
        raise AdoptRefused(
            f"adopt {history.tool}: {history.table} records {', '.join(no_file)} as applied, but the migrations "
            f"folder has no file with {'that id' if len(no_file) == 1 else 'those ids'}: restore the missing "
            "file(s) before adopting (these may not be the files this database was built from)")
    return set(history.ids or ())


def _plan(history: ForeignHistory, migrations: Sequence[MigrationFile], recorded: Sequence[str], allow_gaps: bool,
          applied: set[str]) -> AdoptionPlan:
    """The plan once the applied migrations are known: record them, unless a gap says otherwise."""
    tool, table = history.tool, history.table
    newest = max((i for i, m in enumerate(migrations) if m.id in applied), default=None)
    recorded_set = set(recorded)
    plan = AdoptionPlan(tool, table)
    gaps: list[MigrationFile] = []
    for i, m in enumerate(migrations):
        if m.id in applied:
            if m.id in recorded_set:
                plan.already_recorded.append(m.id)
            else:
                key = m.id if history.ids is not None else m.version
                plan.entries.append(AdoptEntry(m.version, m.id, m.path, m.checksum,
                                               history.detail.get(key, f"version {m.version}")))  # type: ignore[arg-type]
        elif m.id in recorded_set:
            plan.already_recorded.append(m.id)  # applied by the runner (after an earlier adoption, or marked)
        elif newest is not None and i < newest:
            gaps.append(m)
        else:
            plan.stays_pending.append(m.id)
    if gaps:
        names = ", ".join(m.id for m in gaps)
        last = migrations[newest]  # type: ignore[index]
        label = last.id if history.ids is not None else f"version {last.version}"
        if not allow_gaps:
            raise AdoptRefused(
                f"adopt {tool}: {table} has a gap: {names} {'is' if len(gaps) == 1 else 'are'} not applied but "
                f"{label} is. Adopting would leave {'it' if len(gaps) == 1 else 'them'} pending and "
                "`migrate up` would run it after newer migrations (or a second time, if it was applied outside "
                f"{tool}). Check the schema: if the changes are there, record them too with "
                f"`migrate mark {' '.join(m.id for m in gaps)}` after adopting with --allow-gaps; if not, "
                "re-run adopt with --allow-gaps to leave them pending")
        plan.gaps = [m.id for m in gaps]
    return plan


def _versions_text(by_version: dict[int | None, MigrationFile]) -> str:
    versions = sorted(v for v in by_version if v is not None)
    if not versions:
        return "none with a numeric version"
    if len(versions) > 6:
        return f"{len(versions)} versions from {versions[0]} to {versions[-1]}"
    return ", ".join(map(str, versions))


# --------------------------------------------------------------------------- doing it

def adopt(settings: Any, tool: str, *, apply: bool = False, table: str | None = None,
          allow_gaps: bool = False) -> AdoptionPlan:
    """Read ``tool``'s history, map it, and (with ``apply``) record the mapping."""
    if tool not in READERS:
        raise UsageError(f"adopt: unknown tool {tool!r} (supported: {', '.join(TOOLS)})")
    migrations = load_migrations(settings.migrations, settings.sources.get("migrations"))
    with open_database(settings) as db:
        foreign = READERS[tool](db, table or DEFAULT_TABLES[tool])
        recorded = [a.migration_id for a in runner_history.read_applied(db)]
        plan = plan_adoption(foreign, migrations, recorded, allow_gaps)
        if not apply or not plan.entries:
            plan.applied = apply
            return plan
        with runner_lock(db, settings.lock_wait):
            runner_history.ensure_tables(db)
            recorded = [a.migration_id for a in runner_history.read_applied(db)]
            plan = plan_adoption(READERS[tool](db, table or DEFAULT_TABLES[tool]), migrations, recorded, allow_gaps)
            by_id = {m.id: m for m in migrations}
            with transaction(db):
                bookkeeping = runner_history.Bookkeeping(db)
                for entry in plan.entries:
                    runner_history.record(db, by_id[entry.migration_id], "mark", bookkeeping=bookkeeping,
                                          detail=f"adopted from {tool} ({plan.table}: {entry.source})")
                last = [m for m in migrations if m.id in set(recorded) | {e.migration_id for e in plan.entries}]
                if last:
                    store_snapshot(db, last[-1].id, take_snapshot(db, settings.compat.sqlite_view_template))
        plan.applied = True
        log.info("adopted", tool=tool, recorded=len(plan.entries))
    return plan
