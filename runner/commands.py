"""What a user asks for: one function per command, returning records.

The CLI (runner.cli) is a thin layer over these; a Python user can call them
directly with a :class:`runner.config.Settings`.
"""

from __future__ import annotations

import re
import time
import unicodedata
from datetime import timedelta
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from compat import registry
from runner import history, preflight, statement_kinds
from runner.config import Settings
from runner.db import Database, open_database, transaction
from runner.errors import ConfigError, DatabaseUnreachable, DriftError, UsageError
from runner.hooks import MigrationHook
from runner.ids import resolve_id, resolve_ids
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
    database: str = ""  # redacted URL
    applied: list[str] = field(default_factory=list)
    pending_before: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    dry_run: bool = False
    plan: list[PlanItem] = field(default_factory=list)
    shims: list[dict[str, Any]] = field(default_factory=list)
    post_apply: list[str] = field(default_factory=list)  # post-apply hooks run (dry run: to run)
    warnings: list[str] = field(default_factory=list)  # e.g. the migrations folder has no migrations
    failed: dict[str, Any] | None = None  # the migration (or post-apply hook) that failed: id, file, line, error


@dataclass
class DownResult:
    rolled_back: list[str] = field(default_factory=list)
    duration_s: float = 0.0


def default_hooks(settings: Settings, compat: bool = True, final_migration_id: str | None = None) -> list[MigrationHook]:
    """The hooks `migrate up`/`down` run around each migration.

    ``final_migration_id``: the last migration of the run; the snapshot hook then stores one
    snapshot per run (in that migration's transaction) instead of one per migration, which
    would make a long run quadratic (see :class:`runner.snapshot.SnapshotHook`).
    """
    # Imported here, when there is something to apply: the hook, its declaration parser and its
    # view builders are most of what `migrate up` would import, and a no-op `up` runs no hook
    # (bench/bench_runner.py, no-op up).
    from compat.hook import CompatHook
    from runner.snapshot import SnapshotHook

    # Always present: with --no-compat it still checks declared renames and protects existing
    # shims, it just creates none (nor when [compat] enabled = false).
    return [CompatHook(create_shims=compat), SnapshotHook(final_migration_id)]


def status(settings: Settings, db: Database | None = None) -> Status:
    files = load_migrations(settings.migrations, settings.sources.get("migrations"))
    if db is not None:
        return compute(files, history.read_applied(db))
    with open_database(settings, read_only=True) as own:
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
    from compat import lifecycle

    files, hooks = load_folder(settings.migrations, settings.sources.get("migrations"))
    with open_database(settings, read_only=True) as db:
        state = compute(files, history.read_applied(db))
        problems = [f"{p}: pending: run `migrate up`" for p in state.pending] + drift_lines(state)
        if history.post_apply_due(db, [h.id for h in hooks]):
            problems.append(f"post-apply hook(s) {', '.join(h.id for h in hooks)} have not run since the last "
                            "migration was applied (a hook failed?): fix it, then run `migrate up`")
        expired = lifecycle.audit(db, timedelta(0)).expired
    if expired:
        problems.append(lifecycle.expired_message(expired))
    return VerifyResult(state, problems)


def _refuse_drift(state: Status) -> None:
    lines = drift_lines(state)
    if lines:
        raise DriftError(lines[0] + _and_more(lines))


def _and_more(items: Sequence[object]) -> str:
    return f" (and {len(items) - 1} more)" if len(items) > 1 else ""


def _what_to_apply(db: Database, files: list[MigrationFile], to: str | None, folder: Path | None = None
                   ) -> tuple[Status, list[MigrationFile]]:
    """The state and what `up` is to apply; refuses drift, and a history another tool wrote."""
    state = compute(files, history.read_applied(db))
    if not files and state.applied:
        raise DriftError(f"the migrations folder {folder or ''} has no migrations but the database has {len(state.applied)} applied "
                         "(every one would be reported missing): wrong --migrations path?")
    _refuse_drift(state)
    todo = _select_up_to(files, state.pending, to)
    statement_kinds.refuse_transaction_control(todo)  # BEGIN/COMMIT... in a transactional migration: exit 2
    if not state.applied:
        from runner import adopt  # only on a database with no history of the runner's

        foreign = adopt.foreign_history(db)
        if foreign is not None:
            raise DriftError(
                f"{foreign.table}: this database was migrated with {foreign.tool} and the runner has no history yet; "
                f"`migrate up` would run every migration again: take the history over with {foreign.fix}, "
                "then run `migrate up`")
    _refuse_yoyo_applied(db, todo)
    return state, todo


