"""The one model of a compatibility shim and of a role route, as the registry records them.

Every reader (``shims list``/``audit``, ``verify``, ``doctor``, ``envs``, ``lint``, contracts)
uses these records, and judges expiry with :meth:`Shim.expired` against the database's clock
(:meth:`runner.db.Database.now`), so no two commands disagree near an expiry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(timezone.utc).isoformat() if value is not None else None


@dataclass
class Shim:
    """One registry row: a shim view and its life cycle.

    ``columns`` is the view's column map, as the dialect's view builder keeps it (PostgreSQL:
    ``{"name", "attnum"}``; SQLite: ``{"name", "column"}``); ``renames`` every declared rename
    the view presents (``[{"old", "new"}]``).
    """

    id: int
    name: str
    migration_id: str
    table_schema: str | None
    table_name: str
    old: str
    new: str
    renames: list[dict[str, str]]
    expose: str
    as_of: str
    compat_schema: str | None
    view_name: str
    columns: list[dict[str, Any]]
    created_at: datetime
    created_by: str
    created_client: str | None
    expires_at: datetime
    status: str
    dropped_at: datetime | None = None
    dropped_by: str | None = None
    reason: str | None = None
    extensions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def table(self) -> str:
        """``schema.table`` (or the table alone on SQLite)."""
        return f"{self.table_schema}.{self.table_name}" if self.table_schema else self.table_name

    @property
    def active(self) -> bool:
        return self.status == "active"

    def expired(self, now: datetime) -> bool:
        """Past its expiry at ``now`` (the database's clock)."""
        return self.expires_at <= now

    @property
    def exposed(self) -> tuple[str, ...]:
        """The base-table column names the view presents (its old names mapped through the renames)."""
        renames = {r["old"]: r["new"] for r in self.renames} or {self.old: self.new}
        return tuple(dict.fromkeys(c.get("base") or renames.get(c["name"], c["name"]) for c in self.view_columns
                                   if c.get("show", "column") in ("column", "rename", "cast")))

    @property
    def view_columns(self) -> list[dict[str, Any]]:
        """The view's own columns (the column map without the table's hidden columns)."""
        return [c for c in self.columns if not c.get("hidden")]

    @property
    def shape(self) -> dict[str, list[str]]:
        """What the view hides, renames, casts and fills (see compat.shapes.describe)."""
        from compat.shapes import describe  # not at the top: every `migrate up` reads shims, few describe them

        return describe(self.columns)

    @property
    def presents(self) -> str:
        """What the view does to the table, in words: ``renames a as b; hides c; fills d with NULL::text``."""
        if not self.shape:
            return f"{self.old} -> {self.new}" if self.old else "-"
        return "; ".join(f"{verb} {', '.join(items)}" for verb, items in self.shape.items())

    @property
    def change(self) -> str:
        """The shim's change for messages: ``table.old -> new`` for a rename, else what it presents."""
        return f"{self.table}.{self.old} -> {self.new}" if self.old else f"{self.table}: {self.presents}"

    def to_json(self) -> dict[str, Any]:
        """The JSON object ``shims list`` prints."""
        return {
            "name": self.name, "table": self.table, "old": self.old, "new": self.new, "renames": self.renames,
            "schema": self.compat_schema, "view": self.view_name, "as_of": self.as_of, "expose": self.expose,
            "migration": self.migration_id, "created_at": _iso(self.created_at), "created_by": self.created_by,
            "created_client": self.created_client, "expires_at": _iso(self.expires_at), "status": self.status,
            "dropped_at": _iso(self.dropped_at), "dropped_by": self.dropped_by, "reason": self.reason,
            "extensions": self.extensions, "shape": self.shape,
        }


@dataclass
class Route:
    """One registry row of ``shims route``: a role whose search_path the runner set."""

    id: int
    role: str
    database: str | None
    as_of: str
    compat_schema: str
    search_path: str
    previous_setting: str | None
    routed_at: datetime
    routed_by: str
    status: str
    undone_at: datetime | None = None
    undone_by: str | None = None
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "role": self.role, "database": self.database, "as_of": self.as_of,
            "schema": self.compat_schema, "search_path": self.search_path,
            "previous_setting": self.previous_setting, "routed_at": _iso(self.routed_at),
            "routed_by": self.routed_by, "status": self.status, "undone_at": _iso(self.undone_at),
            "undone_by": self.undone_by, "reason": self.reason,
        }
