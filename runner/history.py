"""The runner's bookkeeping: which migrations are applied, with their checksums.

This module owns two tables in the runner's schema: ``_migrate_history`` (one row per applied
migration) and ``_migrate_log`` (the audit trail; rows are never deleted). For compatibility with
yoyo's own CLI the same operations also write yoyo's rows (their SQL is in
:mod:`runner.yoyo_adapter`). All writes happen inside the caller's transaction, with
schema-qualified names, so a migration that changes ``search_path`` cannot misdirect them.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from runner import yoyo_adapter
from runner.db import dollar_quote, transaction
from runner.identity import actor, host, os_user
from runner.migration import MigrationFile

if TYPE_CHECKING:
    from runner.db import Database

HISTORY = "_migrate_history"
LOG = "_migrate_log"
TABLES = (HISTORY, LOG, f"{LOG}_id_seq")

_DDL = (
    "CREATE TABLE IF NOT EXISTS {history} (migration_id text PRIMARY KEY, checksum text NOT NULL, "
    "applied_at {timestamp} NOT NULL, applied_by text NOT NULL, duration_ms integer NOT NULL)",
    "CREATE TABLE IF NOT EXISTS {log} (id {serial_key}, migration_id text NOT NULL, "
    "operation text NOT NULL, checksum text, at {timestamp} NOT NULL, by text NOT NULL, detail text)",
)


@dataclass(frozen=True)
class AppliedMigration:
    migration_id: str
    checksum: str
    applied_at: datetime
    applied_by: str


def ensure_tables(db: Database) -> None:
    """Create the runner's schema, its tables and yoyo's if missing (call under the runner's lock)."""
    if db.table_exists(HISTORY) and db.table_exists(yoyo_adapter.MIGRATION_TABLE):
        return
    db.dialect.ensure_schema(db)
    with transaction(db):
        for ddl in _DDL:
            db.execute(ddl.format(history=db.qualify(HISTORY), log=db.qualify(LOG), **db.dialect.types))
        yoyo_adapter.ensure_tables(db)


def read_applied(db: Database) -> list[AppliedMigration]:
    """Applied migrations in the order they were applied ([] on a new database)."""
    if not db.table_exists(HISTORY):
        return []
    rows = db.execute(
        f"SELECT migration_id, checksum, applied_at, applied_by FROM {db.qualify(HISTORY)} "
        "ORDER BY applied_at, migration_id").fetchall()
    return [AppliedMigration(r[0], r[1], db.dialect.ts_out(r[2]), r[3]) for r in rows]


def post_apply_due(db: Database, hook_ids: list[str]) -> bool:
    """Whether a migration was applied after one of the post-apply hooks ``hook_ids`` last ran
    (its transaction failed, or the hook is new), from the audit trail."""
    if not hook_ids or not db.table_exists(LOG):
        return False
    log = db.qualify(LOG)
    last_apply = db.scalar(f"SELECT max(id) FROM {log} WHERE operation = 'apply'")
    if last_apply is None:
        return False
    ran = dict(db.execute(f"SELECT migration_id, max(id) FROM {log} WHERE operation = 'post-apply' "
                          "GROUP BY migration_id").fetchall())
    return any(ran.get(hook, 0) < last_apply for hook in hook_ids)


def applied_by_yoyo(db: Database, ids: list[str]) -> list[str]:
    """Those of ``ids`` that yoyo's table lists but the runner does not: applied (or marked) by
    yoyo's own CLI, as the runner writes both tables in one transaction."""
    if not ids:
        return []
    found = set(yoyo_adapter.applied_ids(db))
    return [i for i in ids if i in found]


def durations_ms(db: Database, ids: list[str]) -> dict[str, int]:
    """The recorded durations of ``ids`` (migrations the server timed: see SERVER_DURATION)."""
    marks = ", ".join(["%s"] * len(ids))
    return dict(db.execute(f"SELECT migration_id, duration_ms FROM {db.qualify(HISTORY)} "
                           f"WHERE migration_id IN ({marks})", ids).fetchall())


def touch_sql(db: Database, migration_id: str) -> str:
    """A write that rewrites one history row as it is (a COMMIT that waits for the WAL flush)."""
    return (f"UPDATE {db.qualify(HISTORY)} SET applied_at = applied_at "
            f"WHERE migration_id = {db.dialect.literal(db, migration_id)}")


# --------------------------------------------------------------------------- writing

# The bookkeeping of each operation. Slots: {history} {log} {yoyo_migration} {yoyo_log} (tables),
# {at} {at_utc} (times), {ms} (duration), :id :checksum :op :by :detail :hash :uid :user :host (values).
_UPSERT_HISTORY = (
    "INSERT INTO {history} (migration_id, checksum, applied_at, applied_by, duration_ms) "
    "VALUES (:id, :checksum, {at}, :by, {ms}) ON CONFLICT (migration_id) DO UPDATE SET "
    "checksum = excluded.checksum, applied_at = excluded.applied_at, applied_by = excluded.applied_by, "
    "duration_ms = excluded.duration_ms"
)
_DELETE_HISTORY = "DELETE FROM {history} WHERE migration_id = :id"
_LOG = ("INSERT INTO {log} (migration_id, operation, checksum, at, by, detail) "
        "VALUES (:id, :op, :checksum, {at}, :by, :detail)")
_OPERATIONS = {
    "apply": (_UPSERT_HISTORY, _LOG, *yoyo_adapter.OPERATIONS["apply"]),
    "mark": (_UPSERT_HISTORY, _LOG, *yoyo_adapter.OPERATIONS["mark"]),
    "rollback": (_DELETE_HISTORY, _LOG, *yoyo_adapter.OPERATIONS["rollback"]),
    "unmark": (_DELETE_HISTORY, _LOG, *yoyo_adapter.OPERATIONS["unmark"]),
    "rehash": ("UPDATE {history} SET checksum = :checksum WHERE migration_id = :id", _LOG),
    # A yoyo post-apply hook ran (after migrations were applied): audit trail only.
    "post-apply": (_LOG,),
}
_NAMED = re.compile(r"(?<![:\w]):([a-z_]+)\b")  # :name (not ::type)


class Bookkeeping:
    """The bookkeeping statements of one run on one connection, every value quoted as a literal
    so that they can be sent with other statements in one query. The run's constants (tables,
    who) are quoted once; each migration quotes only its own values.

    ``duration_ms=None``: the time since the migration began, measured by the database as the
    row is written (``dialect.clock``), for a migration sent in the same query as its bookkeeping.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        quote = self._quote
        tables = {"history": HISTORY, "log": LOG, "yoyo_migration": yoyo_adapter.MIGRATION_TABLE,
                  "yoyo_log": yoyo_adapter.LOG_TABLE}
        self._constants = {slot: db.qualify(name) for slot, name in tables.items()}
        self._constants.update(by=quote(actor(db.dialect.db_user(db))), user=quote(os_user()), host=quote(host()))
        self._templates: dict[tuple[str, int | None], list[str]] = {}

    def _quote(self, value: str | None) -> str:
        return self.db.dialect.literal(self.db, value)

    def statements(self, migration: MigrationFile, operation: str, duration_ms: int | None = 0,
                   detail: str | None = None) -> list[str]:
        """The statements recording ``operation`` for ``migration`` (one on PostgreSQL)."""
        key = (operation, duration_ms)
        templates = self._templates.get(key)
        if templates is None:
            templates = self._templates[key] = self._make(operation, duration_ms)
        at, at_utc = self.db.dialect.clock(self.db)
        quote = self._quote
        values = {"id": quote(migration.id), "checksum": quote(migration.checksum),
                  "hash": quote(yoyo_adapter.migration_hash(migration.id)), "uid": quote(str(uuid.uuid4())),
                  "detail": quote(detail), "at": at, "at_utc": at_utc}
        return [t.format_map(values) for t in templates]

    # -- a batch (runner.engine): planned once, executed per migration --------------------------
    PREPARED = "migrate_bookkeeping"  # the name of a batch's prepared statement (one batch at a time)

    def prepare(self, operation: str) -> str:
        """PREPARE the statement recording ``operation`` with the server's clock and duration,
        the migration's own values as parameters (:meth:`execute`). Parsing and planning the
        four writes once per batch rather than once per migration: about a sixth of a batch's
        time on the server (docs/benchmarks.md). For a dialect that runs one query with the
        server's clock (PostgreSQL: ``Dialect.one_query``)."""
        statement, = self._make(operation, None)
        at, at_utc = self.db.dialect.clock(self.db)
        params = {"id": "$1", "checksum": "$2", "hash": "$3", "uid": "$4", "detail": "$5", "at": at, "at_utc": at_utc}
        return (f"PREPARE {self.PREPARED}(pg_catalog.text, pg_catalog.text, pg_catalog.text, pg_catalog.text, "
                f"pg_catalog.text) AS {statement.format_map(params)}")

    def execute(self, migration: MigrationFile, detail: str | None = None) -> str:
        """Run the statement :meth:`prepare` made, for ``migration``."""
        quote = self._quote
        values = (migration.id, migration.checksum, yoyo_adapter.migration_hash(migration.id), str(uuid.uuid4()), detail)
        return f"EXECUTE {self.PREPARED}({', '.join(quote(v) for v in values)})"

    def check(self, migrations: Sequence[MigrationFile]) -> list[str]:
        """Statements that fail the transaction unless the history rows of ``migrations`` are all
        there: a batch commits only with all of its bookkeeping, whatever its migrations did."""
        ids = self._quote(json.dumps([m.id for m in migrations]))
        wanted = "pg_catalog.current_setting('migrate.batch')::pg_catalog.jsonb"
        body = (f" BEGIN IF (SELECT pg_catalog.count(*) FROM {self._constants['history']} WHERE migration_id "
                f"OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT pg_catalog.jsonb_array_elements_text({wanted})))) "
                f"OPERATOR(pg_catalog.<>) pg_catalog.jsonb_array_length({wanted}) THEN RAISE EXCEPTION 'the history "
                f"rows of this batch are not all there: a migration of it changed the bookkeeping'; END IF; END ")
        return [f"SELECT pg_catalog.set_config('migrate.batch', {ids}, true)", f"DO {dollar_quote(body, 'migrate_batch')}"]

    def unprepare(self) -> str:
        """Drop the statement :meth:`prepare` made (it outlives a ROLLBACK)."""
        return f"DEALLOCATE {self.PREPARED}"

    def _make(self, operation: str, duration_ms: int | None) -> list[str]:
        ms = self.db.dialect.migration_duration_sql if duration_ms is None else str(int(duration_ms))
        slots = _Keep({k: _brace(v) for k, v in self._constants.items()}, op=_brace(self._quote(operation)), ms=ms)
        return self.db.dialect.combine([_NAMED.sub(r"{\1}", sql).format_map(slots) for sql in _OPERATIONS[operation]])


class _Keep(dict):  # type: ignore[type-arg]
    """format_map() mapping that leaves the per-migration ``{slots}`` in place."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def _brace(text: str) -> str:
    """``text`` safe inside a str.format() template."""
    return text.replace("{", "{{").replace("}", "}}")


def record(db: Database, migration: MigrationFile, operation: str, duration_ms: int = 0, detail: str | None = None,
           then: list[str] | None = None, bookkeeping: Bookkeeping | None = None) -> None:
    """Write the rows for ``operation`` (apply, mark, rollback, unmark, rehash, post-apply) in the
    caller's transaction; ``then``: statements to send right after them (in the same round trip
    where the dialect can), e.g. the executor's COMMIT."""
    statements = (bookkeeping or Bookkeeping(db)).statements(migration, operation, duration_ms, detail)
    db.dialect.execute_all(db, statements + list(then or ()))
