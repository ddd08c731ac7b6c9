"""``migrate doctor``: what is wrong with this database, in plain words, each with its fix.

It compares the live schema with the snapshot stored after the last applied
migration (see :mod:`runner.snapshot`) and with the migration files, and
reads the shim registry and the runner's lock. It never writes anything.

Finding kinds (``severity`` "error" unless noted; exit 1 when any error):

- ``not-managed``: the runner has never touched this database (no
  ``_migrate_history``); names another tool's history table when there is one.
- ``lock-held``: the runner's advisory lock (PostgreSQL) or lock file (SQLite)
  is held, and by whom.
- ``pending``: migrations on disk not applied yet.
- ``modified-file`` / ``missing-file``: an applied migration's file changed or
  disappeared.
- ``effect-missing``: a migration is recorded as applied but what it did is
  gone from the schema (reverted by hand?).
- ``drift``: the schema changed outside migrations (tables, columns, types,
  nullability, indexes).
- ``shim-expired``: an active compat shim is past its expiry (by the database's clock).
- ``foreign-object``: a compat schema another role owns, or an object in one that is not a shim
  view of the runner (consumers routed there would use it).
- ``route-unusable``: a role routed to a compat schema cannot use it (no USAGE), so its sessions
  silently read the new tables.
- ``post-apply-pending``: a post-apply hook failed after migrations were applied; the next
  `migrate up` runs it again.
- ``no-snapshot`` / ``stale-snapshot`` (info): drift cannot be checked yet.
- ``pooler`` (info): a connection pooler (PgBouncer) is between the runner and the server, its
  pool mode, and what the runner does differently through it (docs/poolers.md).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from compat import routes
from compat.declarations import declared_renames
from compat.dialects import for_database
from compat.registry import Registry
from runner import adopt, history
from runner.db import Database, transaction
from runner.errors import UsageError
from runner.lock import holder
from runner.pooler import consequences
from runner.snapshot import Change, diff_snapshots, latest_snapshot, store_snapshot, take_snapshot
from runner.sources import load_folder
from runner.status import compute


@dataclass(frozen=True)
class Finding:
    """One problem: ``kind`` (machine name), ``object`` (what), ``detail`` (plain words), ``fix`` (a command)."""

    kind: str
    object: str
    detail: str
    fix: str
    severity: str = "error"

    def as_text(self) -> str:
        tag = self.kind.upper() if self.severity == "error" else f"{self.kind} (info)"
        return f"{tag}: {self.detail}\n    fix: {self.fix}"


@dataclass
class Diagnosis:
    findings: list[Finding] = field(default_factory=list)
    summary: str = ""

    @property
    def healthy(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    def as_list(self) -> list[dict[str, Any]]:
        return [asdict(f) for f in self.findings]

    def as_text(self) -> str:
        lines = [f.as_text() for f in self.findings]
        if self.healthy:
            lines.append(f"healthy: {self.summary}" if self.summary else "healthy")
        else:
            errors = sum(1 for f in self.findings if f.severity == "error")
            lines.append(f"{errors} problem(s) found")
        return "\n".join(lines)


# --------------------------------------------------------------------------- pieces

def _label(m: Any) -> str:
    return m.version_label or m.id


def lock_finding(db: Database) -> Finding | None:
    """Who holds the runner's lock, with enough to find them."""
    who = holder(db)
    if who is None:
        return None
    if who.lease_expires_at is not None:
        return Finding("lock-held", who.pid,
                       f"the migration lock is held by {who.describe()}: a migration run is in progress",
                       "wait for it; a runner that was killed stops renewing its lease, which then expires by itself")
    if who.lock_file:
        return Finding("lock-held", f"pid {who.pid}",
                       f"the migration lock file {who.lock_file} is held by pid {who.pid}: a migration run is in "
                       "progress", f"wait for it; if pid {who.pid} is stuck, stop it (the lock goes with it)")
    return Finding(
        "lock-held", f"pid {who.pid}",
        f"the migration lock is held by {who.describe()}; last statement: "
        f"{' '.join((who.query or '').split())[:120]!r}"
        + (": a migration run is in progress" if who.looks_like_runner else ""),
        f"wait for it; if that process is gone or stuck: SELECT pg_terminate_backend({who.pid}) "
        "(the lock is released with the session)")


