"""yoyo Python migrations: collect their steps, and find where in the file a failing step is.

Steps are collected by yoyo's own :class:`yoyo.migrations.StepCollector` (``step()``, ``group()``,
``transaction()``, whether the file calls ``yoyo.step`` or the injected names); the runner's
subclass only notes the line of each ``step()`` call, so a failure can name ``file:line`` and the
step, as it does for a SQL statement.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from runner.errors import MigrationFileError
from runner.migration import Directive, MigrationFile


def load(migration: MigrationFile, text: str) -> None:
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


def failure(migration: MigrationFile, direction: str, err: BaseException) -> tuple[int | None, str]:
    """Where ``err``, raised while running ``migration``'s steps, comes from: the file line (inside a
    step function, else the failing step's ``step()`` call) and a description of the step, such as
    `` in step `INSERT INTO ...` `` or `` in step fill() `` ('' when no step can be told)."""
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
