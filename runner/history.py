"""The runner's bookkeeping: which migrations are applied, with their checksums.

``_migrate_history`` holds one row per applied migration; ``_migrate_log`` is
the audit trail (rows are never deleted). For compatibility with yoyo's own CLI
the runner also writes yoyo's ``_yoyo_migration`` and ``_yoyo_log`` rows. All
writes happen inside the caller's transaction, with schema-qualified names, so
a migration that changes ``search_path`` cannot misdirect them.
"""

from __future__ import annotations

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


def _now(db: Database) -> Any:
    now = datetime.now(timezone.utc)
    return now if db.dialect == "postgresql" else now.isoformat()


def db_user(db: Database) -> str | None:
    info = getattr(db.connection, "info", None)
    return getattr(info, "user", None)


class _Batch:
    """The statements of one bookkeeping operation.

    On PostgreSQL they are bound client-side (psycopg's ClientCursor quoting) and sent as ONE
    simple-protocol query: same statements, same order, same transaction, but one round trip
    and no per-statement extended-protocol cost (measured: ~0.35 ms instead of ~0.9 ms for the
    six statements of an apply, pipelined). Elsewhere each statement is executed at once.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self.statements: list[tuple[str, dict[str, Any]]] = []

    def execute(self, sql: str, params: dict[str, Any]) -> None:
        if self.db.dialect == "postgresql":
            self.statements.append((sql, params))
        else:
            self.db.execute(sql, params)

    def flush(self, then: str | None = None) -> None:
        """Send the statements (PostgreSQL), followed in the same query by ``then`` if given."""
        if not self.statements:
            if then:
                self.db.connection.execute(then)
            return
        from psycopg import ClientCursor
        from yoyo.utils import change_param_style

        cursor = ClientCursor(self.db.connection)
        paramstyle = self.db.backend.driver.paramstyle
        parts = [cursor.mogrify(*change_param_style(paramstyle, sql, params)) for sql, params in self.statements]
        self.statements = []
        self.db.connection.execute(";\n".join(parts + ([then] if then else [])))


def record(db: Database, migration: MigrationFile, operation: str, duration_ms: int = 0, detail: str | None = None,
           then: str | None = None) -> None:
    """Write the rows for ``operation`` (apply, mark, rollback, unmark, rehash).

    ``then``: SQL to send right after them (on PostgreSQL in the same round trip), e.g. the
    executor's COMMIT.
    """
    by = actor(db_user(db))
    now = _now(db)
    history = db.qualify(HISTORY)
    batch = _Batch(db)
    if operation in ("apply", "mark"):
        batch.execute(f"DELETE FROM {history} WHERE migration_id = :id", {"id": migration.id})
        batch.execute(
            f"INSERT INTO {history} (migration_id, checksum, applied_at, applied_by, duration_ms) "
            "VALUES (:id, :checksum, :at, :by, :ms)",
            {"id": migration.id, "checksum": migration.checksum, "at": now, "by": by, "ms": duration_ms},
        )
    elif operation in ("rollback", "unmark"):
        batch.execute(f"DELETE FROM {history} WHERE migration_id = :id", {"id": migration.id})
    elif operation == "rehash":
        batch.execute(
            f"UPDATE {history} SET checksum = :checksum WHERE migration_id = :id",
            {"id": migration.id, "checksum": migration.checksum},
        )
    batch.execute(
        f"INSERT INTO {db.qualify(LOG)} (migration_id, operation, checksum, at, by, detail) "
        "VALUES (:id, :op, :checksum, :at, :by, :detail)",
        {"id": migration.id, "op": operation, "checksum": migration.checksum, "at": now, "by": by, "detail": detail},
    )
    if operation != "rehash":
        _record_yoyo(batch, migration, operation)
    batch.flush(then)


def _record_yoyo(batch: _Batch, migration: MigrationFile, operation: str) -> None:
    """Keep yoyo's tables in step, so ``yoyo list`` agrees with ``migrate status``."""
    from yoyo.migrations import get_migration_hash

    db = batch.db
    migration_hash = get_migration_hash(migration.id)
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    when = now if db.dialect == "postgresql" else now.isoformat(" ")
    table = db.qualify(YOYO_MIGRATION)
    batch.execute(f"DELETE FROM {table} WHERE migration_hash = :h", {"h": migration_hash})
    if operation in ("apply", "mark"):
        batch.execute(
            f"INSERT INTO {table} (migration_hash, migration_id, applied_at_utc) VALUES (:h, :id, :at)",
            {"h": migration_hash, "id": migration.id, "at": when},
        )
    batch.execute(
        f"INSERT INTO {db.qualify(YOYO_LOG)} (id, migration_hash, migration_id, operation, username, hostname, "
        "comment, created_at_utc) VALUES (:uid, :h, :id, :op, :user, :host, :comment, :at)",
        {
            "uid": str(uuid.uuid1()), "h": migration_hash, "id": migration.id, "op": operation,
            "user": os_user(), "host": host(), "comment": "migrate-runner", "at": when,
        },
    )