def empty_folder_finding(folder: Any, applied: int) -> Finding:
    """The migrations folder has no migration: with a history, surely the wrong folder."""
    if applied:
        return Finding("empty-folder", str(folder),
                       f"the migrations folder {folder} has no migrations but the database has {applied} applied: "
                       "wrong --migrations path (or MIGRATE_MIGRATIONS, or config `migrations`)?",
                       "point --migrations at the folder the database was migrated from")
    return Finding("empty-folder", str(folder),
                   f"the migrations folder {folder} has no migrations: `migrate up` has nothing to apply",
                   "check the --migrations path, or write the first migration with `migrate new NAME`", "info")


def pooler_finding(db: Database) -> Finding | None:
    """A connection pooler in front of the server, and what changes through it (runner.pooler)."""
    found = db.facts.get("pooler")
    if found is None or not found.pooled:
        return None
    return Finding("pooler", found.mode, f"{found.describe()}: {consequences(found)}",
                   "nothing to do; see docs/poolers.md (set `pooler = \"session\"` or `\"transaction\"` when the "
                   "mode is assumed, or connect directly for non-transactional migrations)", "info")


def not_managed_finding(db: Database) -> Finding:
    """The database has no runner history: say what it has and how to take it over."""
    where = f"schema {db.schema}" if db.schema else "the database"
    tool = adopt.foreign_tool(db)
    if tool is not None:
        command = tool.fix.strip("`").replace(" --yes", "")
        return Finding(
            "not-managed", tool.table,
            f"the runner has never touched this database (no _migrate_history in {where}); it has {tool.table}, "
            f"so it was migrated with {tool.tool}",
            f"`{command}` shows how that history maps onto the migration files (dry run); add --yes to "
            "record it" if command.startswith("migrate adopt") else tool.fix)
    live = take_snapshot(db)
    if live["tables"] or live["views"]:
        return Finding(
            "not-managed", where,
            f"the runner has never touched this database (no _migrate_history in {where}) but it already has "
            f"{len(live['tables'])} table(s) and {len(live['views'])} view(s)",
            "record the migrations whose changes are already there with `migrate mark ID...` (or `migrate adopt "
            "goose|golang-migrate|alembic` if another tool built it), then `migrate up`")
    return Finding("not-managed", where,
                   f"the runner has never touched this database (no _migrate_history in {where}); it is empty",
                   "`migrate up` applies every migration")


_RENAME_SQL = r"rename\s+(?:column\s+)?\"?{old}\"?\s+to\s+\"?{new}\"?"


def _who_did(migrations: Sequence[Any], change: Change) -> Any | None:
    """The applied migration whose effect ``change`` undoes, or None (then it is drift)."""
    parts = change.object.split(".")
    table = parts[0]
    if change.change == "column-renamed":
        # expected column name = old (from the snapshot), live = new. A migration renamed live -> expected.
        expected, live = change.old or "", change.new or ""
        rx = re.compile(_RENAME_SQL.format(old=re.escape(live), new=re.escape(expected)), re.I)
        for m in reversed(list(migrations)):
            if any(d.table == table and d.old == live and d.new == expected for d in declared_renames(m)):
                return m
            if any(rx.search(s.sql) for s in m.up):
                return m
        return None
    if change.change in ("column-retyped", "nullability-changed"):
        column = re.escape(parts[1])
        verb = (r"(set\s+data\s+)?type" if change.change == "column-retyped" else r"(set|drop)\s+not\s+null")
        rx = re.compile(r"alter\s+(column\s+)?\"?" + column + r"\"?\s+" + verb, re.I)
        for m in reversed(list(migrations)):
            if any(rx.search(s.sql) and re.search(r"(?<!\w)" + re.escape(table) + r"(?!\w)", s.sql) for s in m.up):
                return m
        return None
    if change.change not in ("column-dropped", "table-dropped", "view-dropped", "index-dropped"):
        return None
    words = [table] if len(parts) == 1 else [table, parts[1]]
    if change.change == "index-dropped":
        words = [change.object]
    pats = [re.compile(r"(?<![\w$])" + re.escape(w) + r"(?![\w$])", re.I) for w in words]
    for m in reversed(list(migrations)):
        text = "\n".join(s.sql for s in m.up)
        if all(p.search(text) for p in pats):
            return m
    return None


