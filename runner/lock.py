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
from datetime import timedelta

import structlog

from runner.db import Database
from runner.errors import LockTimeout

log = structlog.get_logger("migrate.lock")

LOCK_CLASS = 0x6D677274  # "mgrt": first key of the two-int advisory lock


def lock_key(db: Database) -> tuple[int, int]:
    """Advisory lock key (classid, objid) for the runner's schema."""
    return LOCK_CLASS, zlib.crc32((db.schema or "").encode()) & 0x7FFFFFFF


def holder(db: Database) -> dict[str, object] | None:
    """Who holds the runner's advisory lock (PostgreSQL), or None."""
    if db.dialect != "postgresql":
        return None
    classid, objid = lock_key(db)
    row = db.execute(
        "SELECT a.pid, a.application_name, host(a.client_addr), a.backend_start, a.state "
        "FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = :c AND l.objid = :o "
        "AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())",
        {"c": classid, "o": objid},
    ).fetchone()
    if row is None:
        return None
    return {"pid": row[0], "application_name": row[1], "client_addr": row[2],
            "backend_start": row[3].isoformat() if row[3] else None, "state": row[4]}


def describe_holder(info: dict[str, object] | None) -> str:
    if not info:
        return "another runner"
    return (f"pid {info['pid']} (application_name={info['application_name']!r}, "
            f"client {info['client_addr'] or 'local socket'}, connected {info['backend_start']})")


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
    params = {"c": classid, "o": objid}

    def try_once() -> bool:
        return bool(db.execute("SELECT pg_try_advisory_lock(:c, :o)", params).fetchone()[0])

    _poll(try_once, wait, lambda: describe_holder(holder(db)))
    try:
        yield
    finally:
        try:
            db.execute("SELECT pg_advisory_unlock(:c, :o)", params)
        except Exception:  # noqa: BLE001 - a dead session has released it already
            pass


@contextmanager
def _file_lock(db: Database, wait: timedelta) -> Iterator[None]:
    import fcntl

    path = db.backend.uri.database + ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)

    def try_once() -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return True

    def describe() -> str:
        try:
            with open(path, encoding="utf-8") as fh:
                return f"pid {fh.read().strip() or '?'} (lock file {path})"
        except OSError:
            return f"another runner (lock file {path})"

    try:
        _poll(try_once, wait, describe)
        yield
    finally:
        os.close(fd)
