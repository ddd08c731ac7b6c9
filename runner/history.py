"""The runner's bookkeeping: which migrations are applied, with their checksums.

``_migrate_history`` holds one row per applied migration; ``_migrate_log`` is
the audit trail (rows are never deleted). For compatibility with yoyo's own CLI
the runner also writes yoyo's ``_yoyo_migration`` and ``_yoyo_log`` rows. All
writes happen inside the caller's transaction, with schema-qualified names, so
a migration that changes ``search_path`` cannot misdirect them.
"""

from __future__ import annotations

import functools
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


def read_applied(db: Database) -> list[AppliedMigration]:
    """Applied migrations in the order they were applied ([] on a new database)."""
    if not table_exists(db, HISTORY):
        return []
    rows = db.execute(
        f"SELECT migration_id, checksum, applied_at, applied_by FROM {db.qualify(HISTORY)} "
        "ORDER BY applied_at, migration_id"
    ).fetchall()
    return [AppliedMigration(r[0], r[1], _as_datetime(r[2]), r[3]) for r in rows]


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
}
_SERVER_DURATION = "(extract(epoch FROM clock_timestamp() - now()) * 1000)::int"


def statements(db: Database, migration: MigrationFile, operation: str, duration_ms: int | None = 0,
               detail: str | None = None) -> tuple[list[str], dict[str, Any]]:
    """The bookkeeping statements for ``operation`` (apply, mark, rollback, unmark, rehash) and
    their parameters: ``%(name)s`` placeholders on PostgreSQL, ``:name`` on SQLite.

    Times come from the server's clock on PostgreSQL (one clock for runners on many hosts).
    ``duration_ms=None`` (PostgreSQL only): the time since the transaction began, computed by the
    server as the row is written, for a migration sent in the same query as its bookkeeping.
    """
    return list(_texts(db.dialect, _tables(db), operation, duration_ms)), _params(db, migration, operation, detail)


def _params(db: Database, migration: MigrationFile, operation: str, detail: str | None) -> dict[str, Any]:
    from yoyo.migrations import get_migration_hash

    params: dict[str, Any] = {
        "id": migration.id, "checksum": migration.checksum, "op": operation, "by": actor(db_user(db)),
        "detail": detail, "hash": get_migration_hash(migration.id), "uid": str(uuid.uuid4()),
        "user": os_user(), "host": host(),
    }
    if db.dialect != "postgresql":
        now = datetime.now(timezone.utc)
        params.update(at=now.isoformat(), at_utc=now.replace(tzinfo=None).isoformat(" "))
    return params


def _tables(db: Database) -> tuple[tuple[str, str], ...]:
    """The bookkeeping tables' slots and names, quoted and schema-qualified."""
    return tuple((slot, db.qualify(name)) for slot, name in
                 (("history", HISTORY), ("log", LOG), ("yoyo_migration", YOYO_MIGRATION), ("yoyo_log", YOYO_LOG)))


@functools.lru_cache(maxsize=64)
def _texts(dialect: str, tables: tuple[tuple[str, str], ...], operation: str, duration_ms: int | None) -> tuple[str, ...]:
    """The SQL of ``operation`` with its slots filled in (computed once per run and operation)."""
    ms = _SERVER_DURATION if duration_ms is None else str(int(duration_ms))
    if dialect == "postgresql":
        at, at_utc = "clock_timestamp()", "(clock_timestamp() AT TIME ZONE 'UTC')"
        # ``:name`` -> ``%(name)s`` before the names are filled in (a ``:`` in a quoted name is not a
        # parameter), and a ``%`` in a name doubled for psycopg.
        names = {slot: name.replace("%", "%%") for slot, name in tables}
        return tuple(_NAMED.sub(r"%(\1)s", sql).format(ms=ms, at=at, at_utc=at_utc, **names)
                     for sql in _OPERATIONS[operation])
    return tuple(sql.format(ms=ms, at=":at", at_utc=":at_utc", **dict(tables)) for sql in _OPERATIONS[operation])


_NAMED = re.compile(r"(?<![:\w]):([a-z_]+)\b")


@functools.lru_cache(maxsize=64)
def _one_statement(texts: tuple[str, ...]) -> str:
    """PostgreSQL: the statements as one, all but the last as data-modifying CTEs (no two touch
    the same row, so their order does not matter)."""
    *first, last = texts
    return "WITH " + ", ".join(f"w{n} AS ({sql})" for n, sql in enumerate(first)) + " " + last if first else last


def render(db: Database, migration: MigrationFile, operation: str, duration_ms: int | None = 0,
           detail: str | None = None) -> str:
    """PostgreSQL: the bookkeeping as ONE statement, its values bound client-side with psycopg's
    quoting, to be sent with other statements in one simple-protocol query.
    """
    from psycopg import ClientCursor

    text = _one_statement(_texts(db.dialect, _tables(db), operation, duration_ms))
    return ClientCursor(db.connection).mogrify(text, _params(db, migration, operation, detail))


def record(db: Database, migration: MigrationFile, operation: str, duration_ms: int = 0, detail: str | None = None,
           then: str | None = None) -> None:
    """Write the rows for ``operation`` (apply, mark, rollback, unmark, rehash) in the caller's
    transaction.

    ``then``: SQL to send right after them (on PostgreSQL in the same round trip), e.g. the
    executor's COMMIT.
    """
    if db.dialect == "postgresql":
        db.connection.execute(render(db, migration, operation, duration_ms, detail) + (f";\n{then}" if then else ""))
        return
    sqls, params = statements(db, migration, operation, duration_ms, detail)
    for sql in sqls:
        db.connection.execute(sql, params)
    if then:
        db.connection.execute(then)
