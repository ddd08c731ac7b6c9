"""What a user asks for: one function per command, returning records.

The CLI (runner.cli) is a thin layer over these; a Python user can call them
directly with a :class:`runner.config.Settings`.
"""

from __future__ import annotations

import re
import time
from datetime import timedelta
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from runner import history
from runner.config import Settings
from runner.db import Database, connect, transaction
from runner.errors import DriftError, UsageError
from runner.hooks import MigrationHook
from runner.lock import runner_lock
from runner.logs import get_logger
from runner.migration import MigrationFile
from runner.sources import load_folder, load_migrations
from runner.status import Status, compute, drift_lines

log = get_logger("migrate")


@dataclass
class PlanItem:
    id: str
    path: str
    transactional: bool
    statements: list[str]
    post_apply: bool = False  # a yoyo post-apply hook, run after the migrations


@dataclass
class UpResult:
    applied: list[str] = field(default_factory=list)
    pending_before: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    dry_run: bool = False
    plan: list[PlanItem] = field(default_factory=list)
    shims: list[dict[str, Any]] = field(default_factory=list)
    post_apply: list[str] = field(default_factory=list)  # post-apply hooks run (dry run: to run)


@dataclass
class DownResult:
    rolled_back: list[str] = field(default_factory=list)
    duration_s: float = 0.0


def default_hooks(settings: Settings, compat: bool = True, final_migration_id: str | None = None) -> list[MigrationHook]:
    """The hooks `migrate up` runs around each migration.

    ``final_migration_id``: the last migration of the run; the snapshot hook then stores one
    snapshot per run (in that migration's transaction) instead of one per migration, which
    would make a long run quadratic (see :class:`runner.snapshot.SnapshotHook`).
    """
    from compat.hook import CompatHook

    # Always present: with --no-compat it still checks declared renames and protects existing
    # shims, it just creates none (nor when [compat] enabled = false).
    hooks: list[MigrationHook] = [CompatHook(settings, create_shims=compat)]
    from runner.snapshot import SnapshotHook

    hooks.append(SnapshotHook(final_migration_id))
    return hooks


def _open(settings: Settings) -> Database:
    return connect(settings.database)


def status(settings: Settings, db: Database | None = None) -> Status:
    files = load_migrations(settings.migrations)
    if db is not None:
        return compute(files, history.read_applied(db))
    with _open(settings) as own:
        return compute(files, history.read_applied(own))


@dataclass
class VerifyResult:
    status: Status
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(settings: Settings) -> VerifyResult:
    """The gate: problems are pending, modified or missing migrations and expired shims."""
    from compat.commands import audit, expired_message

    with _open(settings) as db:
        state = status(settings, db)
        problems = [f"{p}: pending: run `migrate up`" for p in state.pending] + drift_lines(state)
        expired = audit(db, timedelta(0)).expired
    if expired:
        problems.append(expired_message(expired))
    return VerifyResult(state, problems)


def _refuse_drift(state: Status) -> None:
    lines = drift_lines(state)
    if lines:
        more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
        raise DriftError(lines[0] + more)


def _what_to_apply(db: Database, files: list[MigrationFile], to: str | None) -> tuple[Status, list[MigrationFile]]:
    """The state and what `up` is to apply; refuses drift, and migrations yoyo's own CLI applied."""
    state = compute(files, history.read_applied(db))
    _refuse_drift(state)
    todo = _select_up_to(files, state.pending, to)
    _refuse_yoyo_applied(db, todo)
    return state, todo


def _refuse_yoyo_applied(db: Database, todo: list[MigrationFile]) -> None:
    """A pending migration that yoyo's own CLI applied would run a second time."""
    done = history.applied_by_yoyo(db, [m.id for m in todo])
    if done:
        more = f" (and {len(done) - 1} more)" if len(done) > 1 else ""
        raise DriftError(
            f"{done[0]}{more}: applied by yoyo's own CLI (listed in _yoyo_migration) but not recorded by the runner; "
            "`migrate up` would run it again: take the history over with `migrate adopt yoyo --yes` "
            "(or `migrate mark ID...`), then run `migrate up`")


def _select_up_to(files: list[MigrationFile], pending: list[str], to: str | None) -> list[MigrationFile]:
    by_id = {m.id: m for m in files}
    if to is not None and to not in by_id:
        raise UsageError(f"--to {to}: no such migration in the migrations folder")
    chosen: list[MigrationFile] = []
    wanted = set(pending)
    for m in files:
        if m.id in wanted:
            chosen.append(m)
        if m.id == to:
            break
    return chosen