def _refuse_yoyo_applied(db: Database, todo: list[MigrationFile]) -> None:
    """A pending migration that yoyo's own CLI applied would run a second time."""
    done = history.applied_by_yoyo(db, [m.id for m in todo])
    if done:
        raise DriftError(
            f"{done[0]}{_and_more(done)}: applied by yoyo's own CLI (listed in _yoyo_migration) but not recorded by "
            "the runner; `migrate up` would run it again: take the history over with `migrate adopt yoyo --yes` "
            "(or `migrate mark ID...`), then run `migrate up`")


def _select_up_to(files: list[MigrationFile], pending: list[str], to: str | None) -> list[MigrationFile]:
    if to is not None:
        to = resolve_id(to, [m.id for m in files], "--to")
    chosen: list[MigrationFile] = []
    wanted = set(pending)
    for m in files:
        if m.id in wanted:
            chosen.append(m)
        if m.id == to:
            break
    return chosen


@dataclass
class _UpProgress:
    """Collects what `up` applied and reports each step (runner.engine.Progress): as log events,
    or through ``view`` (e.g. runner.console.ConsoleProgress) instead."""

    result: UpResult
    total: int
    started: float
    position: dict[str, int]
    view: Any = None  # a Progress with running(); None: log events
    begun: dict[str, None] = field(default_factory=dict)  # ids, in the order they began

    def __post_init__(self) -> None:
        if self.view is not None and hasattr(self.view, "begin"):
            self.view.begin(self.position)

    def _elapsed(self) -> float:
        return round(time.perf_counter() - self.started, 2)

    def applying(self, migration: MigrationFile, batch: int) -> None:
        self.begun.setdefault(migration.id)
        if self.view is not None:
            self.view.applying(migration, batch)
            return
        extra = {"batch": batch} if batch > 1 else {}
        log.info("applying", migration=migration.id, n=self.position[migration.id], total=self.total, **extra)

    def applied(self, migration: MigrationFile, seconds: float) -> None:
        self.result.applied.append(migration.id)
        if self.view is not None:
            self.view.applied(migration, seconds)
            return
        log.info("applied", migration=migration.id, n=self.position[migration.id], total=self.total,
                 duration_ms=round(seconds * 1000, 1), outcome="applied", elapsed_s=self._elapsed())

    def failed(self, migration: MigrationFile, error: BaseException) -> None:
        where = {"file": getattr(error, "file", None) or migration.path, "line": getattr(error, "line", None)}
        if not isinstance(error, DatabaseUnreachable):  # else it may have committed: it stays unconfirmed
            self.result.failed = {"id": migration.id, **where, "error": str(error)}
        if self.view is not None:
            self.view.failed(migration, error)
            return
        log.error("failed", migration=migration.id, n=self.position[migration.id], total=self.total,
                  outcome="failed", elapsed_s=self._elapsed(), error=str(error), **where)

    def batch_failed(self, batch: Sequence[MigrationFile], error: str) -> None:
        if self.view is not None:
            self.view.batch_failed(batch, error)
            return
        log.info("batch rolled back, applying its migrations one by one", first=batch[0].id, last=batch[-1].id,
                 error=error)

    def running(self, migration: MigrationFile, activity: Any) -> None:
        """A heartbeat (runner.heartbeat): ``migration`` is still running; ``activity`` says on what."""
        if self.view is not None:
            self.view.running(migration, activity)
            return
        log.info("running", migration=migration.id, n=self.position[migration.id], total=self.total,
                 **activity.as_dict())


def _partial(result: UpResult, todo: Sequence[str], begun: dict[str, None]) -> dict[str, Any]:
    """What a failed `up` did: applied (durable), failed, pending (not started), unconfirmed
    (sent, maybe committed: the connection was lost before the commit was confirmed)."""
    done = set(result.applied) | ({result.failed["id"]} if result.failed else set())
    return {"database": result.database, "applied": list(result.applied), "failed": result.failed,
            "pending": [i for i in todo if i not in done and i not in begun],
            "unconfirmed": [i for i in begun if i not in done]}


