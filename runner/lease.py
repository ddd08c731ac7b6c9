"""The runner's lock through a connection pooler: a lease row in ``_migrate_lock``.

A session advisory lock means nothing behind a transaction pooler (it is taken on whichever
server connection the statement landed on, and stays there when the runner dies). A lease lives
in the database instead: one row per runner schema with a holder token and an expiry by the
database's clock. The holder renews it every third of the lease from a connection of its own
(so a migration running for an hour keeps it); a runner killed with SIGKILL stops renewing and
its lease expires at most ``lock_lease`` later, when the next runner takes it over. A holder that
finds its lease taken over (it could not renew for a whole lease) cancels its running statement.

The table is owned by this module; it is created (with the runner's schema) in a transaction
that holds a transaction-level advisory lock, so concurrent first runners do not race. Every
statement runs in a transaction with ``SET LOCAL search_path = pg_catalog, pg_temp`` and names
pg_catalog's operators, since the server connection a pooler hands out carries whatever
search_path its last client left.

A runner connected directly still takes the session advisory lock, and each kind of runner also
checks for the other (the lease holder checks the advisory lock after writing its row; the
advisory lock holder checks for a live lease after taking its lock), so a direct runner and a
pooled one never both run.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from dataclasses import dataclass, field
from datetime import timedelta, timezone
from typing import TYPE_CHECKING, Any

from runner.db import dollar_quote, quote_identifier, transaction
from runner.dialects import LockHolder
from runner.logs import get_logger

if TYPE_CHECKING:
    from runner.db import Database

log = get_logger("migrate.lease")

TABLE = "_migrate_lock"
TABLES = (TABLE,)
NAME = "runner"
DEFAULT_LEASE = timedelta(seconds=30)
SAFE_PATH = "SET LOCAL search_path TO pg_catalog, pg_temp"


def _table(db: Database) -> str:
    return f"{quote_identifier(db.schema or 'public')}.{quote_identifier(TABLE)}"


def lease_length(db: Database) -> timedelta:
    value = db.facts.get("lock_lease")
    return value if isinstance(value, timedelta) and value > timedelta(0) else DEFAULT_LEASE


def ensure_table(db: Database, lock_key: tuple[int, int]) -> None:
    """Create the runner's schema and the lease table when missing (serialised by a
    transaction-level advisory lock on the runner's key)."""
    if db.facts.get("lease_table") or (_exists(db) and db.table_exists(TABLE)):
        db.facts["lease_table"] = True
        return
    with transaction(db):
        db.execute(SAFE_PATH)
        db.execute("SELECT pg_catalog.pg_advisory_xact_lock(%s::pg_catalog.int4, %s::pg_catalog.int4)", lock_key)
        db.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_identifier(db.schema or 'public')}")
        if not db.table_exists(TABLE):
            db.execute(
                f"CREATE TABLE {_table(db)} (name pg_catalog.text PRIMARY KEY, holder pg_catalog.text NOT NULL, "
                "client pg_catalog.text NOT NULL, db_user pg_catalog.text, application_name pg_catalog.text, "
                "acquired_at pg_catalog.timestamptz NOT NULL, renewed_at pg_catalog.timestamptz NOT NULL, "
                "expires_at pg_catalog.timestamptz NOT NULL)")
    db.facts["lease_table"] = True


def _exists(db: Database) -> bool:
    return db.scalar("SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
                     "WHERE n.nspname = %s AND c.relname = %s", (db.schema or "public", TABLE)) is not None


def live_holder(db: Database, token: str | None = None) -> LockHolder | None:
    """Who holds an unexpired lease (other than ``token``), or None; no table: None."""
    if not _exists(db) or not db.table_exists(TABLE):
        return None
    with transaction(db):
        db.execute(SAFE_PATH)
        row = db.execute(
            f"SELECT client, db_user, application_name, acquired_at, renewed_at, expires_at, "
            f"expires_at OPERATOR(pg_catalog.-) pg_catalog.clock_timestamp() FROM {_table(db)} "
            "WHERE name = %s AND expires_at OPERATOR(pg_catalog.>) pg_catalog.clock_timestamp() "
            "AND holder OPERATOR(pg_catalog.<>) %s", (NAME, token or "")).fetchone()
    if row is None:
        return None
    client, user, app, acquired, renewed, expires, left = row
    return LockHolder(client, user, app, None, acquired.astimezone(timezone.utc), None, None, None,
                      lease_expires_at=expires.astimezone(timezone.utc), lease_left=left,
                      lease_renewed_at=renewed.astimezone(timezone.utc))


