"""The runner's bookkeeping: which migrations are applied, with their checksums.

``_migrate_history`` holds one row per applied migration; ``_migrate_log`` is
the audit trail (rows are never deleted). For compatibility with yoyo's own CLI
the runner also writes yoyo's ``_yoyo_migration`` and ``_yoyo_log`` rows. All
writes happen inside the caller's transaction, with schema-qualified names, so
a migration that changes ``search_path`` cannot misdirect them.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from runner.db import Database
from runner.db import table_exists as db_table_exists
from runner.identity import actor, host, os_user
from runner.migration import MigrationFile

HISTORY = "_migrate_history"
LOG = "_migrate_log"
YOYO_MIGRATION = "_yoyo_migration"
YOYO_LOG = "_yoyo_log"

_DDL = {
    "postgresql": [
        "CREATE TABLE IF NOT EXISTS {history} (migration_id text PRIMARY KEY, checksum text NOT NULL, "
        "applied_at timestamptz NOT NULL, applied_by text NOT NULL, duration_ms integer NOT NULL)",
        "CREATE TABLE IF NOT EXISTS {log} (id bigserial PRIMARY KEY, migration_id text NOT NULL, "
        "operation text NOT NULL, checksum text, at timestamptz NOT NULL, by text NOT NULL, detail text)",
    ],
    "sqlite": [
        "CREATE TABLE IF NOT EXISTS {history} (migration_id TEXT PRIMARY KEY, checksum TEXT NOT NULL, "
        "applied_at TEXT NOT NULL, applied_by TEXT NOT NULL, duration_ms INTEGER NOT NULL)",
        "CREATE TABLE IF NOT EXISTS {log} (id INTEGER PRIMARY KEY AUTOINCREMENT, migration_id TEXT NOT NULL, "
        "operation TEXT NOT NULL, checksum TEXT, at TEXT NOT NULL, by TEXT NOT NULL, detail TEXT)",
    ],
}


@dataclass(frozen=True)
class AppliedMigration:
    migration_id: str
    checksum: str
    applied_at: datetime
    applied_by: str


def table_exists(db: Database, name: str) -> bool:
    """Whether table ``name`` exists in the runner's schema."""
    return db_table_exists(db.connection, db.dialect, db.schema, name)


def ensure_tables(db: Database) -> None:
    """Create the runner's and yoyo's tables if missing (call under the runner's lock)."""
    if table_exists(db, HISTORY):
        return
    from yoyo import internalmigrations

    with db.backend.transaction():
        for ddl in _DDL[db.dialect]:
            db.execute(ddl.format(history=db.qualify(HISTORY), log=db.qualify(LOG)))
        if internalmigrations.needs_upgrading(db.backend):
            internalmigrations.upgrade(db.backend)


def is_empty(db: Database) -> bool:
    """PostgreSQL: no table, view or sequence in any schema but the runner's own tables. With no
    migration applied, that is a fresh database: nothing there for another session to be using yet."""
    ours = [HISTORY, LOG, f"{LOG}_id_seq", YOYO_MIGRATION, YOYO_LOG, "_yoyo_version", "yoyo_lock", "_migrate_snapshot"]
    row = db.connection.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND n.nspname <> 'information_schema' "
        "AND n.nspname !~ '^pg_' AND NOT (n.nspname = current_schema() AND c.relname = ANY(%s)))",
        (ours,)).fetchone()
    return not row[0]


def read_applied(db: Database) -> list[AppliedMigration]:
    """Applied migrations in the order they were applied ([] on a new database)."""
    if not table_exists(db, HISTORY):
        return []
    rows = db.execute(
        f"SELECT migration_id, checksum, applied_at, applied_by FROM {db.qualify(HISTORY)} "
        "ORDER BY applied_at, migration_id"
    ).fetchall()
    return [AppliedMigration(r[0], r[1], _as_datetime(r[2]), r[3]) for r in rows]


def post_apply_due(db: Database, hook_ids: list[str]) -> bool:
    """Whether a migration was applied after one of the post-apply hooks ``hook_ids`` last ran
    (its transaction failed, or the hook is new), from the audit trail."""
    if not hook_ids or not table_exists(db, LOG):
        return False
    log = db.qualify(LOG)
    last_apply = db.execute(f"SELECT max(id) FROM {log} WHERE operation = 'apply'").fetchone()[0]
    if last_apply is None:
        return False
    ran = dict(db.execute(f"SELECT migration_id, max(id) FROM {log} WHERE operation = 'post-apply' "
                          "GROUP BY migration_id").fetchall())
    return any(ran.get(hook, 0) < last_apply for hook in hook_ids)