def up(
    settings: Settings,
    *,
    to: str | None = None,
    dry_run: bool = False,
    hooks: Sequence[MigrationHook] | None = None,
    compat: bool = True,
    view: Any = None,
) -> UpResult:
    """Apply pending migrations in order, each exactly once, under the runner's lock.

    ``view``: reports progress instead of the log events (a runner.engine.Progress with
    ``running(migration, activity)``, e.g. runner.console.ConsoleProgress). On failure the error
    carries what was done (``err.partial``: applied, failed, pending, unconfirmed)."""
    result = UpResult(dry_run=dry_run)
    todo_ids: list[str] = []
    begun: dict[str, None] = {}
    try:
        return _up(settings, result, todo_ids, begun, to=to, dry_run=dry_run, hooks=hooks, compat=compat, view=view)
    except BaseException as err:
        try:
            err.partial = _partial(result, todo_ids, begun)  # type: ignore[attr-defined]
        except AttributeError:  # an exception class that takes no attributes
            pass
        raise


def _up(settings: Settings, result: UpResult, todo_ids: list[str], begun: dict[str, None], *, to: str | None,
        dry_run: bool, hooks: Sequence[MigrationHook] | None, compat: bool, view: Any) -> UpResult:
    started = time.perf_counter()
    files, post_apply = load_folder(settings.migrations, settings.sources.get("migrations"))
    statement_kinds.refuse_transaction_control(post_apply)
    with open_database(settings) as db:
        result.database = db.url
        log.info("migrating", database=db.url, migrations=str(settings.migrations), dry_run=dry_run)
        if dry_run:
            state, todo = _what_to_apply(db, files, to, settings.migrations)
            preflight.check_pending(settings, files, todo)
            result.pending_before = list(state.pending)
            result.warnings = folder_warnings(settings, files, state)
            hooks_due = _post_apply_due(db, post_apply, todo)
            result.plan = [PlanItem(m.id, m.path, m.transactional, [s.sql for s in m.up], post_apply=n >= len(todo))
                           for n, m in enumerate(todo + hooks_due)]
            result.post_apply = [m.id for m in hooks_due]
            result.duration_s = time.perf_counter() - started
            return result
        with runner_lock(db, settings.lock_wait):
            state, todo = _what_to_apply(db, files, to, settings.migrations)
            preflight.check_pending(settings, files, todo)  # nothing has run yet
            result.pending_before = list(state.pending)
            result.warnings = folder_warnings(settings, files, state)
            todo_ids.extend(m.id for m in todo)
            if todo:  # a no-op `up` needs neither the tables, the engine nor the hooks
                from runner.engine import Engine
                from runner.heartbeat import Heartbeat

                history.ensure_tables(db)
                engine = Engine(db, settings, list(hooks) if hooks is not None
                                else default_hooks(settings, compat, todo[-1].id))
                previous_of = {m.id: files[i - 1] if i else None for i, m in enumerate(files)}
                progress = _UpProgress(result, len(todo), started, {m.id: n for n, m in enumerate(todo, 1)}, view,
                                       begun)
                with Heartbeat(db, progress) as watched:
                    engine.apply(todo, previous_of, watched, nothing_applied=not state.applied)
            hooks_due = _post_apply_due(db, post_apply, todo)
            if hooks_due:
                applied = {a.id for a in state.applied} | set(result.applied)
                last = next((m.id for m in reversed(files) if m.id in applied), "")  # "": nothing stays applied
                result.post_apply = _run_post_apply(db, settings, hooks_due, last, result)
        result.shims = _active_shims(db)
    result.duration_s = time.perf_counter() - started
    return result


def folder_warnings(settings: Settings, files: list[MigrationFile], state: Status) -> list[str]:
    """Say so (and log it) when the migrations folder has no migrations: a wrong path reads as
    "at head" otherwise. With a history it is surely the wrong folder."""
    if files:
        return []
    if state.applied:
        text = (f"the migrations folder {settings.migrations} has no migrations but the database has "
                f"{len(state.applied)} applied: wrong --migrations path?")
    else:
        text = f"the migrations folder {settings.migrations} has no migrations: nothing to apply"
    log.warning("no migrations in the folder", folder=str(settings.migrations), applied=len(state.applied))
    return [text]


