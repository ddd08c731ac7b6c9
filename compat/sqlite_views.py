"""SQLite shims: SQLite has no schemas, so a shim is a view with a templated name.

The name comes from ``Settings.compat.sqlite_view_template`` (default
``{table}__v{version}``: ``remediation_workflow_catalog__v017``). The view lists
the table's columns as they were at that version, under that version's names::

    CREATE VIEW "remediation_workflow_catalog__v017" AS
    SELECT "workflow_id" AS "workflow_id", ..., "container_image" AS "execution_bundle", ...
    FROM "remediation_workflow_catalog"

Reads through the old names work (``SELECT execution_bundle FROM
remediation_workflow_catalog__v017``). Writes do not: SQLite views are
read-only without INSTEAD OF triggers, and triggers cannot reproduce column
defaults faithfully (an omitted column arrives as NULL), so an INSERT, UPDATE
or DELETE through the shim fails with SQLite's own error "cannot modify ...
because it is a view". Old writers must be upgraded before the rename on SQLite.

Columns are tracked by name (``columns`` is a list of ``(view_column,
base_column)``); the hook updates the base names when a later declared rename
touches them. Identifiers are quoted with ``"..."`` doubling.
"""

from __future__ import annotations

from typing import Any


def quote(name: str) -> str:
    """``name`` as a double-quoted SQL identifier, ``"`` doubled (standard SQL: SQLite and PostgreSQL)."""
    return '"' + name.replace('"', '""') + '"'


def view_name(template: str, table: str, version: str) -> str:
    """The shim view's name for ``table`` at ``version``."""
    return template.format(table=table, version=version)


def table_exists(conn: Any, table: str) -> bool:
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()
    return row is not None


def object_exists(conn: Any, name: str) -> bool:
    """Whether any table, view, index or trigger is called ``name`` (case-insensitively, as SQLite compares)."""
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE lower(name) = lower(?)", (name,)).fetchone()
    return row is not None


def table_columns(conn: Any, table: str) -> list[str]:
    """Column names in ``SELECT *`` order (generated columns included)."""
    rows = conn.execute(f"PRAGMA table_xinfo({quote(table)})").fetchall()
    # hidden: 0 normal, 1 hidden (virtual tables), 2/3 generated (visible to SELECT *)
    return [r[1] for r in rows if r[6] != 1]


def create_view(conn: Any, *, view: str, table: str, columns: list[tuple[str, str]]) -> None:
    """Create ``view`` over ``table`` with ``columns`` = [(view column, base column)]."""
    select_list = ", ".join(f"{quote(base)} AS {quote(name)}" for name, base in columns)
    conn.execute(f"CREATE VIEW {quote(view)} AS SELECT {select_list} FROM {quote(table)}")


def drop_view(conn: Any, view: str) -> None:
    conn.execute(f"DROP VIEW IF EXISTS {quote(view)}")
