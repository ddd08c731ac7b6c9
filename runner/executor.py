"""Apply or roll back one migration: statements, hooks and bookkeeping in ONE transaction.

yoyo runs each migration on a new connection and records it afterwards on
another, so a crash in between leaves the schema changed but unrecorded. Here
the statements (or, for Python migrations, yoyo's own step machinery), the
hooks and the tracking rows commit together. The connection is reused for speed; session state a migration
changes (search_path, role, timeouts, prepared statements) is reset after each
one, without releasing the runner's session-level advisory lock.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Sequence

from runner import history, lockwaits, pysteps
from runner.config import Settings
from runner.db import Database, ScriptFailed, is_connection_error, one_line, run_script, server_message
from runner.errors import DatabaseUnreachable, LockTimeout, MigrateError, MigrationFailed
from runner.hooks import MigrationContext, MigrationHook
from runner.logs import get_logger
from runner.migration import MigrationFile, Statement

log = get_logger("migrate.executor")

# Migrations at most in one batch (Executor.apply_batch).
BATCH_MAX = 100
# How long migrations may commit without waiting for the WAL flush before one COMMIT waits again
# (see Executor.make_durable): at most this much applied work is unconfirmed at any time.
FLUSH_EVERY = 0.1  # seconds


class BatchFailed(Exception):
    """A batch was rolled back whole (see Executor.apply_batch); ``str()`` is the server's message."""


