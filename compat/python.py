"""Declaring a rename from a ``.py`` yoyo migration.

Call :func:`rename_column` at module level::

    from compat.python import rename_column

    rename_column("remediation_workflow_catalog", "execution_bundle", "container_image", window="14d")

It adds a yoyo step that performs the rename (rolled back by the reverse
rename) through the module's yoyo step collector, and appends
``("compat", "rename ... window=14d")`` to the module's ``__directives__``
list, which the runner reads like a ``-- compat:`` header directive. Names are
taken exactly as given (no case folding): the generated directive quotes them
where needed.
"""

from __future__ import annotations

import inspect
from datetime import date, datetime, timedelta
from typing import Any

from compat.declarations import DeclarationError, RenameDeclaration, parse_rename, parse_until
from runner.db import quote_identifier as quote
from runner.durations import parse_duration


def _migration_globals() -> dict[str, Any]:
    """The globals of the migration module being loaded by yoyo (found by its step collector)."""
    frame = inspect.currentframe()
    try:
        while frame is not None:
            if "__yoyo_collector__" in frame.f_globals:
                return frame.f_globals
            frame = frame.f_back
    finally:
        del frame
    raise RuntimeError("rename_column() must be called at module level in a yoyo .py migration while it is loaded")


def _quoted(*names: str) -> str:
    return ".".join(quote(n) for n in names)


def rename_column(
    table: str,
    old: str,
    new: str,
    *,
    schema: str | None = None,
    window: str | timedelta | None = None,
    until: str | date | datetime | None = None,
    expose: str = "old",
) -> str:
    """Rename ``table.old`` to ``new`` in this migration and declare a compat shim for it.

    ``table`` may be ``"schema.table"`` when ``schema`` is not given. Returns
    the directive text. Raises ValueError for a bad window/until/expose.
    """
    if schema is None and "." in table:
        schema, table = table.split(".", 1)
    if window is not None and until is not None:
        raise ValueError("give either window= or until=, not both")
    if expose not in ("old", "both"):
        raise ValueError(f"expose: expected old or both, got {expose!r}")
    try:
        declaration = RenameDeclaration(
            table=table, old=old, new=new, schema=schema,
            window=(window if isinstance(window, timedelta) else parse_duration(window, "window"))
            if window is not None else None,
            until=parse_until(until) if until is not None else None,
            expose=expose,
        )
        text = declaration.text
        parse_rename(text)  # the directive must read back exactly
    except DeclarationError as err:
        raise ValueError(str(err)) from None
    module = _migration_globals()
    target = _quoted(schema, table) if schema else _quoted(table)
    module["__yoyo_collector__"].add_step(
        f"ALTER TABLE {target} RENAME COLUMN {_quoted(old)} TO {_quoted(new)}",
        f"ALTER TABLE {target} RENAME COLUMN {_quoted(new)} TO {_quoted(old)}",
    )
    module.setdefault("__directives__", []).append(("compat", text))
    return text

