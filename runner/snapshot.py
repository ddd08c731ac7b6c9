"""Schema snapshots of the managed schema, and the diff between two of them.

A snapshot is a plain JSON-able dict read from the catalog (never a dump):

    {"format": 1, "dialect": "postgresql", "schema": "public",
     "tables":  {"t": {"kind": "table", "columns": [{"name": "id", "type": "integer", "nullable": false}]}},
     "views":   {"v": {"columns": [...]}},
     "indexes": {"t_pkey": {"table": "t", "definition": "CREATE UNIQUE INDEX ..."}}}

What is covered: the schema the runner's own tables live in (PostgreSQL: the
``schema`` setting, default ``public``; SQLite: the main database). What is left out:
the runner's and yoyo's tables (``_migrate_*``, ``_yoyo_*``, ``yoyo_lock``),
other tools' history tables (``goose_db_version``, ``schema_migrations``,
``alembic_version``), compat shims (on PostgreSQL they live in their own
schemas; on SQLite, views named by ``compat.sqlite_view_template``) and
SQLite's internal objects.

Snapshots are stored in ``_migrate_snapshot (migration_id, taken_at,
snapshot)`` in the runner's schema, created on demand inside the caller's
transaction. :class:`SnapshotHook` stores one per run (see its docstring for
why not one per migration).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runner.hooks import MigrationContext
from runner.logs import get_logger
from runner.migration import POST_APPLY

if TYPE_CHECKING:
    from runner.db import Database

log = get_logger("migrate.snapshot")

TABLE = "_migrate_snapshot"
TABLES = (TABLE, f"{TABLE}_id_seq")
SNAPSHOT_FORMAT = 1
_RUNNER_PREFIXES = ("_migrate_", "_yoyo_", "sqlite_")
_RUNNER_TABLES = {"yoyo_lock", "goose_db_version", "schema_migrations", "alembic_version"}

Snapshot = dict[str, Any]


def is_excluded_name(name: str) -> bool:
    """True for the runner's, yoyo's, other migration tools' and SQLite's own objects."""
    return name in _RUNNER_TABLES or name.startswith(_RUNNER_PREFIXES)


def sqlite_shim_pattern(template: str) -> re.Pattern[str]:
    """A regex matching SQLite shim view names made from ``template``.

    ``"{table}__v{version}"`` gives ``^.+__v[0-9A-Za-z_.-]+$``.
    """
    parts = re.split(r"(\{table\}|\{version\})", template)
    out = []
    for part in parts:
        if part == "{table}":
            out.append(".+")
        elif part == "{version}":
            out.append(r"[0-9A-Za-z_.-]+")
        else:
            out.append(re.escape(part))
    return re.compile("^" + "".join(out) + "$")


# --------------------------------------------------------------------------- taking

def take_snapshot(db: Database, sqlite_view_template: str = "{table}__v{version}") -> Snapshot:
    """Read the shape of the managed schema from the catalog (two queries)."""
    shim = sqlite_shim_pattern(sqlite_view_template)
    snap: Snapshot = {"format": SNAPSHOT_FORMAT, "dialect": db.dialect.name, "schema": db.schema,
                      "tables": {}, "views": {}, "indexes": {}}
    for relname, kind, column, typ, notnull, num in db.dialect.catalog_columns(db, db.schema):
        # A database without schemas (SQLite) keeps its shims beside the tables, as views named by
        # the template; elsewhere they live in compat schemas, outside the managed schema.
        if is_excluded_name(relname) or (kind == "view" and db.schema is None and shim.match(relname)):
            continue
        bucket = snap["views"] if kind in ("view", "materialized view") else snap["tables"]
        entry = bucket.get(relname)
        if entry is None:
            entry = bucket[relname] = {"kind": kind, "columns": []}
        entry["columns"].append({"name": column, "type": typ, "nullable": not notnull, "num": num})
    for index, table, definition in db.dialect.catalog_indexes(db, db.schema):
        if is_excluded_name(table) or is_excluded_name(index):
            continue
        snap["indexes"][index] = {"table": table, "definition": definition}
    return snap


# --------------------------------------------------------------------------- storing

def _ensure_table(db: Database) -> None:
    """Create ``_migrate_snapshot`` if it is missing (inside the caller's transaction)."""
    if not db.table_exists(TABLE):
        db.execute(f"CREATE TABLE IF NOT EXISTS {db.qualify(TABLE)} (id {db.dialect.types['serial_key']}, "
                   f"migration_id text NOT NULL, taken_at {db.dialect.types['timestamp']} NOT NULL {db.dialect.types['now_default']}, "
                   f"snapshot {db.dialect.types['json']} NOT NULL)")


def store_snapshot(db: Database, migration_id: str, snapshot: Snapshot) -> None:
    """Insert ``snapshot`` as the expected shape after ``migration_id`` (caller's transaction)."""
    _ensure_table(db)
    payload = json.dumps(snapshot, sort_keys=True, separators=(",", ":"))
    db.execute(f"INSERT INTO {db.qualify(TABLE)} (migration_id, taken_at, snapshot) "
               f"VALUES (%s, %s, {db.dialect.types['json_param']})",
               (migration_id, db.dialect.ts_in(db.now()), payload))


@dataclass
class StoredSnapshot:
    """A row of ``_migrate_snapshot``."""

    migration_id: str
    taken_at: Any
    snapshot: Snapshot


def latest_snapshot(db: Database) -> StoredSnapshot | None:
    """The most recently stored snapshot, or None (no table, or no rows)."""
    if not db.table_exists(TABLE):
        return None
    row = db.execute(f"SELECT migration_id, taken_at, snapshot FROM {db.qualify(TABLE)} ORDER BY id DESC LIMIT 1"
                     ).fetchone()
    if row is None:
        return None
    return StoredSnapshot(row[0], db.dialect.ts_out(row[1]), db.dialect.json_out(row[2]))


# --------------------------------------------------------------------------- the hook

class SnapshotHook:
    """Stores a snapshot of the managed schema inside a migration's transaction.

    Cost (measured by bench/snapshot_cost.py, see README.md): a full
    snapshot is two catalog queries plus an INSERT, about 1.5 ms on a small
    schema and 27 ms with 1,000 tables. Taken after every migration, a run of
    1,000 trivial migrations costs ~9.5 ms per migration instead of ~2: far
    over the ~1.5 ms budget, and quadratic. So the hook takes ONE snapshot per
    run, in the transaction of the run's last migration, where it commits
    atomically with that migration; for every other migration ``after()`` is
    a string comparison.

    Which migration is last:
    - ``final_migration_id`` when given (``migrate up`` passes the last id of
      its plan, ``migrate down`` the last one it rolls back);
    - otherwise the last migration file of the folder (listed once per hook,
      by numeric version then name; no file is read), so a plain ``up`` to head
      gets its snapshot. A run that stops before the head (``--to``) then stores
      none, and ``migrate doctor`` says the snapshot is stale rather than
      reporting false drift;
    - ``every=True`` snapshots after every migration (tests, small runs).

    ``label``: store the snapshot under this migration id instead (post-apply hooks run after the
    run's last migration; their snapshot is the expected shape after that migration).

    On a rollback (``ctx.direction == "rollback"``) the snapshot is stored
    under the migration that stays the last applied (``ctx.previous``), or
    ``""`` when nothing stays applied; without ``final_migration_id`` every
    rollback stores one (rollbacks are few).
    """

    def __init__(self, final_migration_id: str | None = None, every: bool = False, label: str | None = None) -> None:
        self.final_migration_id = final_migration_id
        self.every = every
        self.label = label  # store under this migration id (post-apply hooks: the last applied migration)
        self._head: str | None = None

    def wants(self, ctx: MigrationContext) -> bool:
        return self._is_final(ctx)

    def before(self, ctx: MigrationContext) -> None:
        """Nothing to do before a migration."""

    def _is_final(self, ctx: MigrationContext) -> bool:
        if self.every:
            return True
        if self.final_migration_id is not None:
            return ctx.migration.id == self.final_migration_id
        if ctx.direction == "rollback":
            return True
        if self._head is None:
            self._head = _head_of_folder(getattr(ctx.settings, "migrations", None)) or ""
        return ctx.migration.id == self._head

    def after(self, ctx: MigrationContext) -> None:
        if not self._is_final(ctx):
            return
        if self.label is not None:
            label = self.label
        elif ctx.direction == "rollback":
            label = ctx.previous.id if ctx.previous is not None else ""
        else:
            label = ctx.migration.id
        snap = take_snapshot(ctx.db, ctx.settings.compat.sqlite_view_template)
        store_snapshot(ctx.db, label, snap)
        log.debug("snapshot stored", migration=label, tables=len(snap["tables"]))


_VERSION = re.compile(r"^(\d+)")


def _head_of_folder(folder: Any) -> str | None:
    """The id of the last migration file in ``folder`` (numeric version, then name), without reading files."""
    import os

    if folder is None:
        return None
    try:
        names = os.listdir(folder)
    except OSError:
        return None
    keys = []
    for name in names:
        if name.startswith((".", "_", POST_APPLY)) or name.endswith(".rollback.sql") or not name.endswith((".sql", ".py")):
            continue  # POST_APPLY: yoyo's hooks, not migrations (runner.sources.load_folder)
        stem = name.rsplit(".", 1)[0]
        match = _VERSION.match(name)
        keys.append((match is None, int(match.group(1)) if match else 0, stem))
    return max(keys)[2] if keys else None


# --------------------------------------------------------------------------- diff

@dataclass(frozen=True)
class Change:
    """One difference between an expected and an actual snapshot.

    ``change`` is one of: ``table-added``, ``table-dropped``, ``view-added``,
    ``view-dropped``, ``column-added``, ``column-dropped``, ``column-retyped``,
    ``nullability-changed``, ``index-added``, ``index-dropped``,
    ``index-changed``, ``column-renamed`` (a dropped and an added column of the
    same type at the same position, reported as one change).
    ``object`` is ``table`` or ``table.column`` or an index name.
    """

    change: str
    object: str
    detail: str
    old: str | None = None
    new: str | None = None


def diff_snapshots(expected: Snapshot, actual: Snapshot) -> list[Change]:
    """What changed from ``expected`` to ``actual``, most significant first."""
    changes: list[Change] = []
    for bucket, noun in (("tables", "table"), ("views", "view")):
        exp, act = expected.get(bucket, {}), actual.get(bucket, {})
        for name in sorted(set(exp) - set(act)):
            changes.append(Change(f"{noun}-dropped", name, f"{noun} {name} is missing"))
        for name in sorted(set(act) - set(exp)):
            changes.append(Change(f"{noun}-added", name, f"{noun} {name} exists but no migration created it"))
        for name in sorted(set(exp) & set(act)):
            changes.extend(_diff_columns(name, exp[name]["columns"], act[name]["columns"]))
    exp_i, act_i = expected.get("indexes", {}), actual.get("indexes", {})
    for name in sorted(set(exp_i) - set(act_i)):
        changes.append(Change("index-dropped", name, f"index {name} on {exp_i[name]['table']} is missing"))
    for name in sorted(set(act_i) - set(exp_i)):
        changes.append(Change("index-added", name,
                              f"index {name} on {act_i[name]['table']} exists but no migration created it"))
    for name in sorted(set(exp_i) & set(act_i)):
        if exp_i[name]["definition"] != act_i[name]["definition"]:
            changes.append(Change("index-changed", name, f"index {name} was redefined",
                                  exp_i[name]["definition"], act_i[name]["definition"]))
    return changes


def _diff_columns(table: str, expected: list[dict[str, Any]], actual: list[dict[str, Any]]) -> list[Change]:
    exp = {c["name"]: c for c in expected}
    act = {c["name"]: c for c in actual}
    dropped = [c for c in expected if c["name"] not in act]
    added = [c for c in actual if c["name"] not in exp]
    out: list[Change] = []
    # A column dropped and one added with the same type and the same attribute number: a rename
    # (PostgreSQL keeps attnum on RENAME COLUMN; a dropped and re-added column gets a new one).
    exp_pos = {c["name"]: c.get("num", i) for i, c in enumerate(expected)}
    act_pos = {c["name"]: c.get("num", i) for i, c in enumerate(actual)}
    for old in list(dropped):
        for new in added:
            if old["type"] == new["type"] and exp_pos[old["name"]] == act_pos[new["name"]]:
                out.append(Change("column-renamed", f"{table}.{old['name']}",
                                  f"column {table}.{old['name']} is now named {new['name']}",
                                  old["name"], new["name"]))
                dropped.remove(old)
                added.remove(new)
                break
    for col in dropped:
        out.append(Change("column-dropped", f"{table}.{col['name']}", f"column {table}.{col['name']} is missing"))
    for col in added:
        out.append(Change("column-added", f"{table}.{col['name']}",
                          f"column {table}.{col['name']} ({col['type']}) exists but no migration added it"))
    for name in exp.keys() & act.keys():
        e, a = exp[name], act[name]
        if e["type"] != a["type"]:
            out.append(Change("column-retyped", f"{table}.{name}",
                              f"column {table}.{name} is {a['type']}, expected {e['type']}", e["type"], a["type"]))
        if e["nullable"] != a["nullable"]:
            want = "nullable" if e["nullable"] else "NOT NULL"
            got = "nullable" if a["nullable"] else "NOT NULL"
            out.append(Change("nullability-changed", f"{table}.{name}",
                              f"column {table}.{name} is {got}, expected {want}", want, got))
    return out
