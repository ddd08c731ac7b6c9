"""The runner's mutual exclusion: one `migrate up`/`down` per database at a time.

PostgreSQL: a session-level advisory lock, released by the server when the
session ends, so a killed runner never leaves a stale lock. SQLite: an
exclusive ``flock`` on ``<database>.lock``, released by the kernel when the
process dies. Waiting is bounded by ``lock_wait``; on timeout the error names
the holder.
"""

from __future__ import annotations

import os
import random
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from runner.db import Database
from runner.errors import LockTimeout
from runner.logs import get_logger

log = get_logger("migrate.lock")

LOCK_CLASS = 0x6D677274  # "mgrt": first key of the two-int advisory lock


def lock_key(db: Database) -> tuple[int, int]:
    """Advisory lock key (classid, objid) for the runner's schema."""
    return LOCK_CLASS, zlib.crc32((db.schema or "").encode()) & 0x7FFFFFFF


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

    def describe(self) -> str:
        if self.lock_file:
            return f"pid {self.pid} (lock file {self.lock_file})"
        started = f"{self.backend_start:%Y-%m-%d %H:%M:%S}" if self.backend_start else "?"
        running = f", current statement running for {int(self.running_for.total_seconds())}s" if self.running_for else ""
        return (f"pid {self.pid} (user {self.user}, application_name={self.application_name!r}, "
                f"client {self.client_addr or 'local socket'}, connected {started}, state {self.state}{running})")


def holder(db: Database) -> LockHolder | None:
    """Who else holds the runner's lock, or None."""
    if db.dialect != "postgresql":
        return _file_holder(f"{db.address.sqlite_path}.lock")
    classid, objid = lock_key(db)
    row = db.execute(
        "SELECT a.pid, a.usename, a.application_name, host(a.client_addr), a.backend_start, a.state, "
        "now() - a.query_start, left(a.query, 200) "
        "FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = :c AND l.objid = :o "
        "AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()) "
        "AND l.pid <> pg_backend_pid()",
        {"c": classid, "o": objid},
    ).fetchone()
    if row is None:
        return None
    return LockHolder(str(row[0]), row[1], row[2], row[3], row[4], row[5], row[6], row[7])


def _file_holder(path: str) -> LockHolder | None:
    import fcntl

    if not os.path.exists(path):
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return LockHolder(os.pread(fd, 32, 0).decode(errors="replace").strip() or "?", lock_file=path)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def describe_holder(info: LockHolder | None) -> str:
    return info.describe() if info else "another runner"


@contextmanager
def runner_lock(db: Database, wait: timedelta) -> Iterator[None]:
    """Hold the runner's lock for the block; raise LockTimeout after ``wait``."""
    if db.dialect == "postgresql":
        with _advisory_lock(db, wait):
            yield
    else:
        with _file_lock(db, wait):
            yield


def _poll(try_once, wait: timedelta, describe) -> None:
    deadline = time.monotonic() + wait.total_seconds()
    delay = 0.05
    announced = False
    while not try_once():
        if time.monotonic() >= deadline:
            raise LockTimeout(f"could not get the migration lock within {wait.total_seconds():g}s: held by {describe()}")
        if not announced:
            log.info("waiting for the migration lock", holder=describe())
            announced = True
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())) * random.uniform(0.8, 1.2))
        delay = min(delay * 1.5, 1.0)


@contextmanager
def _advisory_lock(db: Database, wait: timedelta) -> Iterator[None]:
    classid, objid = lock_key(db)
    params = (classid, objid)

    def try_once() -> bool:
        return bool(db.connection.execute("SELECT pg_try_advisory_lock(%s, %s)", params).fetchone()[0])

    _poll(try_once, wait, lambda: describe_holder(holder(db)))
    try:
        yield
    finally:
        try:
            db.connection.execute("SELECT pg_advisory_unlock(%s, %s)", params)
        except Exception:  # noqa: BLE001 - a dead session has released it already
            pass


@contextmanager
def _file_lock(db: Database, wait: timedelta) -> Iterator[None]:
    import fcntl

    path = f"{db.address.sqlite_path}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)

    def try_once() -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return True

    try:
        _poll(try_once, wait, lambda: describe_holder(_file_holder(path)))
        yield
    finally:
        os.close(fd)