def schema_findings(changes: Sequence[Change], applied: Sequence[Any]) -> list[Finding]:
    """Turn snapshot differences into findings; attribute undone effects to their migration."""
    findings: list[Finding] = []
    for change in changes:
        owner = _who_did(applied, change)
        if owner is not None:
            table = change.object.split(".")[0]
            if change.change == "column-renamed":
                what = f"column {table}.{change.new} is present and {change.old} is missing"
                fix = (f"if the revert was not intended: ALTER TABLE {table} RENAME COLUMN {change.new} TO "
                       f"{change.old} (what {owner.id} did)")
            else:
                what = change.detail
                fix = (f"if the revert was not intended, redo it as {owner.path} does; if it was, write a "
                       "migration that makes it and run `migrate up`")
            findings.append(Finding(
                "effect-missing", owner.id,
                f"{owner.id} is recorded as applied but its effect is missing: {what} (reverted by hand?)", fix))
        else:
            findings.append(Finding(
                "drift", change.object, f"changed outside migrations: {change.detail}"
                + (f" (was {change.old}, now {change.new})" if change.change == "index-changed" else ""),
                "undo it by hand, or keep it: write a migration that makes it (IF NOT EXISTS) and record the "
                "live schema with `migrate snapshot`"))
    return findings


def shim_findings(db: Database, settings: Any) -> list[Finding]:
    """Expired shims, compat schemas that are not the runner's, routes that do not work."""
    out = []
    registry = Registry(db)
    now = db.now()
    for shim in registry.shims("active"):
        if shim.expired(now):
            out.append(Finding(
                "shim-expired", shim.name,
                f"shim {shim.name} ({shim.change}"
                f"{', schema ' + shim.compat_schema if shim.compat_schema else ''}) expired at {shim.expires_at}: "
                "consumers still reading the old names must have moved by now",
                f"`migrate shims drop {shim.name}` once nobody uses it (`migrate shims audit` shows who), or "
                f"`migrate shims extend {shim.name} --by 7d --reason \"...\"`"))
    for schema, what in for_database(db).foreign_objects(db, settings, registry):
        out.append(Finding(
            "foreign-object", schema,
            f"compat schema {schema} is not the runner's: {what}; consumers routed to {schema} would use it, and "
            "`migrate up` refuses to put shims there",
            f"find out who made it; drop it (DROP SCHEMA {schema} CASCADE, after checking what it holds) or the "
            "foreign objects, then `migrate doctor` again"))
    if for_database(db).search_path:
        for route, why in routes.unusable(db):
            out.append(Finding(
                "route-unusable", route.role,
                f"role {route.role} is routed to {route.compat_schema} but {why}",
                f"`migrate shims route {route.role} --as-of {route.as_of}` again (it grants what the role needs), or "
                f"`migrate shims route {route.role} --reset`"))
    return out


# --------------------------------------------------------------------------- the whole check