def applied_by_yoyo(db: Database, ids: list[str]) -> list[str]:
    """Those of ``ids`` that ``_yoyo_migration`` lists but the runner does not: applied (or marked)
    by yoyo's own CLI, as the runner writes both tables in one transaction."""
    if not ids or not table_exists(db, YOYO_MIGRATION):
        return []
    found = {r[0] for r in db.execute(f"SELECT migration_id FROM {db.qualify(YOYO_MIGRATION)}").fetchall()}
    return [i for i in ids if i in found]


def _as_datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return datetime.fromisoformat(str(value))


def db_user(db: Database) -> str | None:
    info = getattr(db.connection, "info", None)
    return getattr(info, "user", None)


# The bookkeeping of each operation: (table slot, SQL with {slots} and :params). No two statements
# of an operation touch the same row, so PostgreSQL can run them as one statement (see render).
_UPSERT_HISTORY = (
    "INSERT INTO {history} (migration_id, checksum, applied_at, applied_by, duration_ms) "
    "VALUES (:id, :checksum, {at}, :by, {ms}) ON CONFLICT (migration_id) DO UPDATE SET "
    "checksum = excluded.checksum, applied_at = excluded.applied_at, applied_by = excluded.applied_by, "
    "duration_ms = excluded.duration_ms"
)
_DELETE_HISTORY = "DELETE FROM {history} WHERE migration_id = :id"
_LOG = ("INSERT INTO {log} (migration_id, operation, checksum, at, by, detail) "
        "VALUES (:id, :op, :checksum, {at}, :by, :detail)")
_UPSERT_YOYO = (
    "INSERT INTO {yoyo_migration} (migration_hash, migration_id, applied_at_utc) VALUES (:hash, :id, {at_utc}) "
    "ON CONFLICT (migration_hash) DO UPDATE SET migration_id = excluded.migration_id, "
    "applied_at_utc = excluded.applied_at_utc"
)
_DELETE_YOYO = "DELETE FROM {yoyo_migration} WHERE migration_hash = :hash"
_YOYO_LOG = ("INSERT INTO {yoyo_log} (id, migration_hash, migration_id, operation, username, hostname, comment, "
             "created_at_utc) VALUES (:uid, :hash, :id, :op, :user, :host, 'migrate-runner', {at_utc})")
_OPERATIONS = {
    # yoyo's tables are kept in step, so ``yoyo list`` agrees with ``migrate status``.
    "apply": (_UPSERT_HISTORY, _LOG, _UPSERT_YOYO, _YOYO_LOG),
    "mark": (_UPSERT_HISTORY, _LOG, _UPSERT_YOYO, _YOYO_LOG),
    "rollback": (_DELETE_HISTORY, _LOG, _DELETE_YOYO, _YOYO_LOG),
    "unmark": (_DELETE_HISTORY, _LOG, _DELETE_YOYO, _YOYO_LOG),
    "rehash": ("UPDATE {history} SET checksum = :checksum WHERE migration_id = :id", _LOG),
    # A yoyo post-apply hook ran (after migrations were applied): audit trail only.
    "post-apply": (_LOG,),
}
# Milliseconds since the migration began: since ``migrate.started`` where the executor set it (several
# migrations in one transaction), else since the transaction began.
SERVER_DURATION = ("(extract(epoch FROM clock_timestamp() - coalesce(nullif(current_setting('migrate.started', true), "
                   "'')::timestamptz, now())) * 1000)::int")


def statements(db: Database, migration: MigrationFile, operation: str, duration_ms: int = 0,
               detail: str | None = None) -> tuple[list[str], dict[str, Any]]:
    """SQLite: the bookkeeping statements for ``operation`` (apply, mark, rollback, unmark,
    rehash), with ``:name`` parameters, and the parameters."""
    from yoyo.migrations import get_migration_hash

    now = datetime.now(timezone.utc)
    params: dict[str, Any] = {
        "id": migration.id, "checksum": migration.checksum, "op": operation, "by": actor(db_user(db)),
        "detail": detail, "hash": get_migration_hash(migration.id), "uid": str(uuid.uuid4()),
        "user": os_user(), "host": host(), "at": now.isoformat(), "at_utc": now.replace(tzinfo=None).isoformat(" "),
    }
    tables = dict(_tables(db))
    return [sql.format(ms=int(duration_ms), at=":at", at_utc=":at_utc", **tables) for sql in _OPERATIONS[operation]], params


