"""Apply or roll back one migration: statements, hooks and bookkeeping in ONE transaction.

yoyo runs each migration on a new connection and records it afterwards on
another, so a crash in between leaves the schema changed but unrecorded. Here
the steps (executed by yoyo's own step machinery) and the tracking rows commit
together. The connection is reused for speed; session state a migration
changes (search_path, role, timeouts, prepared statements) is reset after each
one, without releasing the runner's session-level advisory lock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import structlog

from runner import history, lockwaits
from runner.config import Settings
from runner.db import Database, is_connection_error, one_line
from runner.errors import DatabaseUnreachable, LockTimeout, MigrateError, MigrationFailed
from runner.hooks import MigrationContext, MigrationHook
from runner.migration import MigrationFile, Statement

log = structlog.get_logger("migrate.executor")


@dataclass
class _Tracker:
    """Which statement is executing, to name it when it fails."""

    current: Statement | None = None


@dataclass
class Executor:
    db: Database
    settings: Settings
    hooks: Sequence[MigrationHook] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._search_path: str | None = None
        self._statement_timeout: str | None = None
        if self.db.dialect == "postgresql":
            from psycopg import sql

            self._search_path, self._statement_timeout = self.db.execute(
                "SELECT current_setting('search_path'), current_setting('statement_timeout')").fetchone()
            conn = self.db.connection
            # Fewer round trips per migration (the runner's own statements are batched):
            # BEGIN + SET LOCAL lock_timeout in one query, the restore in one, COMMIT + reset in one.
            self._begin_sql = "BEGIN; " + lockwaits.set_lock_timeout_sql(self.settings.lock_timeout, local=True)
            self._restore_sql = sql.SQL(
                "RESET ROLE; SELECT set_config('search_path', {}, true), set_config('statement_timeout', {}, true)"
            ).format(sql.Literal(self._search_path), sql.Literal(self._statement_timeout)).as_string(conn)
            self._commit_reset_sql = "COMMIT; " + self._reset_sql()
            # The session reset runs DEALLOCATE ALL after every migration, so psycopg's automatic
            # server-side prepared statements would only be prepared and deallocated again.
            conn.prepare_threshold = None

    # -- public -------------------------------------------------------------------------
    def apply(self, migration: MigrationFile, previous: MigrationFile | None) -> float:
        """Apply ``migration``; returns its duration in seconds."""
        return self._run(migration, previous, "apply")

    def rollback(self, migration: MigrationFile, previous: MigrationFile | None) -> float:
        return self._run(migration, previous, "rollback")

    # -- internals ----------------------------------------------------------------------
    def _run(self, migration: MigrationFile, previous: MigrationFile | None, direction: str) -> float:
        ctx = MigrationContext(self.db.connection, self.db.dialect, self.db.schema, migration, previous,
                               self.settings, direction)
        started = time.perf_counter()
        attempts = 1 + (self.settings.lock_retries if migration.transactional else 0)
        for attempt in range(1, attempts + 1):
            tracker = _Tracker()
            try:
                if migration.transactional:
                    self._transactional(migration, ctx, tracker, started)
                else:
                    self._non_transactional(migration, ctx, tracker, started)
                return time.perf_counter() - started
            except MigrateError:
                self._recover()
                raise
            except Exception as err:  # noqa: BLE001 - translated into one-line errors below
                self._recover()
                if is_connection_error(err):
                    raise DatabaseUnreachable(
                        f"lost the connection to the database while applying {migration.id}: {one_line(err)}; "
                        "the migration's transaction was not committed: run `migrate up` again"
                        if migration.transactional else
                        f"lost the connection to the database while applying non-transactional {migration.id}: "
                        f"{one_line(err)}; statements that completed stay applied: check, then run `migrate up` again"
                    ) from None
                if not isinstance(err, self.db.backend.DatabaseError):
                    raise
                if lockwaits.is_lock_timeout(err):
                    if attempt < attempts:
                        pause = lockwaits.backoff(attempt)
                        log.warning("lock timeout, retrying", migration=migration.id, attempt=attempt,
                                    retry_in_s=round(pause, 2))
                        time.sleep(pause)
                        continue
                    who = lockwaits.describe_blockers(
                        lockwaits.blockers(self.db, tracker.current.sql if tracker.current else ""))
                    raise LockTimeout(
                        f"{self._where(migration, tracker)}: could not lock within lock_timeout="
                        f"{self.settings.lock_timeout.total_seconds():g}s after {attempt} attempt(s); "
                        f"rolled back. Blocking: {who}"
                    ) from None
                raise MigrationFailed(self._failure(migration, tracker, err)) from None
        raise AssertionError("unreachable")

    def _transactional(self, migration: MigrationFile, ctx: MigrationContext, tracker: _Tracker, started: float) -> None:
        if self.db.dialect == "postgresql":
            self._transactional_pg(migration, ctx, tracker, started)
            return
        backend = self.db.backend
        with backend.transaction():
            if self.db.dialect == "postgresql":
                self.db.execute(lockwaits.set_lock_timeout_sql(self.settings.lock_timeout, local=True))
            for hook in self.hooks:
                hook.before(ctx)
            self._steps(migration, ctx.direction, tracker).process_steps(backend, ctx.direction)
            tracker.current = None
            self._restore_for_bookkeeping()
            for hook in self.hooks:
                hook.after(ctx)
            self._record(migration, ctx.direction, started)
        self._reset_session()

    def _transactional_pg(self, migration: MigrationFile, ctx: MigrationContext, tracker: _Tracker,
                          started: float) -> None:
        """The same steps as the generic path, in five round trips (plus one per statement).

        BEGIN + SET LOCAL lock_timeout; hooks' before(); each statement; restore of role,
        search_path and statement_timeout; hooks' after(); the bookkeeping rows (pipelined);
        COMMIT + session reset. On any error the caller's ``_recover`` rolls back (yoyo's
        ``_in_transaction`` flag is set for the whole block, as ``backend.transaction()`` does).
        """
        backend = self.db.backend
        conn = self.db.connection
        assert not backend._in_transaction
        backend._in_transaction = True
        conn.execute(self._begin_sql)
        for hook in self.hooks:
            hook.before(ctx)
        if migration.format == "python":
            self._steps(migration, ctx.direction, tracker).process_steps(backend, ctx.direction)
        else:
            # The SQL statements directly, without yoyo's per-step savepoints (a failure rolls
            # back the whole transaction anyway); our own cursor: yoyo prints result rows to stdout.
            statements = migration.up if ctx.direction == "apply" else list(reversed(migration.down))
            cursor = conn.cursor()
            try:
                for statement in statements:
                    tracker.current = statement
                    cursor.execute(statement.sql)
            finally:
                cursor.close()
        tracker.current = None
        self._restore_for_bookkeeping()
        for hook in self.hooks:
            hook.after(ctx)
        self._record(migration, ctx.direction, started)
        conn.execute(self._commit_reset_sql)
        backend._in_transaction = False

    def _non_transactional(self, migration: MigrationFile, ctx: MigrationContext, tracker: _Tracker, started: float) -> None:
        if self.db.dialect == "postgresql":
            self.db.execute(lockwaits.set_lock_timeout_sql(self.settings.lock_timeout, local=False))
        for hook in self.hooks:
            hook.before(ctx)
        self._steps(migration, ctx.direction, tracker).process_steps(self.db.backend, ctx.direction)
        tracker.current = None
        self._reset_session()
        with self.db.backend.transaction():
            for hook in self.hooks:
                hook.after(ctx)
            self._record(migration, ctx.direction, started)

    def _steps(self, migration: MigrationFile, direction: str, tracker: _Tracker) -> Any:
        """A yoyo Migration carrying this file's steps, executed by yoyo's process_steps."""
        from yoyo.migrations import Migration, StepCollector

        yoyo_migration = Migration(migration.id, migration.path, None)
        yoyo_migration.use_transactions = migration.transactional
        yoyo_migration._depends = set()
        if migration.format == "python":
            yoyo_migration.steps = migration.python_steps
            return yoyo_migration
        collector = StepCollector(migration=yoyo_migration)
        if direction == "apply":
            for statement in migration.up:
                collector.add_step(_sql_step(statement, tracker))
        else:
            for statement in reversed(migration.down):
                collector.add_step(None, _sql_step(statement, tracker))
        yoyo_migration.steps = collector.create_steps(migration.transactional)
        return yoyo_migration

    def _record(self, migration: MigrationFile, direction: str, started: float) -> None:
        duration_ms = int((time.perf_counter() - started) * 1000)
        if self.db.dialect == "postgresql" and self.db.backend._in_transaction:
            # One round trip for the six bookkeeping statements (errors surface at the pipeline's end).
            with self.db.connection.pipeline():
                history.record(self.db, migration, direction, duration_ms)
        else:
            history.record(self.db, migration, direction, duration_ms)

    def _restore_for_bookkeeping(self) -> None:
        """Undo, for the rest of this transaction, a role, search_path or statement_timeout the migration set."""
        if self.db.dialect == "postgresql":
            self.db.connection.execute(self._restore_sql)

    def _reset_session(self) -> None:
        """Session settings a migration changed must not leak into the next one.

        Not DISCARD ALL: it would release the runner's advisory lock.
        """
        if self.db.dialect == "postgresql":
            self.db.connection.execute(self._reset_sql())

    def _reset_sql(self) -> str:
        return ("RESET ALL; RESET ROLE; SET SESSION AUTHORIZATION DEFAULT; DEALLOCATE ALL; CLOSE ALL; DISCARD TEMP"
                + (f"; {self.db.session_sql}" if self.db.session_sql else ""))

    def _recover(self) -> None:
        """Leave the backend usable after a failure (yoyo keeps its own transaction flag)."""
        backend = self.db.backend
        try:
            if backend._in_transaction:
                backend.rollback()
        except Exception:  # noqa: BLE001 - the connection may be gone
            pass
        backend._in_transaction = False

    @staticmethod
    def _where(migration: MigrationFile, tracker: _Tracker) -> str:
        if tracker.current is not None:
            return f"{migration.path}:{tracker.current.line}"
        return migration.path

    def _failure(self, migration: MigrationFile, tracker: _Tracker, err: BaseException) -> str:
        where = self._where(migration, tracker)
        statement = ""
        if tracker.current is not None:
            first = " ".join(tracker.current.sql.split())
            statement = f" in statement `{first[:120]}{'...' if len(first) > 120 else ''}`"
        done = "rolled back" if migration.transactional else "statements before it stay applied (non-transactional)"
        return f"{where}: migration {migration.id} failed{statement}: {one_line(err)}; {done}"


def _sql_step(statement: Statement, tracker: _Tracker):
    def run(connection: Any) -> None:
        # Our own step instead of yoyo's string step: yoyo prints result rows to stdout.
        tracker.current = statement
        cursor = connection.cursor()
        try:
            cursor.execute(statement.sql)
        finally:
            cursor.close()

    return run