def up(
    settings: Settings,
    *,
    to: str | None = None,
    dry_run: bool = False,
    hooks: Sequence[MigrationHook] | None = None,
    compat: bool = True,
) -> UpResult:
    """Apply pending migrations in order, each exactly once, under the runner's lock."""
    from runner.executor import BATCH_MAX, BatchFailed, Executor

    started = time.perf_counter()
    files, post_apply = load_folder(settings.migrations)
    result = UpResult(dry_run=dry_run)
    with _open(settings) as db:
        if dry_run:
            state, todo = _what_to_apply(db, files, to)
            result.pending_before = list(state.pending)
            hooks_due = _post_apply_due(db, post_apply, todo)
            result.plan = [PlanItem(m.id, m.path, m.transactional, [s.sql for s in m.up], post_apply=n >= len(todo))
                           for n, m in enumerate(todo + hooks_due)]
            result.post_apply = [m.id for m in hooks_due]
            result.duration_s = time.perf_counter() - started
            return result
        with runner_lock(db, settings.lock_wait):
            state, todo = _what_to_apply(db, files, to)
            result.pending_before = list(state.pending)
            if todo:  # a no-op `up` needs neither the tables, the executor nor the hooks (nor their imports)
                history.ensure_tables(db)
                run_hooks = default_hooks(settings, compat, todo[-1].id) if hooks is None else hooks
                executor = Executor(db, settings, list(run_hooks))
            previous_of = {m.id: files[i - 1] if i else None for i, m in enumerate(files)}
            total = len(todo)
            position = {m.id: n for n, m in enumerate(todo, 1)}

            def report(confirmed: list[tuple[MigrationFile, float]]) -> None:
                """A migration is reported applied once it is known to be durable (Executor.apply)."""
                for done, seconds in confirmed:
                    result.applied.append(done.id)
                    log.info("applied", migration=done.id, n=position[done.id], total=total,
                             duration_ms=round(seconds * 1000, 1), outcome="applied",
                             elapsed_s=round(time.perf_counter() - started, 2))

            # A fresh database: schema-only migrations go up to BATCH_MAX per transaction (Executor.apply_batch).
            fresh = bool(todo) and not state.applied and db.dialect == "postgresql" and history.is_empty(db)
            i = 0
            while i < total:
                batch = [todo[i]]
                if fresh and executor.batchable(todo[i], previous_of[todo[i].id]):
                    while (len(batch) < BATCH_MAX and i + len(batch) < total
                           and executor.batchable(todo[i + len(batch)], previous_of[todo[i + len(batch)].id])):
                        batch.append(todo[i + len(batch)])
                if len(batch) > 1:
                    for migration in batch:
                        log.info("applying", migration=migration.id, n=position[migration.id], total=total,
                                 batch=len(batch))
                    try:
                        report(executor.apply_batch(batch))
                        i += len(batch)
                        continue
                    except BatchFailed as err:
                        log.info("batch rolled back, applying its migrations one by one", first=batch[0].id,
                                 last=batch[-1].id, error=str(err))
                for migration in batch:
                    n = position[migration.id]
                    log.info("applying", migration=migration.id, n=n, total=total)
                    try:
                        confirmed = executor.apply(migration, previous_of[migration.id])
                    except Exception:
                        report(_make_durable(executor))
                        log.error("failed", migration=migration.id, n=n, total=total, outcome="failed",
                                  elapsed_s=round(time.perf_counter() - started, 2))
                        raise
                    report(confirmed)
                i += len(batch)
            if todo:
                report(executor.make_durable())
            hooks_due = _post_apply_due(db, post_apply, todo)
            if hooks_due:
                applied = {a.id for a in state.applied} | set(result.applied)
                last = next((m.id for m in reversed(files) if m.id in applied), "")  # "": nothing stays applied
                result.post_apply = _run_post_apply(db, settings, hooks_due, last)
        result.shims = _active_shims(db)
    result.duration_s = time.perf_counter() - started
    return result


def _post_apply_due(db: Database, hooks: list[MigrationFile], todo: list[MigrationFile]) -> list[MigrationFile]:
    """The post-apply hooks to run: all of them when the run applies something, or when a migration
    was applied after one of them last ran (its transaction failed: this run finishes the job)."""
    if hooks and (todo or history.post_apply_due(db, [h.id for h in hooks])):
        return hooks
    return []


def _run_post_apply(db: Database, settings: Settings, hooks: list[MigrationFile], last_applied: str) -> list[str]:
    """Each hook in its own transaction, with the lock timeout and retries of a migration and
    without the compat checks; the last one stores the schema snapshot (under ``last_applied``),
    so what the hooks build is part of what ``doctor`` expects."""
    from runner.executor import Executor
    from runner.snapshot import SnapshotHook

    executor = Executor(db, settings, [SnapshotHook(final_migration_id=hooks[-1].id, label=last_applied)])
    done = []
    for hook in hooks:
        log.info("running post-apply hook", hook=hook.id)
        try:
            seconds = executor.post_apply(hook)
        except Exception:
            log.error("post-apply hook failed", hook=hook.id, outcome="failed")
            raise
        log.info("post-apply hook ran", hook=hook.id, duration_ms=round(seconds * 1000, 1), outcome="ran")
        done.append(hook.id)
    return done


def _active_shims(db: Database) -> list[dict[str, Any]]:
    """The active shims `up` lists at the end (compat.commands only where a registry exists)."""
    from compat import SHIMS_TABLE

    if not history.table_exists(db, SHIMS_TABLE):
        return []
    from compat.commands import active_summary

    return active_summary(db)


