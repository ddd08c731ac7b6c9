"""Apply or roll back one migration: statements, hooks and bookkeeping in ONE transaction.

yoyo runs each migration on a new connection and records it afterwards on
another, so a crash in between leaves the schema changed but unrecorded. Here
the statements (or, for Python migrations, yoyo's own step machinery), the
hooks and the tracking rows commit together. The connection is reused for speed; session state a migration
changes (search_path, role, timeouts, prepared statements) is reset after each
one, without releasing the runner's session-level advisory lock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

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
        # The runner's own statements are batched: BEGIN + SET LOCAL lock_timeout in one query, the
        # restore of role/search_path/statement_timeout sent with the migration's last statement, and
        # the bookkeeping rows, COMMIT and the session reset in one: three round trips per migration.
        self._begin_sql = "BEGIN"
        self._restore_sql: str | None = None
        self._commit_sql = "COMMIT"
        if self.db.dialect == "postgresql":
            from psycopg import sql

            conn = self.db.connection
            search_path, statement_timeout = self.db.execute(
                "SELECT current_setting('search_path'), current_setting('statement_timeout')").fetchone()
            self._begin_sql = "BEGIN; " + lockwaits.set_lock_timeout_sql(self.settings.lock_timeout, local=True)
            self._restore_sql = sql.SQL(
                "RESET ROLE; SELECT set_config('search_path', {}, true), set_config('statement_timeout', {}, true)"
            ).format(sql.Literal(search_path), sql.Literal(statement_timeout)).as_string(conn)
            self._commit_sql = "COMMIT; " + self._reset_sql()
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
                    # `up` is idempotent; `down` is not: check where the database is before repeating it.
                    doing, again = (("applying", "`migrate up`") if direction == "apply" else
                                    ("rolling back", "`migrate down` (after `migrate status`)"))
                    raise DatabaseUnreachable(
                        f"lost the connection to the database while {doing} {migration.id}: {one_line(err)}; "
                        f"its transaction either committed whole (with its bookkeeping) or not at all: run {again} again"
                        if migration.transactional else
                        f"lost the connection to the database while {doing} non-transactional {migration.id}: "
                        f"{one_line(err)}; statements that completed stay applied: check, then run {again} again"
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
        """BEGIN (+ SET LOCAL lock_timeout); hooks' before(); the statements; restore of role,
        search_path and statement_timeout; hooks' after(); the bookkeeping rows; COMMIT (+ session
        reset). On any error the caller's ``_recover`` rolls back.
        """
        backend = self.db.backend
        conn = self.db.connection
        assert not backend._in_transaction
        backend._in_transaction = True  # yoyo's flag: Python steps nest as savepoints in our transaction
        conn.execute(self._begin_sql)
        for hook in self.hooks:
            hook.before(ctx)
        self._execute(migration, ctx.direction, tracker, then=self._restore_sql)
        for hook in self.hooks:
            hook.after(ctx)
        self._record(migration, ctx.direction, started, then=self._commit_sql)
        backend._in_transaction = False

    def _non_transactional(self, migration: MigrationFile, ctx: MigrationContext, tracker: _Tracker, started: float) -> None:
        """Statements in autocommit; hooks' after() and the bookkeeping only once all succeeded."""
        if self.db.dialect == "postgresql":
            self.db.execute(lockwaits.set_lock_timeout_sql(self.settings.lock_timeout, local=False))
        for hook in self.hooks:
            hook.before(ctx)
        self._execute(migration, ctx.direction, tracker)
        self._reset_session()
        with self.db.backend.transaction():
            for hook in self.hooks:
                hook.after(ctx)
            self._record(migration, ctx.direction, started)

    def _execute(self, migration: MigrationFile, direction: str, tracker: _Tracker, then: str | None = None) -> None:
        """Run the migration's statements (file order) or, for Python migrations, yoyo's steps;
        then the SQL ``then`` (sent with the last statement: one round trip fewer).

        SQL statements run on our own cursor: yoyo's string steps print result rows to stdout
        and wrap each statement in a savepoint that an all-or-nothing migration does not need.
        """
        if migration.format == "python":
            from yoyo.migrations import Migration

            steps = Migration(migration.id, migration.path, None)
            steps.use_transactions = migration.transactional
            steps._depends = set()
            steps.steps = migration.python_steps
            steps.process_steps(self.db.backend, direction)
            if then:
                self.db.connection.execute(then)
            return
        statements = migration.up if direction == "apply" else migration.down
        cursor = self.db.connection.cursor()
        try:
            for n, statement in enumerate(statements, 1):
                tracker.current = statement
                if then and n == len(statements):
                    # One simple-protocol query; if the statement fails, PostgreSQL runs none of ``then``.
                    cursor.execute(f"{statement.sql}\n;{then}")
                    then = None
                else:
                    cursor.execute(statement.sql)
        finally:
            cursor.close()
        tracker.current = None
        if then:
            self.db.connection.execute(then)

    def _record(self, migration: MigrationFile, direction: str, started: float, then: str | None = None) -> None:
        duration_ms = int((time.perf_counter() - started) * 1000)
        history.record(self.db, migration, direction, duration_ms, then=then)  # one round trip on PostgreSQL

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
