"""The engine: apply or roll back migrations, each with its hooks and bookkeeping in ONE transaction.

yoyo runs each migration on a new connection and records it afterwards on another, so a crash
in between leaves the schema changed but unrecorded. Here the statements (or, for Python
migrations, yoyo's own step machinery), the hooks and the tracking rows commit together. The
connection is reused for speed; session state a migration changes (search_path, role, timeouts,
prepared statements) is reset after each one, without releasing the runner's session-level lock.

How a list of migrations is applied (:meth:`Engine.apply`):

* one query per migration on PostgreSQL when no hook has work for it: BEGIN, SET LOCALs, the
  user's search_path, the statements, the restore of the runner's own role/search_path/
  statement_timeout, the bookkeeping as one statement, COMMIT and the session reset; otherwise
  the same in three round trips around the hooks;
* on a fresh database (nothing applied, no other object, no event trigger, no other client),
  runs of migrations whose every statement is free of effects outside the transaction (decided
  from the parse tree: runner.statement_kinds.effect_free) go up to BATCH_MAX per transaction and
  query, and fall back to one by one on any failure; whether another client connected is checked
  again before every batch, and whether an event trigger exists once a migration ran on its own;
* durability: a migration sent in one query commits with ``synchronous_commit = off`` unless
  FLUSH_EVERY has passed since a COMMIT last waited for the WAL flush; migrations are reported
  applied once known durable (:meth:`Engine.make_durable`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from runner import history, lease, lockwaits, snapshot, statement_kinds, yoyo_adapter
from runner.config import Settings
from runner.db import Database, one_line, rollback_quietly, transaction
from runner.dialects import ScriptFailed
from runner.errors import DatabaseUnreachable, MigrateError, MigrationFailed
from runner.hooks import MigrationContext, MigrationHook
from runner.migration import MigrationFile, Statement
from runner.secrets import mask_sql

# Migrations at most in one batch (Engine.apply).
BATCH_MAX = 100
# How long migrations may commit without waiting for the WAL flush before one COMMIT waits again
# (see Engine.make_durable): at most this much applied work is unconfirmed at any time.
FLUSH_EVERY = 0.1  # seconds
# The runner's own relations: a database holding nothing else is fresh (Engine.apply).
OWN_TABLES = (*history.TABLES, *yoyo_adapter.TABLES, *snapshot.TABLES, *lease.TABLES)
# A batched migration may not name these: a batch writes the bookkeeping while it goes on.
_PROTECTED = frozenset(OWN_TABLES)


class BatchFailed(Exception):
    """A batch was rolled back whole; ``str()`` is the server's message."""


class Progress(Protocol):
    """What the engine reports while it applies (the command logs it and builds its result)."""

    def applying(self, migration: MigrationFile, batch: int) -> None: ...
    def applied(self, migration: MigrationFile, seconds: float) -> None: ...
    def failed(self, migration: MigrationFile, error: BaseException) -> None: ...
    def batch_failed(self, batch: Sequence[MigrationFile], error: str) -> None: ...


@dataclass
class _Tracker:
    """Which statement is executing, to name it when it fails."""

    current: Statement | None = None


