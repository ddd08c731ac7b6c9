"""The one seam to yoyo-migrations: the only module that imports yoyo.

What the runner takes from yoyo, and nothing else:

* Python migrations: steps are collected by yoyo's own :class:`yoyo.migrations.StepCollector`
  (``step()``, ``group()``, ``transaction()``, whether the file calls ``yoyo.step`` or the
  injected names) and run by yoyo's step machinery (:func:`run_python_steps`) on a yoyo backend
  wrapped around the runner's own connection, inside the runner's transaction; a failure is
  located as ``file:line`` and step (:func:`python_failure`).
* yoyo's tables (``_yoyo_migration``, ``_yoyo_log``, ``_yoyo_version``), kept in step with the
  runner's history so that ``yoyo list`` agrees with ``migrate status``: created with yoyo's
  own DDL (schema-qualified), written by the SQL templates here.
* the migration hash (``get_migration_hash``) and yoyo's stable topological sort on ``depends``.

Supported yoyo versions: see ``pyproject.toml``; tests/unit/test_yoyo_adapter.py is run against
the lowest and the highest by ``.ci/run``.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from runner.errors import MigrationFileError
from runner.migration import Directive, MigrationFile

if TYPE_CHECKING:
    from runner.db import Database

MIGRATION_TABLE = "_yoyo_migration"
LOG_TABLE = "_yoyo_log"
VERSION_TABLE = "_yoyo_version"
LOCK_TABLE = "yoyo_lock"
TABLES = (MIGRATION_TABLE, LOG_TABLE, VERSION_TABLE, LOCK_TABLE)
SCHEMA_VERSION = 2  # yoyo's internal schema version written by yoyo 6 and later

# Bookkeeping rows of yoyo's tables for each operation: (SQL with {yoyo_migration}/{yoyo_log}
# slots, {at_utc} and :name parameters). runner.history writes them with its own rows.
UPSERT = (
    "INSERT INTO {yoyo_migration} (migration_hash, migration_id, applied_at_utc) VALUES (:hash, :id, {at_utc}) "
    "ON CONFLICT (migration_hash) DO UPDATE SET migration_id = excluded.migration_id, "
    "applied_at_utc = excluded.applied_at_utc"
)
DELETE = "DELETE FROM {yoyo_migration} WHERE migration_hash = :hash"
LOG = ("INSERT INTO {yoyo_log} (id, migration_hash, migration_id, operation, username, hostname, comment, "
       "created_at_utc) VALUES (:uid, :hash, :id, :op, :user, :host, 'migrate-runner', {at_utc})")
OPERATIONS = {"apply": (UPSERT, LOG), "mark": (UPSERT, LOG), "rollback": (DELETE, LOG), "unmark": (DELETE, LOG)}


def migration_hash(migration_id: str) -> str:
    """yoyo's key for a migration (a hash of its id)."""
    from yoyo.migrations import get_migration_hash

    return get_migration_hash(migration_id)


def topological_order(ids: Sequence[str], depends: dict[str, set[str]]) -> list[str]:
    """yoyo's stable topological sort; raises ValueError naming the cycle."""
    from yoyo.topologicalsort import CycleError, topological_sort

    try:
        return list(topological_sort(list(ids), depends))
    except CycleError as err:
        raise ValueError(", ".join(map(str, err.args[1]))) from None


# --------------------------------------------------------------------------- yoyo's tables

def _backend_class(db: Database) -> type:
    if db.dialect.name == "postgresql":
        from yoyo.backends.core.postgresql import PostgresqlPsycopgBackend

        return PostgresqlPsycopgBackend
    from yoyo.backends.core.sqlite3 import SQLiteBackend

    return SQLiteBackend


def backend(db: Database) -> Any:
    """A yoyo backend using ``db``'s connection (made once per Database, on first use)."""
    made = db.facts.get("yoyo_backend")
    if made is not None:
        return made
    base = _backend_class(db)

    class Adopted(base):  # type: ignore[misc, valid-type]
        """yoyo's backend for this dialect, on the runner's connection, with qualified table names."""

        def __init__(self) -> None:  # not yoyo's: no URL to parse, no connection to open
            self.uri = None
            self.DatabaseError = self.driver.DatabaseError
            self._connection = db.connection
            self.migration_table = MIGRATION_TABLE
            self.has_transactional_ddl = True

        @property
        def migration_table_quoted(self) -> str:
            return db.qualify(MIGRATION_TABLE)

        @property
        def log_table_quoted(self) -> str:
            return db.qualify(LOG_TABLE)

        @property
        def version_table_quoted(self) -> str:
            return db.qualify(VERSION_TABLE)

        def rollback(self) -> None:  # yoyo's transactionless steps call it; the runner owns the transaction
            self._in_transaction = False

    made = db.facts["yoyo_backend"] = Adopted()
    return made


def ensure_tables(db: Database) -> None:
    """Create yoyo's tables (yoyo's own DDL, qualified with the runner's schema) if missing; in
    the caller's transaction."""
    from yoyo.internalmigrations import mark_schema_version, v2

    if db.table_exists(MIGRATION_TABLE):
        return
    made = backend(db)
    v2.create_migration_table(made)
    if not db.table_exists(LOG_TABLE):
        v2.create_log_table(made)
    if not db.table_exists(VERSION_TABLE):
        v2.create_version_table(made)
    mark_schema_version(made, SCHEMA_VERSION)