@dataclass
class Lease:
    """This runner's lease on ``db`` (``lock_key``: the runner's advisory key, to see a direct runner)."""

    db: Database
    lock_key: tuple[int, int]
    length: timedelta
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    lost: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def client(self) -> str:
        return f"{socket.gethostname()}:{os.getpid()}"

    def try_acquire(self) -> bool:
        """Take the lease when it is free or expired; False when another runner holds it (or
        a direct runner holds the advisory lock)."""
        db = self.db
        ensure_table(db, self.lock_key)
        seconds = self.length.total_seconds()
        try:
            with transaction(db):
                db.execute(SAFE_PATH)
                # A holder's migration transaction keeps the row locked (guard_sql): do not queue behind it.
                db.execute("SET LOCAL lock_timeout = '200ms'")
                row = self._insert(db, seconds)
        except db.dialect.errors as err:
            if db.dialect.is_lock_timeout(err):
                return False
            raise
        if row is None or row[0] != self.token:
            return False
        if self._advisory_held():
            self.release()
            return False
        self._start()
        return True

    def _insert(self, db: Database, seconds: float) -> Any:
        """Insert the lease row, or take over an expired one; the row holding this token, or None."""
        return db.execute(
                f"INSERT INTO {_table(db)} AS l (name, holder, client, db_user, application_name, acquired_at, "
                "renewed_at, expires_at) VALUES (%s, %s, %s, current_user, "
                "pg_catalog.current_setting('application_name', true), pg_catalog.clock_timestamp(), "
                "pg_catalog.clock_timestamp(), pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) "
                "pg_catalog.make_interval(secs => %s::pg_catalog.float8)) "
                "ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, client = EXCLUDED.client, "
                "db_user = EXCLUDED.db_user, application_name = EXCLUDED.application_name, "
                "acquired_at = EXCLUDED.acquired_at, renewed_at = EXCLUDED.renewed_at, "
                "expires_at = EXCLUDED.expires_at "
                "WHERE l.expires_at OPERATOR(pg_catalog.<=) pg_catalog.clock_timestamp() RETURNING l.holder",
                (NAME, self.token, self.client, seconds)).fetchone()

    def guard_sql(self) -> str:
        """A statement for the start of each of the holder's transactions (a migration's, shims
        drop's): it locks the lease row FOR SHARE until the transaction ends, so no other runner
        can take the lease over while a migration is being applied, and fails the transaction
        when the lease is no longer this runner's. Exactly-once does not rest on clocks."""
        table = _table(self.db).replace("'", "''").replace("%", "%%")  # a RAISE format's literal
        body = (f" BEGIN PERFORM 1 FROM {_table(self.db)} WHERE name = 'runner' "
                f"AND holder OPERATOR(pg_catalog.=) '{self.token}' FOR SHARE; IF NOT FOUND THEN RAISE EXCEPTION "
                f"'this runner no longer holds the migration lease in {table}: another runner took it over after "
                f"it was not renewed for a whole lock_lease'; END IF; END ")
        return f"DO {dollar_quote(body, 'migrate_lease')}"

    def _advisory_held(self) -> bool:
        """Whether a runner connected directly holds the runner's session advisory lock."""
        classid, objid = self.lock_key
        return bool(self.db.scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND granted "
            "AND classid = %s::pg_catalog.oid AND objid = %s::pg_catalog.oid AND objsubid = 2 "
            "AND database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()))",
            (classid, objid)))

    def renew(self, db: Database | Any) -> bool:
        """Push the expiry one lease ahead; False when the lease is no longer this runner's."""
        execute = db.execute
        execute("BEGIN")
        try:
            execute(SAFE_PATH)
            row = execute(
                f"UPDATE {_table(self.db)} SET renewed_at = pg_catalog.clock_timestamp(), expires_at = "
                "pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) pg_catalog.make_interval(secs => %s::pg_catalog.float8) "
                "WHERE name = %s AND holder OPERATOR(pg_catalog.=) %s RETURNING 1",
                (self.length.total_seconds(), NAME, self.token)).fetchone()
            execute("COMMIT")
        except BaseException:
            try:
                execute("ROLLBACK")
            except Exception:  # noqa: BLE001 - the connection may be gone
                pass
            raise
        return row is not None

    def release(self) -> None:
        """Stop renewing and delete the row (when it is still this runner's)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        db = self.db
        with transaction(db):
            db.execute(SAFE_PATH)
            db.execute(f"DELETE FROM {_table(db)} WHERE name = %s AND holder OPERATOR(pg_catalog.=) %s",
                       (NAME, self.token))

    # -- renewal ------------------------------------------------------------------------
    def _start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew_loop, name="migrate-lease", daemon=True)
        self._thread.start()

    def _renew_loop(self) -> None:
        """Renew every third of the lease on a connection of its own (the runner's may be busy
        for hours with one statement)."""
        import psycopg

        interval = max(0.2, self.length.total_seconds() / 3)
        connection = None
        while not self._stop.wait(interval):
            try:
                if connection is None or connection.closed:
                    connection = psycopg.connect(**self.db.address.connect_args, autocommit=True)
                    connection.prepare_threshold = None
                if not self.renew(connection):
                    self._lose()
                    return
            except psycopg.Error as err:
                log.warning("could not renew the migration lease; retrying", error=str(err).splitlines()[0])
                if connection is not None:
                    connection.close()
                connection = None
        if connection is not None:
            connection.close()

    def _lose(self) -> None:
        """Another runner took the lease over (this one could not renew it for a whole lease):
        stop the running statement, so this runner does not go on beside it."""
        self.lost.set()
        log.error("the migration lease was taken over by another runner: cancelling the running statement")
        try:
            self.db.connection.cancel()
        except Exception:  # noqa: BLE001 - nothing running, or the connection is gone
            pass
