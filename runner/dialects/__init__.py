"""What differs between databases, one module per database.

Code above this package is dialect-neutral: it asks the :class:`Dialect` of its
:class:`runner.db.Database` (``db.dialect``). Adding a database means adding a module here
(and one in :mod:`compat.dialects` for its shim views), not editing branches elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from runner.db import Database
    from runner.urls import DatabaseURL


@dataclass(frozen=True)
class LockHolder:
    """Who holds the runner's lock. On SQLite only ``pid`` (from the lock file) is known."""

    pid: str
    user: str | None = None
    application_name: str | None = None
    client_addr: str | None = None
    backend_start: datetime | None = None
    state: str | None = None
    running_for: timedelta | None = None
    query: str | None = None
    lock_file: str | None = None
    # A lease (the lock through a connection pooler, runner.lease): ``pid`` is host:pid of the runner.
    lease_expires_at: datetime | None = None
    lease_left: timedelta | None = None
    lease_renewed_at: datetime | None = None

    @property
    def looks_like_runner(self) -> bool:
        """The runner connects with application_name ``migrate`` (unless the URL names another)."""
        return (self.lock_file is not None or self.lease_expires_at is not None
                or (self.application_name or "").startswith("migrate"))

    def describe(self) -> str:
        if self.lock_file:
            return f"pid {self.pid} (lock file {self.lock_file})"
        if self.lease_expires_at is not None:
            left = max(0, int(self.lease_left.total_seconds())) if self.lease_left is not None else "?"
            renewed = f"{self.lease_renewed_at:%Y-%m-%d %H:%M:%S}" if self.lease_renewed_at else "?"
            return (f"the runner {self.pid} (lease in _migrate_lock, user {self.user}, application_name="
                    f"{self.application_name!r}, last renewed {renewed} UTC, expires in {left}s unless renewed)")
        started = f"{self.backend_start:%Y-%m-%d %H:%M:%S}" if self.backend_start else "?"
        running = f", current statement running for {int(self.running_for.total_seconds())}s" if self.running_for else ""
        kind = ("looks like a migrate runner" if self.looks_like_runner else
                "does not look like a migrate runner: another client took the runner's lock key")
        return (f"pid {self.pid} (user {self.user}, application_name={self.application_name!r}, "
                f"client {self.client_addr or 'local socket'}, connected {started}, state {self.state}{running}; "
                f"{kind})")


@dataclass(frozen=True)
class Blocker:
    """A session holding a lock a migration waits for."""

    pid: int
    application_name: str | None
    state: str | None
    query_start: str | None
    xact_start: str | None
    table: str
    mode: str

    def describe(self) -> str:
        return (f"pid {self.pid} (application_name={self.application_name!r}, state={self.state}, "
                f"transaction started {self.xact_start}, query started {self.query_start}, "
                f"holds {self.mode} on {self.table})")


@dataclass(frozen=True)
class Activity:
    """What a session is doing (a heartbeat of a long migration, runner.heartbeat)."""

    state: str | None  # active, idle in transaction, ...
    running_s: float | None  # how long its current statement has been running
    wait_event_type: str | None  # Lock, IO, Timeout, ... (None: on CPU)
    wait_event: str | None  # relation, transactionid, PgSleep, ...
    blocked_by: tuple[int, ...] = ()  # pg_blocking_pids()
    blocker: str | None = None  # the first blocking session, described

    def waiting_on(self) -> str:
        """``Lock:relation, blocked by pid 123 (...)``, ``Timeout:PgSleep``, or ``running (no wait)``."""
        what = f"{self.wait_event_type}:{self.wait_event}" if self.wait_event_type else "running (no wait)"
        if self.blocked_by:
            pids = ", ".join(str(p) for p in self.blocked_by)
            what += f", blocked by pid {pids}" + (f" ({self.blocker})" if self.blocker else "")
        return what

    def as_dict(self) -> dict[str, Any]:
        return {"state": self.state, "running_s": self.running_s, "wait_event_type": self.wait_event_type,
                "wait_event": self.wait_event, "blocked_by": list(self.blocked_by), "blocker": self.blocker}


class ScriptFailed(Exception):
    """A statement of a one-query script (``Dialect.run_script``) failed: ``index`` is its position
    in the list (None when it cannot be told), ``error`` the driver's exception."""

    def __init__(self, error: BaseException, index: int | None) -> None:
        super().__init__(str(error))
        self.error = error
        self.index = index