def _tables(db: Database) -> tuple[tuple[str, str], ...]:
    """The bookkeeping tables' slots and names, quoted and schema-qualified."""
    return tuple((slot, db.qualify(name)) for slot, name in
                 (("history", HISTORY), ("log", LOG), ("yoyo_migration", YOYO_MIGRATION), ("yoyo_log", YOYO_LOG)))


class PostgresBookkeeping:
    """PostgreSQL: the bookkeeping of an operation as ONE statement, values quoted by psycopg, to be
    sent with other statements in one simple-protocol query. The run's constants (tables, who)
    are quoted once; each migration quotes only its own values.

    Times come from the server's clock (one clock for runners on many hosts). ``duration_ms=None``:
    the time since the migration began (SERVER_DURATION), computed by the server as the row is
    written, for a migration sent in the same query as its bookkeeping.
    """

    def __init__(self, db: Database) -> None:
        from psycopg.sql import Literal

        self._conn = db.connection
        self._literal = Literal
        quoted = {k: _brace(Literal(v).as_string(self._conn))
                  for k, v in (("by", actor(db_user(db))), ("user", os_user()), ("host", host()))}
        self._constants = _Keep(at="clock_timestamp()", at_utc="(clock_timestamp() AT TIME ZONE 'UTC')",
                                **quoted, **{slot: _brace(name) for slot, name in _tables(db)})
        self._templates: dict[tuple[str, int | None], str] = {}

    def render(self, migration: MigrationFile, operation: str, duration_ms: int | None = 0,
               detail: str | None = None) -> str:
        from yoyo.migrations import get_migration_hash

        template = self._templates.get((operation, duration_ms))
        if template is None:
            template = self._templates[(operation, duration_ms)] = self._template(operation, duration_ms)
        quote = self._quote
        return template.format(id=quote(migration.id), checksum=quote(migration.checksum),
                               hash=quote(get_migration_hash(migration.id)), uid=quote(str(uuid.uuid4())),
                               detail=quote(detail))

    def _quote(self, value: str | None) -> str:
        return self._literal(value).as_string(self._conn)

    def _template(self, operation: str, duration_ms: int | None) -> str:
        """All statements but the last as data-modifying CTEs (no two touch the same row, so their
        order does not matter); ``{id}``, ``{checksum}``, ``{hash}``, ``{uid}`` and ``{detail}``
        left for each migration: a str.format() template."""
        ms = SERVER_DURATION if duration_ms is None else str(int(duration_ms))
        constants = _Keep(self._constants, op=_brace(self._quote(operation)), ms=ms)
        *first, last = [_NAMED.sub(r"{\1}", sql).format_map(constants) for sql in _OPERATIONS[operation]]
        return "WITH " + ", ".join(f"w{n} AS ({sql})" for n, sql in enumerate(first)) + " " + last if first else last


class _Keep(dict):  # type: ignore[type-arg]
    """format_map() mapping that leaves the per-migration ``{slots}`` in place."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def _brace(text: str) -> str:
    """``text`` safe inside a str.format() template."""
    return text.replace("{", "{{").replace("}", "}}")


# ``:name`` parameters in _OPERATIONS (not after ``:`` or inside a word: ``::int`` is a cast).
_NAMED = re.compile(r"(?<![:\w]):([a-z_]+)\b")


def record(db: Database, migration: MigrationFile, operation: str, duration_ms: int = 0, detail: str | None = None,
           then: str | None = None) -> None:
    """Write the rows for ``operation`` (apply, mark, rollback, unmark, rehash) in the caller's
    transaction.

    ``then``: SQL to send right after them (on PostgreSQL in the same round trip), e.g. the
    executor's COMMIT.
    """
    if db.dialect == "postgresql":
        text = PostgresBookkeeping(db).render(migration, operation, duration_ms, detail)
        db.connection.execute(text + (f";\n{then}" if then else ""))
        return
    sqls, params = statements(db, migration, operation, duration_ms, detail)
    for sql in sqls:
        db.connection.execute(sql, params)
    if then:
        db.connection.execute(then)
