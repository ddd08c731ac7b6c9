"""The shim registry: the runner's record of every compatibility shim, never deleted.

This module owns ``_migrate_shims`` (in the runner's schema on PostgreSQL, the database on
SQLite), created on demand inside the caller's transaction: one row per shim (a view): name,
migration id, table, old -> new (``renames`` holds every rename when one view covers several),
the version it presents (``as_of``) and its compat schema, the column map used to rebuild it,
created_at/by/client, expires_at, status (active/dropped), dropped_at/by, reason, and
``extensions``: a JSON list of ``{at, by, from, to, reason}``. Rows are updated (status, expiry)
but never deleted: they are the audit trail. Nothing here commits: callers own the transaction.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

from compat.model import Shim, _iso
from runner.db import quote_identifier

if TYPE_CHECKING:
    from runner.db import Database

SHIMS = "_migrate_shims"
TABLES = (SHIMS, f"{SHIMS}_id_seq", f"{SHIMS}_active_name")

_DDL = (
    """CREATE TABLE IF NOT EXISTS {shims} (
        id {serial_key},
        name text NOT NULL,
        migration_id text NOT NULL,
        table_schema text,
        table_name text NOT NULL,
        old_name text NOT NULL,
        new_name text NOT NULL,
        renames {json} NOT NULL,
        expose text NOT NULL DEFAULT 'old',
        as_of text NOT NULL,
        compat_schema text,
        view_name text NOT NULL,
        columns {json} NOT NULL,
        created_at {timestamp} NOT NULL,
        created_by text NOT NULL,
        created_client text,
        expires_at {timestamp} NOT NULL,
        status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'dropped')),
        dropped_at {timestamp},
        dropped_by text,
        reason text,
        extensions {json} NOT NULL DEFAULT '[]'
    )""",
    "CREATE UNIQUE INDEX IF NOT EXISTS {index} ON {shims} (name) WHERE status = 'active'",
)
_COLUMNS = (
    "id, name, migration_id, table_schema, table_name, old_name, new_name, renames, expose, as_of, "
    "compat_schema, view_name, columns, created_at, created_by, created_client, expires_at, status, "
    "dropped_at, dropped_by, reason, extensions"
)


class Registry:
    """Registry access on one :class:`runner.db.Database`, inside the caller's transaction."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._table = db.qualify(SHIMS)

    def _json(self) -> str:
        return self.db.dialect.types["json_param"]

    def exists(self) -> bool:
        """Whether the registry table exists (commands read nothing when it does not)."""
        return self.db.table_exists(SHIMS)

    def ensure(self) -> None:
        """Create the registry table if missing (inside the caller's transaction)."""
        if self.exists():
            return
        index = quote_identifier(f"{SHIMS}_active_name")
        for ddl in _DDL:
            self.db.execute(ddl.format(shims=self._table, index=index, **self.db.dialect.types))

    def now(self) -> datetime:
        return self.db.now()

    def who(self) -> str:
        user, client = self.db.dialect.actor(self.db)
        return f"{user} ({client})"

    # -- rows ---------------------------------------------------------------------------
    def add(self, *, name: str, migration_id: str, table_schema: str | None, table_name: str,
            renames: list[dict[str, str]], expose: str, as_of: str, compat_schema: str | None,
            view_name: str, columns: list[dict[str, Any]], created_at: datetime, expires_at: datetime) -> Shim:
        """Insert an active shim row and return it."""
        user, client = self.db.dialect.actor(self.db)
        ts = self.db.dialect.ts_in
        row = self.db.execute(
            f"INSERT INTO {self._table} (name, migration_id, table_schema, table_name, old_name, new_name, renames, "
            "expose, as_of, compat_schema, view_name, columns, created_at, created_by, created_client, "
            f"expires_at, status, extensions) VALUES (%s, %s, %s, %s, %s, %s, {self._json()}, %s, %s, %s, %s, "
            f"{self._json()}, %s, %s, %s, %s, 'active', '[]') RETURNING id",
            (name, migration_id, table_schema, table_name, ", ".join(r["old"] for r in renames),
             ", ".join(r["new"] for r in renames), json.dumps(renames), expose, as_of, compat_schema, view_name,
             json.dumps(columns), ts(created_at), user, client, ts(expires_at))).fetchone()
        return self.get(row[0])

    def _shim(self, row: Any) -> Shim:
        (id_, name, migration_id, table_schema, table_name, old, new, renames, expose, as_of, compat_schema,
         view_name, columns, created_at, created_by, created_client, expires_at, status, dropped_at,
         dropped_by, reason, extensions) = row
        d = self.db.dialect
        return Shim(
            id=id_, name=name, migration_id=migration_id, table_schema=table_schema, table_name=table_name,
            old=old, new=new, renames=d.json_out(renames), expose=expose, as_of=as_of,
            compat_schema=compat_schema, view_name=view_name, columns=d.json_out(columns),
            created_at=d.ts_out(created_at), created_by=created_by, created_client=created_client,
            expires_at=d.ts_out(expires_at), status=status, dropped_at=d.ts_out(dropped_at),
            dropped_by=dropped_by, reason=reason, extensions=d.json_out(extensions))

    def get(self, shim_id: int) -> Shim:
        return self._shim(self.db.execute(f"SELECT {_COLUMNS} FROM {self._table} WHERE id = %s", (shim_id,)).fetchone())

    def shims(self, status: str | None = None, *, for_update: bool = False) -> list[Shim]:
        """Every shim (or those with ``status``), oldest first; [] when the registry does not exist.
        ``for_update``: lock the rows (PostgreSQL) until the caller's transaction ends."""
        if not self.exists():
            return []
        where = " WHERE status = %s" if status else ""
        lock = self.db.dialect.for_update if for_update else ""
        rows = self.db.execute(f"SELECT {_COLUMNS} FROM {self._table}{where} ORDER BY id{lock}",
                               (status,) if status else ()).fetchall()
        return [self._shim(r) for r in rows]

    def view_names(self, compat_schema: str) -> set[str]:
        """The views the registry ever placed in ``compat_schema`` (one indexed-size query, no JSON)."""
        if not self.exists():
            return set()
        rows = self.db.execute(f"SELECT DISTINCT view_name FROM {self._table} WHERE compat_schema = %s",
                               (compat_schema,)).fetchall()
        return {r[0] for r in rows}

    def mark_dropped(self, shim: Shim, reason: str | None) -> Shim:
        """Set status dropped, dropped_at (now), dropped_by and reason."""
        self.db.execute(
            f"UPDATE {self._table} SET status = 'dropped', dropped_at = %s, dropped_by = %s, reason = %s WHERE id = %s",
            (self.db.dialect.ts_in(self.now()), self.who(), reason, shim.id))
        return self.get(shim.id)

    def set_expiry(self, shim: Shim, expires_at: datetime, reason: str) -> Shim:
        """Move ``expires_at`` and append ``{at, by, from, to, reason}`` to the extension history."""
        entry = {"at": _iso(self.now()), "by": self.who(), "from": _iso(shim.expires_at), "to": _iso(expires_at),
                 "reason": reason}
        self.db.execute(f"UPDATE {self._table} SET expires_at = %s, extensions = {self._json()} WHERE id = %s",
                        (self.db.dialect.ts_in(expires_at), json.dumps([*shim.extensions, entry]), shim.id))
        return self.get(shim.id)

    def set_columns(self, shim: Shim, columns: list[dict[str, Any]]) -> None:
        """Replace the column map (SQLite: after a declared rename of an exposed column)."""
        self.db.execute(f"UPDATE {self._table} SET columns = {self._json()} WHERE id = %s",
                        (json.dumps(columns), shim.id))

    def set_shape(self, shim: Shim, columns: list[dict[str, Any]], renames: list[dict[str, str]],
                  table_name: str | None = None) -> Shim:
        """Replace the column map and the renames (and the table's name, after a table rename) once a
        shim view was rebuilt around a migration."""
        self.db.execute(
            f"UPDATE {self._table} SET columns = {self._json()}, renames = {self._json()}, old_name = %s, new_name = %s, "
            "table_name = %s WHERE id = %s",
            (json.dumps(columns), json.dumps(renames), ", ".join(r["old"] for r in renames),
             ", ".join(r["new"] for r in renames), table_name or shim.table_name, shim.id))
        return self.get(shim.id)


def active_summary(db: Database) -> list[dict[str, Any]]:
    """Active shims as JSON objects, soonest expiry first (printed at the end of ``migrate up``)."""
    return [s.to_json() for s in sorted(Registry(db).shims("active"), key=lambda s: s.expires_at)]