@dataclass
class Engine:
    db: Database
    settings: Settings
    hooks: Sequence[MigrationHook] = ()
    # Applied migrations whose COMMIT did not wait for the WAL flush, and when a COMMIT last did.
    _unconfirmed: list[tuple[MigrationFile, float]] = field(default_factory=list)
    _last_flush: float = field(default_factory=time.monotonic)
    _bookkeeping: history.Bookkeeping | None = None
    _tracker: _Tracker = field(default_factory=_Tracker)

    @property
    def bookkeeping(self) -> history.Bookkeeping:
        if self._bookkeeping is None:
            self._bookkeeping = history.Bookkeeping(self.db)
        return self._bookkeeping

    # -- a list of migrations ---------------------------------------------------------------
    def apply(self, todo: Sequence[MigrationFile], previous_of: dict[str, MigrationFile | None], progress: Progress,
              *, nothing_applied: bool) -> None:
        """Apply ``todo`` in order; ``progress.applied`` is called for each once it is durable.

        ``nothing_applied``: the history is empty (with a database holding nothing else, that
        makes it fresh: batches are allowed)."""
        dialect = self.db.dialect
        fresh = (bool(todo) and nothing_applied and dialect.one_query
                 and statement_kinds.builtins_first(self.db.migration_search_path)
                 and dialect.is_fresh(self.db, OWN_TABLES))
        ran_alone = False  # a migration ran on its own since the last check: it may have made an event trigger
        i = 0
        while i < len(todo):
            batch = [todo[i]]
            if fresh and self.batchable(todo[i], previous_of[todo[i].id]):
                while (len(batch) < BATCH_MAX and i + len(batch) < len(todo)
                       and self.batchable(todo[i + len(batch)], previous_of[todo[i + len(batch)].id])):
                    batch.append(todo[i + len(batch)])
            if len(batch) > 1 and ran_alone:
                ran_alone = False
                if dialect.has_event_triggers(self.db):
                    fresh = False  # its function would run on every DDL of a batch: one by one from now on
                    batch = batch[:1]
            if len(batch) > 1 and not dialect.others_connected(self.db):
                for migration in batch:
                    progress.applying(migration, len(batch))
                try:
                    for migration, seconds in self.apply_batch(batch):
                        progress.applied(migration, seconds)
                    i += len(batch)
                    continue
                except BatchFailed as err:
                    progress.batch_failed(batch, str(err))
            elif len(batch) > 1:
                fresh = False  # another client is here now: one transaction per migration from now on
            ran_alone = True
            for migration in batch:
                progress.applying(migration, 1)
                try:
                    confirmed = self.apply_one(migration, previous_of[migration.id])
                except Exception as err:
                    for done, seconds in self._make_durable_after_failure():
                        progress.applied(done, seconds)
                    progress.failed(migration, err)
                    raise
                if not confirmed and self._flush_due():
                    # A slow migration: confirm it now rather than with the next one's COMMIT, so
                    # it is reported applied when it is (one round trip, against its own duration).
                    confirmed = self.make_durable()
                for done, seconds in confirmed:
                    progress.applied(done, seconds)
            i += len(batch)
        for done, seconds in self.make_durable():
            progress.applied(done, seconds)

    def apply_one(self, migration: MigrationFile, previous: MigrationFile | None) -> list[tuple[MigrationFile, float]]:
        """Apply ``migration``. Returns the migrations now known to be durable, with their
        durations in seconds: this one and those before it not yet confirmed, or none (see
        :meth:`make_durable`)."""
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

        A COMMIT that waits for its flush makes everything before it durable too; here it is an
        update that rewrites one bookkeeping row as it is. A server crash before that loses the
        unconfirmed migrations whole, bookkeeping included, so the next `migrate up` applies them
        again.
        """
        if not self._unconfirmed:
            return []
        self.db.execute(history.touch_sql(self.db, self._unconfirmed[-1][0].id))
        return self._confirm()

    def _make_durable_after_failure(self) -> list[tuple[MigrationFile, float]]:
        """After a failure: what was applied before it must still become durable (when the
        connection is still there; if not, the error says which migrations were unconfirmed)."""
        try:
            return self.make_durable()
        except Exception:  # noqa: BLE001 - the connection may be gone; the first error is the one to show
            return []

    def _confirm(self) -> list[tuple[MigrationFile, float]]:
        confirmed, self._unconfirmed = self._unconfirmed, []
        self._last_flush = time.monotonic()
        return confirmed

    def _flush_due(self) -> bool:
        return time.monotonic() - self._last_flush >= FLUSH_EVERY

    # -- one migration ----------------------------------------------------------------------
    def _context(self, migration: MigrationFile, previous: MigrationFile | None, direction: str) -> MigrationContext:
        return MigrationContext(self.db, migration, previous, self.settings, direction)

    def _run(self, migration: MigrationFile, previous: MigrationFile | None, direction: str) -> tuple[float, bool]:
        """Run ``migration`` with retries on lock timeouts; returns its duration and whether its
        COMMIT waited for the WAL flush."""
        ctx = self._context(migration, previous, direction)
        started = time.perf_counter()

        def attempt(_: int) -> tuple[float, bool]:
            self._tracker = tracker = _Tracker()
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
                raise self._translate(err, migration, direction, tracker) from None

        retries = self.settings.lock_retries if migration.transactional else 0
        try:
            return lockwaits.retrying(self.db, attempt, retries=retries, lock_timeout=self.settings.lock_timeout,
                                      what=f"migration {migration.id}",
                                      where=lambda: self._where(migration, self._tracker))
        except MigrateError as err:
            if err.file is None:
                current = self._tracker.current
                err.at(migration.path, current.line if current is not None else None)
            raise

    def _translate(self, err: Exception, migration: MigrationFile, direction: str, tracker: _Tracker) -> Exception:
        dialect = self.db.dialect
        if dialect.is_connection_error(err):
            # `up` is idempotent; `down` is not: check where the database is before repeating it.
            doing, again = (("rolling back", "`migrate down` (after `migrate status`)")
                            if direction == "rollback" else ("applying", "`migrate up`"))
            unconfirmed = [m.id for m, _ in self._unconfirmed]
            which = (f"its transaction and those of the migrations before it not yet confirmed on disk "
                     f"({unconfirmed[0]} to {unconfirmed[-1]}) each" if unconfirmed else "its transaction either")
            return DatabaseUnreachable(  # where: set by _run
                f"lost the connection to the database while {doing} {migration.id}: {one_line(err)}; "
                f"{which} committed whole (with its bookkeeping) or not at all: run {again} again"
                if migration.transactional else
                f"lost the connection to the database while {doing} non-transactional {migration.id}: "
                f"{one_line(err)}; statements that completed stay applied: check, then run {again} again")
        if not isinstance(err, dialect.errors):
            return err
        if dialect.is_lock_timeout(err):
            return lockwaits.Retry(tracker.current.sql if tracker.current else "")
        message, file, line = self._failure(migration, tracker, err, direction)
        return MigrationFailed(message).at(file, line)

    def _transactional(self, migration: MigrationFile, ctx: MigrationContext, tracker: _Tracker, started: float) -> bool:
        """BEGIN (+ SET LOCALs); hooks' before(); the statements (with the user's search_path);
        the restore of the runner's session; hooks' after(); the bookkeeping rows; COMMIT (+ the
        session reset). On any error the caller's ``_recover`` rolls back. Returns whether the
        COMMIT waited for the WAL flush."""
        if self._in_one_query(migration, ctx):
            return self._one_query(migration, ctx, tracker)
        dialect = self.db.dialect
        self.db.connection.execute("; ".join(["BEGIN", *dialect.migration_start(self.db, self.settings.lock_timeout,
                                                                                 flush=True)]))
        self.db.in_transaction = True
        for hook in self.hooks:
            hook.before(ctx)
        self._execute(migration, ctx.direction, tracker, before=dialect.migration_search_path(self.db, local=True),
                      then=dialect.migration_end(self.db))
        for hook in self.hooks:
            hook.after(ctx)
        self._record(migration, ctx.direction, started, then=["COMMIT", *dialect.session_reset(self.db)])
        self.db.in_transaction = False
        return True

    def _in_one_query(self, migration: MigrationFile, ctx: MigrationContext) -> bool:
        """A dialect that can, SQL statements each certainly one statement, and no hook with work to do."""
        if not self.db.dialect.one_query or migration.format == "python":
            return False
        statements = migration.statements(ctx.direction)
        if not statements or not all(s.exact for s in statements):
            return False
        return not any(hook.wants(ctx) for hook in self.hooks)

    def _one_query(self, migration: MigrationFile, ctx: MigrationContext, tracker: _Tracker) -> bool:
        """The whole migration in one round trip; a failure names its statement. Returns whether
        the COMMIT waited for the WAL flush (see make_durable)."""
        statements = migration.statements(ctx.direction)
        flush = ctx.direction != "apply" or self._flush_due()
        parts, first, commit = self._script([migration], ctx.direction, flush)
        self.db.in_transaction = True  # for _recover: roll back whatever the failure left open
        try:
            self.db.dialect.run_script(self.db, parts)
        except ScriptFailed as failed:
            if (failed.index is not None and failed.index > commit
                    and not self.db.dialect.is_connection_error(failed.error)):
                raise MigrationFailed(
                    f"{migration.path}: migration {migration.id} was applied and recorded, but resetting the "
                    f"session after it failed: {one_line(failed.error)}; run `migrate up` again") from None
            if failed.index is not None and first[0] <= failed.index < first[0] + len(statements):
                tracker.current = statements[failed.index - first[0]]
            raise failed.error from None
        self.db.in_transaction = False
        return flush

    def _script(self, migrations: Sequence[MigrationFile], direction: str, flush: bool) -> tuple[list[str], list[int], int]:
        """The statements of one query applying ``migrations`` in one transaction, where each
        migration's statements start, and where COMMIT is.

        Per migration: the SET LOCALs, the user's search_path, its statements, the restore of the
        runner's session, its bookkeeping. Several migrations (a batch): their bookkeeping is
        prepared once (history.Bookkeeping.prepare) and executed for each; between two of them
        what they may leave behind is reset (``Dialect.batch_reset``) and the start time their
        bookkeeping measures the duration from is marked.
        """
        dialect = self.db.dialect
        batch = len(migrations) > 1
        parts = ["BEGIN"]
        starts = []
        for n, migration in enumerate(migrations):
            if n:
                parts.extend(dialect.batch_reset(self.db))
            parts.extend(dialect.migration_start(self.db, self.settings.lock_timeout, flush))
            if batch and not n:
                parts.append(self.bookkeeping.prepare(direction))
            if batch:
                parts.append(dialect.migration_started())
            parts.extend(dialect.migration_search_path(self.db, local=True))
            starts.append(len(parts))
            parts.extend(s.sql for s in migration.statements(direction))
            parts.extend(dialect.migration_end(self.db))
            if batch:
                parts.append(self.bookkeeping.execute(migration))
            else:
                parts.extend(self.bookkeeping.statements(migration, direction, duration_ms=None))
        if batch:
            parts.extend(self.bookkeeping.check(migrations))
            parts.append(self.bookkeeping.unprepare())
        commit = len(parts)
        parts.append("COMMIT")
        parts.extend(dialect.session_reset(self.db))
        return parts, starts, commit

    # -- several migrations in one transaction (a fresh database) -----------------------------
    def batchable(self, migration: MigrationFile, previous: MigrationFile | None) -> bool:
        """Whether ``migration`` may share a transaction with others: it goes in one query and
        every statement is free of effects outside the transaction (runner.statement_kinds), so
        rolling a batch back and applying its migrations again one by one repeats nothing."""
        if not migration.transactional or not all(statement_kinds.effect_free(s.sql, _PROTECTED) for s in migration.up):
            return False
        return self._in_one_query(migration, self._context(migration, previous, "apply"))

    def apply_batch(self, migrations: Sequence[MigrationFile]) -> list[tuple[MigrationFile, float]]:
        """Apply ``migrations`` (each ``batchable``) in ONE transaction and one query, each with its
        own bookkeeping rows and a session reset between them. Returns what ``apply_one`` returns.

        All or nothing: on any failure the transaction is rolled back and :class:`BatchFailed`
        raised, so the caller applies them one by one (and gets that path's errors and retries).
        """
        flush = self._flush_due()
        parts, _, _ = self._script(migrations, "apply", flush)
        self.db.in_transaction = True
        try:
            self.db.dialect.run_script(self.db, parts)
        except ScriptFailed as failed:
            self._recover()
            rollback_quietly(self.db, self.bookkeeping.unprepare())
            if self.db.dialect.is_connection_error(failed.error):
                unconfirmed = [m.id for m, _ in self._unconfirmed] + [m.id for m in migrations]
                raise DatabaseUnreachable(
                    f"lost the connection to the database while applying {migrations[0].id} to {migrations[-1].id} "
                    f"in one transaction: {one_line(failed.error)}; that transaction and those of the migrations "
                    f"not yet confirmed on disk ({unconfirmed[0]} to {unconfirmed[-1]}) each committed whole "
                    f"(with its bookkeeping) or not at all: run `migrate up` again") from None
            raise BatchFailed(self.db.dialect.server_message(failed.error)) from None
        self.db.in_transaction = False
        durations = history.durations_ms(self.db, [m.id for m in migrations])
        self._unconfirmed.extend((m, durations[m.id] / 1000) for m in migrations)
        return self._confirm() if flush else []

    def _non_transactional(self, migration: MigrationFile, ctx: MigrationContext, tracker: _Tracker, started: float) -> bool:
        """Statements in autocommit (with the lock timeout and the user's search_path for the
        session); hooks' after() and the bookkeeping only once all succeeded."""
        dialect = self.db.dialect
        for hook in self.hooks:
            hook.before(ctx)
        # Not joined with the first statement: several statements in one query form a transaction
        # block, which CREATE INDEX CONCURRENTLY and its kind refuse.
        dialect.execute_all(self.db, [*dialect.migration_start(self.db, self.settings.lock_timeout, flush=True,
                                                              local=False),
                                      *dialect.migration_search_path(self.db, local=False)])
        self._execute(migration, ctx.direction, tracker, before=[])
        reset = dialect.session_reset(self.db)
        if reset:
            dialect.execute_all(self.db, reset)
        with transaction(self.db):
            for hook in self.hooks:
                hook.after(ctx)
            self._record(migration, ctx.direction, started)
        return True

    def _execute(self, migration: MigrationFile, direction: str, tracker: _Tracker, *, before: list[str],
                 then: list[str] | None = None) -> None:
        """Run the migration's statements (file order) or, for Python migrations, yoyo's steps;
        ``before`` is sent with the first statement and ``then`` with the last (one round trip
        each fewer where the dialect allows several statements in one query).

        SQL statements run on the runner's own cursor: yoyo's string steps print result rows to
        stdout and wrap each statement in a savepoint that an all-or-nothing migration does not need.
        """
        dialect = self.db.dialect
        then = list(then or ())
        if migration.format == "python":
            if before:
                dialect.execute_all(self.db, before)
            yoyo_adapter.run_python_steps(self.db, migration, direction)
            if then:
                dialect.execute_all(self.db, then)
            return
        statements = migration.statements(direction)
        joined = dialect.one_query
        cursor = self.db.connection.cursor()
        try:
            if before and (not joined or not statements):
                dialect.execute_all(self.db, before)
                before = []
            for n, statement in enumerate(statements, 1):
                tracker.current = statement
                text = statement.sql
                if before:
                    # One simple-protocol query: if the statement fails, the error is its own.
                    text = "\n;".join([*before, text])
                    before = []
                if then and joined and n == len(statements):
                    text = f"{text}\n;" + ";".join(then)  # if the statement fails, none of ``then`` runs
                    then = []
                cursor.execute(text)
        finally:
            cursor.close()
        tracker.current = None
        if then:
            dialect.execute_all(self.db, then)

    def _record(self, migration: MigrationFile, direction: str, started: float, then: list[str] | None = None) -> None:
        duration_ms = int((time.perf_counter() - started) * 1000)
        history.record(self.db, migration, direction, duration_ms, then=then, bookkeeping=self.bookkeeping)

    def _recover(self) -> None:
        """Roll back whatever a failure left open (the connection may be gone)."""
        if self.db.in_transaction:
            rollback_quietly(self.db)

    @staticmethod
    def _where(migration: MigrationFile, tracker: _Tracker) -> str:
        if tracker.current is not None:
            return f"{migration.path}:{tracker.current.line}"
        return migration.path

    def _failure(self, migration: MigrationFile, tracker: _Tracker, err: BaseException,
                 direction: str) -> tuple[str, str, int | None]:
        """The message of a failed migration, its file and line."""
        where = self._where(migration, tracker)
        line = tracker.current.line if tracker.current is not None else None
        statement = ""
        if migration.format == "python":
            line, statement = yoyo_adapter.python_failure(migration, direction, err)
            where = f"{migration.path}:{line}" if line else migration.path
        elif tracker.current is not None:
            first = " ".join(mask_sql(tracker.current.sql).split())
            statement = f" in statement `{first[:120]}{'...' if len(first) > 120 else ''}`"
        done = "rolled back" if migration.transactional else "statements before it stay applied (non-transactional)"
        what = "migration"
        if direction == "post-apply":
            what = "post-apply hook"
            done += ("; the migrations applied before it stay applied; once the hook is fixed, the next "
                     "`migrate up` runs the post-apply hooks again")
        message = f"{where}: {what} {migration.id} failed{statement}: {mask_sql(self.db.dialect.server_message(err))}; {done}"
        return message, migration.path, line or None