def applied_ids(db: Database, table: str = MIGRATION_TABLE) -> list[str]:
    """Migration ids in yoyo's migration table, in the order applied ([] when it does not exist)."""
    if not db.table_exists(table):
        return []
    return [r[0] for r in db.execute(
        f"SELECT migration_id FROM {db.qualify(table)} ORDER BY applied_at_utc, migration_id").fetchall()]


# --------------------------------------------------------------------------- Python migrations

def load_python(migration: MigrationFile, text: str) -> None:
    """Run the migration module (that is how yoyo collects steps) and fill in ``migration``."""
    collector = _collector(migration.path)
    module = types.ModuleType(migration.id)
    module.__file__ = migration.path
    module.step = collector.add_step  # type: ignore[attr-defined]
    module.group = collector.add_step_group  # type: ignore[attr-defined]
    module.transaction = collector.add_step_group  # type: ignore[attr-defined]
    module.__yoyo_collector__ = collector  # type: ignore[attr-defined]
    module.__directives__ = []  # type: ignore[attr-defined]
    try:
        exec(compile(text, migration.path, "exec"), module.__dict__)  # noqa: S102 - migrations are code
    except SyntaxError as err:
        raise MigrationFileError(migration.path, f"syntax error: {err.msg}", err.lineno) from None
    except Exception as err:  # noqa: BLE001 - any import-time failure is a bad file
        raise MigrationFileError(migration.path, f"failed to load: {type(err).__name__}: {err}",
                                 _innermost_line(err, migration.path)) from None
    migration.transactional = bool(getattr(module, "__transactional__", True))
    depends = getattr(module, "__depends__", ())
    migration.depends = (depends,) if isinstance(depends, str) else tuple(depends)
    migration.directives = [Directive(str(n), str(v), 0) for n, v in module.__directives__]
    migration.python_steps = collector.create_steps(migration.transactional)
    if not migration.python_steps:
        raise MigrationFileError(migration.path, "Python migration defines no step()")
    migration.python_rollback = any(getattr(getattr(s, "step", s), "_rollback", None) for s in migration.python_steps)


def run_python_steps(db: Database, migration: MigrationFile, direction: str) -> None:
    """Run the steps of a Python migration with yoyo's machinery, on the runner's connection, in
    the runner's transaction when there is one (yoyo then nests its steps as savepoints)."""
    from yoyo.migrations import Migration

    made = backend(db)
    steps = Migration(migration.id, migration.path, None)
    steps.use_transactions = migration.transactional
    steps._depends = set()
    steps.steps = migration.python_steps
    made._in_transaction = db.in_transaction
    try:
        steps.process_steps(made, "rollback" if direction == "rollback" else "apply")
    finally:
        made._in_transaction = False


def python_failure(migration: MigrationFile, direction: str, err: BaseException) -> tuple[int | None, str]:
    """Where ``err``, raised while running ``migration``'s steps, comes from: the file line (inside a
    step function, else the failing step's ``step()`` call) and a description of the step, such as
    `` in step `INSERT INTO ...` `` or `` in step fill()`` ('' when no step can be told)."""
    from yoyo.migrations import MigrationStep, StepGroup

    failing = None
    line = None
    tb = err.__traceback__
    while tb is not None:
        candidate = tb.tb_frame.f_locals.get("self")
        if isinstance(candidate, MigrationStep) and not isinstance(candidate, StepGroup):
            failing = candidate
        if tb.tb_frame.f_code.co_filename == migration.path:
            line = tb.tb_lineno  # inside a step function
        tb = tb.tb_next
    line = line or getattr(failing, "line", None)
    if failing is None:
        return line, ""
    code = failing._rollback if direction == "rollback" else failing._apply
    if isinstance(code, str):
        text = " ".join(code.split())
        return line, f" in step `{text[:120]}{'...' if len(text) > 120 else ''}`"
    return line, f" in step {getattr(code, '__name__', 'function')}()"


def _innermost_line(err: BaseException, path: str) -> int | None:
    """The last line of ``path`` in ``err``'s traceback."""
    line = None
    tb = err.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == path:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _collector(path: str) -> Any:
    from yoyo.migrations import StepCollector

    class LineNoting(StepCollector):
        """yoyo's collector; each step it creates carries ``line``, that of its ``step()`` call."""

        def add_step(self, *args: Any, **kwargs: Any) -> Any:
            create = super().add_step(*args, **kwargs)
            frame = sys._getframe(1)
            while frame is not None and frame.f_code.co_filename != path:
                frame = frame.f_back
            line = frame.f_lineno if frame is not None else None

            def create_noting_line(use_transactions: bool) -> Any:
                made = create(use_transactions)
                made.step.line = line  # made: yoyo's TransactionWrapper/Transactionless around the step
                return made

            del self.steps[create]  # group() finds its steps by the function add_step returned
            self.steps[create_noting_line] = 1
            return create_noting_line

    return LineNoting(migration=None)