class Dialect(Protocol):
    """The operations that differ between databases. See :mod:`runner.dialects.postgresql`."""

    name: str
    errors: tuple[type[BaseException], ...]  # the driver's error classes
    one_query: bool  # whether a migration and its bookkeeping can go as one query (run_script)
    types: dict[str, str]  # DDL: timestamp, json, serial_key, now_default; json_param (a %s placeholder for JSON)
    lints: bool  # whether `migrate lint` (PostgreSQL's grammar) applies
    for_update: str  # row-locking clause of a SELECT ("" where the whole database is locked)

    def connect(self, address: DatabaseURL, *, schema: str | None, read_only: bool, pooler: str = "auto") -> Database: ...
    def placeholders(self, sql: Any) -> Any: ...
    def transaction_settings(self, db: Database) -> list[str]: ...
    def literal(self, db: Database, value: Any) -> str: ...
    def table_exists(self, db: Database, name: str) -> bool: ...
    def plain_table_exists(self, db: Database, name: str) -> bool: ...
    def read_untrusted(self, db: Database, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...
    def now(self, db: Database) -> datetime: ...
    def ts_in(self, value: datetime | None) -> Any: ...
    def ts_out(self, value: Any) -> datetime | None: ...
    def json_out(self, value: Any) -> Any: ...
    def actor(self, db: Database) -> tuple[str, str]: ...
    def db_user(self, db: Database) -> str | None: ...

    # a migration's transaction
    def migration_start(self, db: Database, lock_timeout: timedelta, flush: bool, local: bool = True) -> list[str]: ...
    def migration_search_path(self, db: Database, local: bool) -> list[str]: ...
    def migration_end(self, db: Database) -> list[str]: ...
    def session_reset(self, db: Database) -> list[str]: ...
    def batch_reset(self, db: Database) -> list[str]: ...  # between two migrations of a batch
    def run_script(self, db: Database, statements: list[str]) -> None: ...
    migration_duration_sql: str
    def migration_started(self) -> str: ...
    def clock(self, db: Database) -> tuple[str, str]: ...
    def combine(self, statements: list[str]) -> list[str]: ...
    def execute_all(self, db: Database, statements: list[str]) -> None: ...
    def ensure_schema(self, db: Database) -> None: ...

    # errors
    def is_connection_error(self, err: BaseException) -> bool: ...
    def is_lock_timeout(self, err: BaseException) -> bool: ...
    def server_message(self, err: BaseException) -> str: ...

    # locks
    def try_lock(self, db: Database) -> bool: ...
    def unlock(self, db: Database) -> None: ...
    def lock_holder(self, db: Database) -> LockHolder | None: ...
    def blockers(self, db: Database) -> list[Blocker]: ...
    # The heartbeat (runner.heartbeat): the session's id, and on another connection what it does.
    def session_id(self, db: Database) -> int | None: ...
    def activity(self, db: Database, session: int) -> Activity | None: ...

    # readiness (migrate wait): why a database that accepts connections cannot be migrated yet
    def not_ready(self, db: Database) -> str | None: ...

    # throwaway databases (the pytest plugin): create an empty one next to ``server_url``, drop it
    def create_scratch(self, server_url: str, name: str, directory: str) -> str: ...
    def drop_scratch(self, server_url: str, url: str) -> None: ...

    # catalog
    def is_fresh(self, db: Database, own_tables: Sequence[str]) -> bool: ...
    def others_connected(self, db: Database) -> bool: ...
    def has_event_triggers(self, db: Database) -> bool: ...
    def server_version(self, db: Database) -> int | None: ...
    def catalog_columns(self, db: Database, schema: str | None) -> list[tuple[str, str, str, str, bool, int]]: ...
    def catalog_indexes(self, db: Database, schema: str | None) -> list[tuple[str, str, str]]: ...
    def relation_columns(self, db: Database, schemas: Sequence[str]) -> dict[tuple[str, str], list[str]]: ...
    def table_columns(self, db: Database, table: str) -> list[str] | None: ...


def error_kind(err: BaseException) -> str | None:
    """``"connection"`` when ``err`` is a driver error meaning the connection is gone, ``"database"``
    for another driver error of any dialect, None for anything else (a bug)."""
    from runner.dialects.postgresql import DIALECT as POSTGRESQL
    from runner.dialects.sqlite import DIALECT as SQLITE

    for dialect in (POSTGRESQL, SQLITE):
        if isinstance(err, dialect.errors):
            return "connection" if dialect.is_connection_error(err) else "database"
    return None


def for_url(address: DatabaseURL) -> Dialect:
    """The dialect of a parsed URL."""
    if address.dialect == "postgresql":
        from runner.dialects.postgresql import DIALECT
    else:
        from runner.dialects.sqlite import DIALECT
    return DIALECT