# Statements a batch may hold: schema changes, quick on the new, empty tables of a fresh database
# (data changes, DO blocks and anything else go one migration per transaction).
_SCHEMA_STATEMENT = re.compile(
    r"^(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*(CREATE|ALTER|COMMENT|GRANT|REVOKE|DROP)\b", re.IGNORECASE | re.DOTALL)


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
        # The runner's own statements, one per element. On PostgreSQL a migration no hook wants is
        # ONE query: BEGIN + SET LOCAL lock_timeout, its statements, the restore of role/search_path/
        # statement_timeout, the bookkeeping rows, COMMIT and the session reset. Otherwise the same
        # statements go in three round trips around the hooks (see _transactional).
        # SET LOCALs at the start of each migration's transaction (after BEGIN).
        self._locals: list[str] = []
        # Applied migrations whose COMMIT did not wait for the WAL flush, and when a COMMIT last did.
        self._unconfirmed: list[tuple[MigrationFile, float]] = []
        self._last_flush = time.monotonic()
        self._restore: list[str] = []
        self._reset: list[str] = []
        if self.db.dialect == "postgresql":
            from psycopg import sql

            conn = self.db.connection
            search_path, statement_timeout = self.db.execute(
                "SELECT current_setting('search_path'), current_setting('statement_timeout')").fetchone()
            self._locals.append(lockwaits.set_lock_timeout_sql(self.settings.lock_timeout, local=True))
            self._restore = [sql.SQL(
                "SELECT set_config('role', 'none', true), set_config('search_path', {}, true), "
                "set_config('statement_timeout', {}, true)"
            ).format(sql.Literal(search_path), sql.Literal(statement_timeout)).as_string(conn)]
            self._reset = self._reset_statements()
            self._bookkeeping = history.PostgresBookkeeping(self.db)
            # The session reset runs DEALLOCATE ALL after every migration, so psycopg's automatic
            # server-side prepared statements would only be prepared and deallocated again.
            conn.prepare_threshold = None

    # -- public -------------------------------------------------------------------------
    def apply(self, migration: MigrationFile, previous: MigrationFile | None) -> list[tuple[MigrationFile, float]]:
        """Apply ``migration``. Returns the migrations now known to be durable, with their
        durations in seconds: this one and those before it not yet confirmed, or none (see
        :meth:`make_durable`).
        """
        seconds, flushed = self._run(migration, previous, "apply")
        self._unconfirmed.append((migration, seconds))
        return self._confirm() if flushed else []

    def rollback(self, migration: MigrationFile, previous: MigrationFile | None) -> float:
        """Roll ``migration`` back; returns the duration in seconds (durable when this returns)."""
        return self._run(migration, previous, "rollback")[0]

    def post_apply(self, hook: MigrationFile) -> float:
        """Run a yoyo post-apply hook (``post-apply*`` file) as a migration is run, in its own
        transaction, with its ``_migrate_log`` row but no history row (it is never applied once
        and for all); returns its duration in seconds (durable when this returns)."""
        return self._run(hook, None, "post-apply")[0]

    def make_durable(self) -> list[tuple[MigrationFile, float]]:
        """Wait until every migration applied so far is on disk (and on synchronous standbys);
        returns those not confirmed before. Call at the end of a run, also a failed one.

        A migration sent in one query commits with ``synchronous_commit = off``, unless
        ``FLUSH_EVERY`` has passed since a COMMIT last waited for the flush: the server writes
        such commits to disk within ``3 * wal_writer_delay`` by itself, and a server crash before
        that loses them whole, bookkeeping included, so the next `migrate up` applies them again.
        A COMMIT that waits for its flush makes everything before it durable too; here it is an
        update that rewrites one bookkeeping row as it is.
        """
        if not self._unconfirmed:
            return []
        self.db.connection.execute(
            f"UPDATE {self.db.qualify(history.HISTORY)} SET applied_at = applied_at WHERE migration_id = %s",
            (self._unconfirmed[-1][0].id,))
        return self._confirm()

    def _confirm(self) -> list[tuple[MigrationFile, float]]:
        confirmed, self._unconfirmed = self._unconfirmed, []
        self._last_flush = time.monotonic()
        return confirmed

    # -- internals ----------------------------------------------------------------------
    def _run(self, migration: MigrationFile, previous: MigrationFile | None, direction: str) -> tuple[float, bool]:
        """Run ``migration`` with retries on lock timeouts; returns its duration and whether its
        COMMIT waited for the WAL flush."""
        ctx = MigrationContext(self.db.connection, self.db.dialect, self.db.schema, migration, previous,
                               self.settings, direction)
        started = time.perf_counter()
        attempts = 1 + (self.settings.lock_retries if migration.transactional else 0)
        for attempt in range(1, attempts + 1):
            tracker = _Tracker()
            try:
                if migration.transactional:
                    flushed = self._transactional(migration, ctx, tracker, started)
                else:
                    flushed = self._non_transactional(migration, ctx, tracker, started)
                return time.perf_counter() - started, flushed
            except MigrateError:
                self._recover()
                raise
            except Exception as err:  # noqa: BLE001 - translated into one-line errors below
                self._recover()
                if is_connection_error(err):
                    # `up` is idempotent; `down` is not: check where the database is before repeating it.
                    doing, again = (("rolling back", "`migrate down` (after `migrate status`)")
                                    if direction == "rollback" else ("applying", "`migrate up`"))
                    unconfirmed = [m.id for m, _ in self._unconfirmed]
                    which = (f"its transaction and those of the migrations before it not yet confirmed on disk "
                             f"({unconfirmed[0]} to {unconfirmed[-1]}) each" if unconfirmed else "its transaction either")
                    raise DatabaseUnreachable(
                        f"lost the connection to the database while {doing} {migration.id}: {one_line(err)}; "
                        f"{which} committed whole (with its bookkeeping) or not at all: run {again} again"
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
                raise MigrationFailed(self._failure(migration, tracker, err, direction)) from None
        raise AssertionError("unreachable")

    def _transactional(self, migration: MigrationFile, ctx: MigrationContext, tracker: _Tracker, started: float) -> bool:
        """BEGIN (+ SET LOCAL lock_timeout); hooks' before(); the statements; restore of role,
        search_path and statement_timeout; hooks' after(); the bookkeeping rows; COMMIT (+ session
        reset). On any error the caller's ``_recover`` rolls back. Returns whether the COMMIT
        waited for the WAL flush.
        """
        backend = self.db.backend
        conn = self.db.connection
        assert not backend._in_transaction
        if self._in_one_query(migration, ctx):
            return self._one_query(migration, ctx, tracker)
        backend._in_transaction = True  # yoyo's flag: Python steps nest as savepoints in our transaction
        conn.execute("; ".join(["BEGIN", *self._locals]))
        for hook in self.hooks:
            hook.before(ctx)
        self._execute(migration, ctx.direction, tracker, then="; ".join(self._restore) or None)
        for hook in self.hooks:
            hook.after(ctx)
        self._record(migration, ctx.direction, started, then="; ".join(["COMMIT", *self._reset]))
        backend._in_transaction = False
        return True

    def _in_one_query(self, migration: MigrationFile, ctx: MigrationContext) -> bool:
        """PostgreSQL, SQL statements each certainly one statement, and no hook with work to do."""
        if self.db.dialect != "postgresql" or migration.format == "python":
            return False
        statements = migration.statements(ctx.direction)
        if not statements or not all(s.exact for s in statements):
            return False
        return not any(getattr(hook, "wants", lambda _: True)(ctx) for hook in self.hooks)

    def _one_query(self, migration: MigrationFile, ctx: MigrationContext, tracker: _Tracker) -> bool:
        """The whole migration in one round trip (see __post_init__); a failure names its statement.
        Returns whether the COMMIT waited for the WAL flush (see make_durable)."""
        statements = migration.statements(ctx.direction)
        flush = ctx.direction != "apply" or self._flush_due()
        parts, first, commit = self._script([migration], ctx.direction, flush)
        self.db.backend._in_transaction = True  # for _recover: roll back whatever the failure left open
        try:
            run_script(self.db.connection, parts)
        except ScriptFailed as failed:
            if failed.index is not None and failed.index > commit and not is_connection_error(failed.error):
                raise MigrationFailed(
                    f"{migration.path}: migration {migration.id} was applied and recorded, but resetting the "
                    f"session after it failed: {one_line(failed.error)}; run `migrate up` again"
                ) from None
            if failed.index is not None and first[0] <= failed.index < first[0] + len(statements):
                tracker.current = statements[failed.index - first[0]]
            raise failed.error from None
        self.db.backend._in_transaction = False
        return flush

    def _flush_due(self) -> bool:
        return time.monotonic() - self._last_flush >= FLUSH_EVERY

    def _script(self, migrations: Sequence[MigrationFile], direction: str, flush: bool) -> tuple[list[str], list[int], int]:
        """The statements of one query applying ``migrations`` in one transaction, where each
        migration's statements start, and where COMMIT is.

        Per migration: SET LOCAL lock_timeout (and synchronous_commit = off unless ``flush``), its
        statements, the restore of role/search_path/statement_timeout, its bookkeeping; between
        two migrations the session reset (RESET ALL also ends the SET LOCALs) and the start time
        its bookkeeping measures the duration from (history.SERVER_DURATION).
        """
        parts = ["BEGIN"]
        starts = []
        for n, migration in enumerate(migrations):
            if n:
                parts.extend(self._reset)
            parts.extend(self._locals)
            if not flush:
                parts.append("SET LOCAL synchronous_commit = off")
            if len(migrations) > 1:
                parts.append("SELECT set_config('migrate.started', clock_timestamp()::text, true)")
            starts.append(len(parts))
            parts.extend(s.sql for s in migration.statements(direction))
            parts.extend(self._restore)
            parts.append(self._bookkeeping.render(migration, direction, duration_ms=None))
        commit = len(parts)
        parts.append("COMMIT")
        parts.extend(self._reset)
        return parts, starts, commit

    # -- several migrations in one transaction (a fresh database) ------------------------
    def batchable(self, migration: MigrationFile, previous: MigrationFile | None) -> bool:
        """Whether ``migration`` may share a transaction with others (``apply_batch``): a migration
        that goes in one query and only changes the schema (every statement one of
        CREATE, ALTER, COMMENT, GRANT, REVOKE or DROP), so it is quick on a fresh database."""
        if not migration.transactional or not all(_SCHEMA_STATEMENT.match(s.sql) for s in migration.up):
            return False
        ctx = MigrationContext(self.db.connection, self.db.dialect, self.db.schema, migration, previous,
                               self.settings, "apply")
        return self._in_one_query(migration, ctx)

    def apply_batch(self, migrations: Sequence[MigrationFile]) -> list[tuple[MigrationFile, float]]:
        """Apply ``migrations`` (each ``batchable``) in ONE transaction and one query, each with its
        own bookkeeping rows and a session reset between them. Returns what ``apply`` returns.

        All or nothing: on any failure the transaction is rolled back and :class:`BatchFailed`
        raised, so the caller applies them one by one (and gets that path's errors and retries).
        Meant for a fresh database (nothing applied, history.is_empty), where no other session can be waiting
        for the locks the batch holds until its COMMIT.
        """
        flush = self._flush_due()
        parts, _, _ = self._script(migrations, "apply", flush)
        self.db.backend._in_transaction = True
        try:
            run_script(self.db.connection, parts)
        except ScriptFailed as failed:
            self._recover()
            if is_connection_error(failed.error):
                unconfirmed = [m.id for m, _ in self._unconfirmed] + [m.id for m in migrations]
                raise DatabaseUnreachable(
                    f"lost the connection to the database while applying {migrations[0].id} to {migrations[-1].id} "
                    f"in one transaction: {one_line(failed.error)}; that transaction and those of the migrations "
                    f"not yet confirmed on disk ({unconfirmed[0]} to {unconfirmed[-1]}) each committed whole "
                    f"(with its bookkeeping) or not at all: run `migrate up` again"
                ) from None
            raise BatchFailed(server_message(failed.error)) from None
        self.db.backend._in_transaction = False
        durations = dict(self.db.connection.execute(
            f"SELECT migration_id, duration_ms FROM {self.db.qualify(history.HISTORY)} WHERE migration_id = ANY(%s)",
            ([m.id for m in migrations],)).fetchall())
        self._unconfirmed.extend((m, durations[m.id] / 1000) for m in migrations)
        return self._confirm() if flush else []

    def _non_transactional(self, migration: MigrationFile, ctx: MigrationContext, tracker: _Tracker, started: float) -> bool:
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
        return True

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
            steps.process_steps(self.db.backend, "rollback" if direction == "rollback" else "apply")
            if then:
                self.db.connection.execute(then)
            return
        statements = migration.statements(direction)
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
        """Session settings a migration changed must not leak into the next one."""
        if self.db.dialect == "postgresql":
            self.db.connection.execute("; ".join(self._reset))

    def _reset_statements(self) -> list[str]:
        """Not DISCARD ALL: it would release the runner's advisory lock. SET SESSION AUTHORIZATION
        DEFAULT also resets the role; RESET ALL resets the runner's own session settings too."""
        return ["RESET ALL", "SET SESSION AUTHORIZATION DEFAULT", "DEALLOCATE ALL", "CLOSE ALL", "DISCARD TEMP",
                *([self.db.session_sql] if self.db.session_sql else [])]

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

    def _failure(self, migration: MigrationFile, tracker: _Tracker, err: BaseException, direction: str) -> str:
        where = self._where(migration, tracker)
        statement = ""
        if migration.format == "python":
            line, statement = pysteps.failure(migration, direction, err)
            where = f"{migration.path}:{line}" if line else migration.path
        elif tracker.current is not None:
            first = " ".join(tracker.current.sql.split())
            statement = f" in statement `{first[:120]}{'...' if len(first) > 120 else ''}`"
        done = "rolled back" if migration.transactional else "statements before it stay applied (non-transactional)"
        what = "migration"
        if direction == "post-apply":
            what = "post-apply hook"
            done += ("; the migrations applied before it stay applied; once the hook is fixed, the next "
                     "`migrate up` runs the post-apply hooks again")
        return f"{where}: {what} {migration.id} failed{statement}: {server_message(err)}; {done}"