def _post_apply_due(db: Database, hooks: list[MigrationFile], todo: list[MigrationFile]) -> list[MigrationFile]:
    """The post-apply hooks to run: all of them when the run applies something, or when a migration
    was applied after one of them last ran (its transaction failed: this run finishes the job)."""
    if hooks and (todo or history.post_apply_due(db, [h.id for h in hooks])):
        return hooks
    return []


def _run_post_apply(db: Database, settings: Settings, hooks: list[MigrationFile], last_applied: str,
                    result: UpResult) -> list[str]:
    """Each hook in its own transaction, with the lock timeout and retries of a migration and
    without the compat checks; the last one stores the schema snapshot (under ``last_applied``),
    so what the hooks build is part of what ``doctor`` expects."""
    from runner.engine import Engine
    from runner.snapshot import SnapshotHook

    engine = Engine(db, settings, [SnapshotHook(final_migration_id=hooks[-1].id, label=last_applied)])
    done = []
    for hook in hooks:
        log.info("running post-apply hook", hook=hook.id)
        try:
            seconds = engine.post_apply(hook)
        except Exception as err:
            where = {"file": getattr(err, "file", None) or hook.path, "line": getattr(err, "line", None)}
            log.error("post-apply hook failed", hook=hook.id, outcome="failed", error=str(err), **where)
            result.failed = {"id": hook.id, **where, "error": str(err), "post_apply": True}
            raise
        log.info("post-apply hook ran", hook=hook.id, duration_ms=round(seconds * 1000, 1), outcome="ran")
        done.append(hook.id)
    return done


def _active_shims(db: Database) -> list[dict[str, Any]]:
    """The active shims `up` lists at the end."""
    return registry.active_summary(db)


def down(settings: Settings, *, to: str | None = None, steps: int | None = None) -> DownResult:
    """Roll back the last ``steps`` applied migrations (default 1), or all after ``to``."""
    from runner.engine import Engine  # not at the top: a no-op `up` does not import the engine

    if to is not None and steps is not None:
        raise UsageError("give either --to or --steps, not both")
    started = time.perf_counter()
    files = load_migrations(settings.migrations, settings.sources.get("migrations"))
    by_id = {m.id: m for m in files}
    order = {m.id: i for i, m in enumerate(files)}
    result = DownResult()
    with open_database(settings) as db, runner_lock(db, settings.lock_wait):
        history.ensure_tables(db)
        state = compute(files, history.read_applied(db))
        _refuse_drift(state)
        applied = sorted((a.id for a in state.applied), key=lambda i: order[i], reverse=True)
        if to is not None:
            to = resolve_id(to, [m.id for m in files], "--to")
            victims = [i for i in applied if order[i] > order[to]]
        else:
            victims = applied[: 1 if steps is None else steps]
        for mid in victims:
            migration = by_id[mid]
            if not migration.has_down:
                raise UsageError(f"{migration.path}: {mid} has no rollback (no Down section or .rollback.sql); "
                                 "nothing was rolled back after it")
        statement_kinds.refuse_transaction_control([by_id[mid] for mid in victims], "rollback")
        engine = Engine(db, settings, default_hooks(settings, final_migration_id=victims[-1] if victims else None))
        for mid in victims:
            index = order[mid]
            engine.rollback(by_id[mid], files[index - 1] if index else None)
            result.rolled_back.append(mid)
            log.info("rolled back", migration=mid, outcome="rolled back")
    result.duration_s = time.perf_counter() - started
    return result


def _resolve(files: list[MigrationFile], ids: Sequence[str]) -> list[MigrationFile]:
    by_id = {m.id: m for m in files}
    return [by_id[i] for i in dict.fromkeys(resolve_ids(ids, by_id))]


@dataclass
class BookkeepingResult:
    """What `mark`/`unmark`/`rehash` did (``done``) and left alone because there was nothing to do
    (``unchanged``: already recorded, or the recorded checksum already matches the file)."""

    done: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