def diagnose(db: Database, settings: Any) -> Diagnosis:
    """Every check, on an open Database; read-only."""
    diagnosis = Diagnosis()
    lock = lock_finding(db)
    if lock:
        diagnosis.findings.append(lock)
    pooled = pooler_finding(db)
    if pooled:
        diagnosis.findings.append(pooled)
    # The folder first: a wrong --migrations path is refused, not diagnosed as "run `migrate up`".
    files, hooks = load_folder(settings.migrations, settings.sources.get("migrations"))
    if not db.table_exists(history.HISTORY):
        diagnosis.findings.append(empty_folder_finding(settings.migrations, 0) if not files
                                  else not_managed_finding(db))
        return diagnosis
    applied_rows = history.read_applied(db)
    if not files and applied_rows:
        diagnosis.findings.append(empty_folder_finding(settings.migrations, len(applied_rows)))
    state = compute(files, applied_rows)
    applied_ids = {a.migration_id for a in applied_rows}
    applied = [m for m in files if m.id in applied_ids]
    at = _label(applied[-1]) if applied else "nothing applied"
    if state.pending:
        shown = ", ".join(state.pending[:5]) + (f" and {len(state.pending) - 5} more" if len(state.pending) > 5 else "")
        verb = "is" if len(state.pending) == 1 else "are"
        diagnosis.findings.append(Finding(
            "pending", state.pending[0],
            f"database is at {at}; {shown} {verb} pending", "run `migrate up`"))
    for mod in state.modified:
        diagnosis.findings.append(Finding(
            "modified-file", mod.id,
            f"{mod.path}: {mod.id} changed since it was applied (recorded sha256 {mod.recorded_checksum[:12]}, "
            f"file {mod.file_checksum[:12]})",
            f"restore the file as applied (git), or record the new content with `migrate rehash {mod.id}`"))
    for mid in state.missing:
        diagnosis.findings.append(Finding(
            "missing-file", mid, f"{mid} is recorded as applied but its file is missing from {settings.migrations}",
            f"restore the file, or forget it with `migrate unmark {mid}`"))
    due = [h.id for h in hooks] if history.post_apply_due(db, [h.id for h in hooks]) else []
    if due:
        diagnosis.findings.append(Finding(
            "post-apply-pending", due[0],
            f"post-apply hook(s) {', '.join(due)} have not run since the last migration was applied (a hook "
            "failed?): what they build may be missing",
            "fix the hook, then run `migrate up` (it runs the post-apply hooks again)"))

    stored = latest_snapshot(db)
    # The snapshot is stored under the last migration a run applied: the last row of the history
    # (its file may be gone; then the missing-file finding says so).
    last_id = applied_rows[-1].migration_id if applied_rows else ""
    if stored is None:
        diagnosis.findings.append(Finding(
            "no-snapshot", last_id or "-",
            "no schema snapshot is stored yet (migrations applied by `mark`/`adopt` before snapshots, or by an "
            "older runner): changes made outside migrations cannot be detected",
            "`migrate snapshot` records the live schema as the expected shape (check it is right first)",
            "info"))
    elif stored.migration_id != last_id:
        diagnosis.findings.append(Finding(
            "stale-snapshot", last_id or "-",
            f"the stored snapshot is of {stored.migration_id or 'an empty history'} but the last applied migration "
            f"is {last_id or 'none'} (a run stopped early, or history edited by mark/unmark): drift not checked",
            "the next successful `migrate up` refreshes it; or `migrate snapshot` records the live schema now",
            "info"))
    else:
        live = take_snapshot(db, settings.compat.sqlite_view_template)
        diagnosis.findings.extend(schema_findings(diff_snapshots(stored.snapshot, live), applied))
    diagnosis.findings.extend(shim_findings(db, settings))
    if diagnosis.healthy:
        diagnosis.summary = (f"database is at {at} (head), no file modified or missing"
                             + (", schema matches the snapshot" if stored is not None and stored.migration_id == last_id
                                else "") + ", no expired shim, lock free")
    return diagnosis


def record_snapshot(db: Database, settings: Any) -> str:
    """Store the live schema as the expected shape of the last applied migration; returns its id."""
    if not db.table_exists(history.HISTORY):
        raise UsageError("snapshot: the runner has never touched this database (no _migrate_history): "
                         "run `migrate doctor` for what to do first")
    applied = history.read_applied(db)
    last = applied[-1].migration_id if applied else ""  # the label diagnose() compares with
    with transaction(db):
        store_snapshot(db, last, take_snapshot(db, settings.compat.sqlite_view_template))
    return last
