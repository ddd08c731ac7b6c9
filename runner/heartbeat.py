"""The heartbeat of a long migration: every few seconds, what its session waits on.

:class:`Heartbeat` wraps the :class:`runner.engine.Progress` of `migrate up`. While a migration
(or a batch) has been running for ``every`` seconds, a thread reads on a second connection of
its own (opened then, with the runner's safe search_path: ``Dialect.connect``) what the
runner's session is doing (``Dialect.activity``: PostgreSQL's ``pg_stat_activity`` wait event
and ``pg_blocking_pids``) and calls ``progress.running(migration, activity)`` again every
``every`` seconds until the migration finishes. A run whose migrations are all quick opens no
connection and reports nothing. On SQLite, or when the runner's backend is not visible (through
a transaction pooler the driver's pid is the pooler's), ``activity`` says only how long it has
been running.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from runner.db import Database
from runner.dialects import Activity
from runner.logs import get_logger
from runner.migration import MigrationFile

EVERY = 3.0  # seconds between two heartbeats of one migration (and before the first)

log = get_logger("migrate.heartbeat")


@dataclass(frozen=True)
class Beat:
    """One heartbeat: how long the migration has run, and its session's activity if known."""

    elapsed_s: float
    activity: Activity | None

    def waiting_on(self) -> str:
        return self.activity.waiting_on() if self.activity is not None else "running"

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"elapsed_s": round(self.elapsed_s, 1), "waiting_on": self.waiting_on()}
        if self.activity is not None:
            data.update(self.activity.as_dict())
        return data


class Heartbeat:
    """A Progress that passes every call on to ``progress`` and beats while a migration runs.

    Use as a context manager: leaving it stops the thread and closes its connection.
    """

    def __init__(self, db: Database, progress: Any, every: float | None = None) -> None:
        self.db = db
        self.progress = progress
        self.every = EVERY if every is None else every
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._current: tuple[MigrationFile, float] | None = None  # the running migration and when it started
        self._closing = False
        self._batch_left = 0  # migrations of the current batch still to be announced
        self._thread: threading.Thread | None = None
        self._conn: Database | None = None
        self._session = db.dialect.session_id(db)

    def __enter__(self) -> Heartbeat:
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        with self._lock:
            self._closing = True
            self._current = None
        self._wake.set()
        if self._thread is not None:
            # A beat in flight (connecting, reading) ends within this; else the daemon thread is
            # left to die with the process rather than holding up the command's end.
            self._thread.join(timeout=5)

    # -- Progress ---------------------------------------------------------------------------
    def applying(self, migration: MigrationFile, batch: int) -> None:
        self.progress.applying(migration, batch)
        self._watch(migration, batch)

    def applied(self, migration: MigrationFile, seconds: float) -> None:
        self._watch(None)
        self.progress.applied(migration, seconds)

    def failed(self, migration: MigrationFile, error: BaseException) -> None:
        self._watch(None)
        self.progress.failed(migration, error)

    def batch_failed(self, batch: Sequence[MigrationFile], error: str) -> None:
        self._watch(None)
        self.progress.batch_failed(batch, error)

    # -- the thread -------------------------------------------------------------------------
    def _watch(self, migration: MigrationFile | None, batch: int = 1) -> None:
        """Watch ``migration`` from now (None: nothing runs). The migrations of a batch are
        announced one after the other and run together: the watch starts with the first."""
        with self._lock:
            idle = self._current is None
            if migration is None:
                self._current, self._batch_left = None, 0
            elif self._batch_left > 0 and self._current is not None:
                self._current = (migration, self._current[1])
                self._batch_left -= 1
            else:
                self._current = (migration, time.monotonic())
                self._batch_left = batch - 1
            if migration is not None and self._thread is None:
                self._thread = threading.Thread(target=self._run, name="migrate-heartbeat", daemon=True)
                self._thread.start()
        if idle and migration is not None:
            # Only a thread waiting for a migration to start needs waking: one waiting for a beat
            # that is due later finds, when it wakes, the migration now running (which started
            # after the one it waited on, so its first beat is not due sooner). Waking it on every
            # call cost a fresh database's `migrate up` a thread switch per migration.
            self._wake.set()

    def _run(self) -> None:
        try:
            last: tuple[str, float] | None = None  # (migration id, its start): beats are per migration
            next_at = 0.0
            while True:
                with self._lock:
                    current, closing = self._current, self._closing
                if closing:
                    return
                if current is None:
                    timeout = None
                else:
                    key = (current[0].id, current[1])
                    if key != last:
                        last, next_at = key, current[1] + self.every
                    timeout = next_at - time.monotonic()
                    if timeout <= 0:
                        self._beat(current)
                        next_at += self.every
                        continue
                self._wake.wait(timeout)
                self._wake.clear()
        finally:
            self._close()

    def _beat(self, current: tuple[MigrationFile, float]) -> None:
        migration, started = current
        activity = self._activity()
        with self._lock:
            if self._current is None or self._current[0] is not migration:
                return  # finished while we looked
            self.progress.running(migration, Beat(time.monotonic() - started, activity))

    def _activity(self) -> Activity | None:
        if self._session is None:
            return None
        try:
            if self._conn is None:
                self._conn = self.db.dialect.connect(self.db.address, schema=self.db.schema, read_only=True)
                self.db.facts.setdefault("companion_sessions", set()).add(self._conn.dialect.session_id(self._conn))
            return self._conn.dialect.activity(self._conn, self._session)
        except Exception as err:  # noqa: BLE001 - a heartbeat must never break the run
            log.debug("heartbeat could not read the session's activity", error=str(err))
            self._session = None
            return None

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.connection.close()
            except Exception:  # noqa: BLE001
                pass
            self._conn = None