def _bookkeeping(settings: Settings, ids: Sequence[str], operation: str) -> BookkeepingResult:
    files = load_migrations(settings.migrations, settings.sources.get("migrations"))
    result = BookkeepingResult()
    with open_database(settings) as db, runner_lock(db, settings.lock_wait):
        history.ensure_tables(db)
        recorded = {a.migration_id: a for a in history.read_applied(db)}
        if operation == "unmark":
            known = {m.id: m for m in files}
            # A recorded id whose file is gone can still be forgotten: resolve against both.
            names = resolve_ids(ids, [*known, *(i for i in recorded if i not in known)])
            targets = [known.get(i) or MigrationFile(i, "", "sql", "", None, None) for i in dict.fromkeys(names)]
            missing = [t.id for t in targets if t.id not in recorded]
            if missing:
                raise UsageError(f"not recorded as applied: {', '.join(missing)}")
        else:
            targets = _resolve(files, ids)
            if operation == "rehash":
                missing = [t.id for t in targets if t.id not in recorded]
                if missing:
                    raise UsageError(f"not recorded as applied (nothing to rehash): {', '.join(missing)}")
        for target in targets:
            unchanged = (operation == "mark" and target.id in recorded) or (
                operation == "rehash" and recorded[target.id].checksum == target.checksum)
            (result.unchanged if unchanged else result.done).append(target.id)
        if result.done:
            with transaction(db):
                bookkeeping = history.Bookkeeping(db)
                for target in targets:
                    if target.id in result.done:
                        history.record(db, target, operation, bookkeeping=bookkeeping)
    return result


def mark(settings: Settings, ids: Sequence[str]) -> BookkeepingResult:
    """Record migrations as applied without running them (baseline an existing database); those
    already recorded are left alone (``unchanged``)."""
    return _bookkeeping(settings, ids, "mark")


def unmark(settings: Settings, ids: Sequence[str]) -> BookkeepingResult:
    """Forget that migrations were applied, without running their rollback."""
    return _bookkeeping(settings, ids, "unmark")


def rehash(settings: Settings, ids: Sequence[str]) -> BookkeepingResult:
    """Accept the current content of applied migrations as their recorded checksum; those whose
    checksum already matches are left alone (``unchanged``, no log row)."""
    return _bookkeeping(settings, ids, "rehash")


# Letters and digits of any script, as the loader accepts them (004_ünïcode_列.sql); the rest becomes "_".
_NAME = re.compile(r"[\W_]+")


_MAX_FILE_NAME = 255  # bytes: NAME_MAX of Linux and macOS file systems


def new(settings: Settings, name: str, fmt: str = "sql") -> Path:
    """Scaffold the next numbered migration file; returns its path."""
    slug = _NAME.sub("_", unicodedata.normalize("NFC", name).lower()).strip("_")
    if not slug:
        raise UsageError(f"migration name {name!r} has no letters or digits")
    folder = settings.migrations
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        source = settings.sources.get("migrations", "migrations")
        reason = "a file, not a folder" if isinstance(err, FileExistsError) else err.strerror
        raise ConfigError(f"{source}: cannot create the migrations folder {folder}: {reason}") from None
    files = load_migrations(folder)
    versions = [m for m in files if m.version is not None]
    width = max((len(m.version_label or "") for m in versions), default=3)
    number = max((m.version or 0 for m in versions), default=0) + 1
    path = folder / f"{number:0{width}d}_{slug}.sql"
    if len(path.name.encode("utf-8")) > _MAX_FILE_NAME:
        raise UsageError(f"migration name is too long: the file name would be {len(path.name.encode('utf-8'))}"
                         f" bytes (at most {_MAX_FILE_NAME})")
    title = " ".join(name.split())  # one comment line, whatever newlines the name holds
    template = {
        "sql": f"-- {title}\n-- depends:\n\n",
        "goose": "-- +goose Up\n-- +goose StatementBegin\n\n-- +goose StatementEnd\n\n"
                 "-- +goose Down\n-- +goose StatementBegin\n\n-- +goose StatementEnd\n",
    }
    if fmt not in template:
        raise UsageError(f"unknown migration file format {fmt!r}: expected sql or goose")
    try:
        with open(path, "x", encoding="utf-8") as fh:
            fh.write(template[fmt])
    except OSError as err:
        raise ConfigError(f"{path}: cannot create the migration file: {err.strerror}") from None
    return path