def _make_durable(executor: Any) -> list[tuple[MigrationFile, float]]:
    """After a failure: what was applied before it must still become durable (when the
    connection is still there; if not, the error says which migrations were unconfirmed)."""
    try:
        return executor.make_durable()
    except Exception:  # noqa: BLE001 - the connection may be gone; the first error is the one to show
        return []


def down(settings: Settings, *, to: str | None = None, steps: int | None = None) -> DownResult:
    """Roll back the last ``steps`` applied migrations (default 1), or all after ``to``."""
    from runner.executor import Executor

    if to is not None and steps is not None:
        raise UsageError("give either --to or --steps, not both")
    started = time.perf_counter()
    files = load_migrations(settings.migrations)
    by_id = {m.id: m for m in files}
    order = {m.id: i for i, m in enumerate(files)}
    result = DownResult()
    with _open(settings) as db, runner_lock(db, settings.lock_wait):
        history.ensure_tables(db)
        state = compute(files, history.read_applied(db))
        _refuse_drift(state)
        applied = sorted((a.id for a in state.applied), key=lambda i: order[i], reverse=True)
        if to is not None:
            if to not in by_id:
                raise UsageError(f"--to {to}: no such migration in the migrations folder")
            victims = [i for i in applied if order[i] > order[to]]
        else:
            victims = applied[: 1 if steps is None else steps]
        for mid in victims:
            migration = by_id[mid]
            if not migration.has_down:
                raise UsageError(f"{migration.path}: {mid} has no rollback (no Down section or .rollback.sql); nothing was rolled back after it")
        executor = Executor(db, settings, default_hooks(settings, final_migration_id=victims[-1] if victims else None))
        for mid in victims:
            index = order[mid]
            executor.rollback(by_id[mid], files[index - 1] if index else None)
            result.rolled_back.append(mid)
            log.info("rolled back", migration=mid, outcome="rolled back")
    result.duration_s = time.perf_counter() - started
    return result


def _resolve(files: list[MigrationFile], ids: Sequence[str]) -> list[MigrationFile]:
    by_id = {m.id: m for m in files}
    unknown = [i for i in ids if i not in by_id]
    if unknown:
        raise UsageError(f"no such migration: {', '.join(unknown)}")
    return [by_id[i] for i in ids]


def _bookkeeping(settings: Settings, ids: Sequence[str], operation: str) -> list[str]:
    files = load_migrations(settings.migrations)
    with _open(settings) as db, runner_lock(db, settings.lock_wait):
        history.ensure_tables(db)
        recorded = {a.migration_id for a in history.read_applied(db)}
        if operation == "unmark":
            known = {m.id: m for m in files}
            targets = [known.get(i) or MigrationFile(i, "", "sql", "", None, None) for i in ids]
            missing = [t.id for t in targets if t.id not in recorded]
            if missing:
                raise UsageError(f"not recorded as applied: {', '.join(missing)}")
        else:
            targets = _resolve(files, ids)
            if operation == "rehash":
                missing = [t.id for t in targets if t.id not in recorded]
                if missing:
                    raise UsageError(f"not recorded as applied (nothing to rehash): {', '.join(missing)}")
        with transaction(db):
            for target in targets:
                if operation == "mark" and target.id in recorded:
                    continue
                history.record(db, target, operation)
    return [t.id for t in targets]


def mark(settings: Settings, ids: Sequence[str]) -> list[str]:
    """Record migrations as applied without running them (baseline an existing database)."""
    return _bookkeeping(settings, ids, "mark")


def unmark(settings: Settings, ids: Sequence[str]) -> list[str]:
    """Forget that migrations were applied, without running their rollback."""
    return _bookkeeping(settings, ids, "unmark")


def rehash(settings: Settings, ids: Sequence[str]) -> list[str]:
    """Accept the current content of applied migrations as their recorded checksum."""
    return _bookkeeping(settings, ids, "rehash")


_NAME = re.compile(r"[^a-z0-9]+")


def new(settings: Settings, name: str, fmt: str = "sql") -> Path:
    """Scaffold the next numbered migration file; returns its path."""
    slug = _NAME.sub("_", name.lower()).strip("_")
    if not slug:
        raise UsageError(f"migration name {name!r} has no letters or digits")
    folder = settings.migrations
    folder.mkdir(parents=True, exist_ok=True)
    files = load_migrations(folder)
    versions = [m for m in files if m.version is not None]
    width = max((len(m.version_label or "") for m in versions), default=3)
    number = max((m.version or 0 for m in versions), default=0) + 1
    path = folder / f"{number:0{width}d}_{slug}.sql"
    template = {
        "sql": f"-- {name}\n-- depends:\n\n",
        "goose": "-- +goose Up\n-- +goose StatementBegin\n\n-- +goose StatementEnd\n\n"
                 "-- +goose Down\n-- +goose StatementBegin\n\n-- +goose StatementEnd\n",
    }
    if fmt not in template:
        raise UsageError(f"unknown migration file format {fmt!r}: expected sql or goose")
    path.write_text(template[fmt], encoding="utf-8")
    return path
