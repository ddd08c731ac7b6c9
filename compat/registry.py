"""The shim registry: the runner's record of every compatibility shim, never deleted.

Two tables in the runner's schema (PostgreSQL) or the database (SQLite),
created on demand with ``CREATE TABLE IF NOT EXISTS`` inside the caller's
transaction:

``_migrate_shims``
    one row per shim (a view): name, migration id, table, old -> new
    (``renames`` holds every rename when one view covers several), the version
    it presents (``as_of``) and its compat schema, the column map used to
    rebuild it, created_at/by/client, expires_at, status (active/dropped),
    dropped_at/by, reason, and ``extensions``: a JSON list of
    ``{at, by, from, to, reason}``.
``_migrate_shim_routes``
    one row per ``shims route``: the role, the search_path set, the setting it
    replaced, who and when, and when it was undone.

Rows are updated (status, expiry) but never deleted: they are the audit trail.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from compat import SHIMS_TABLE
from compat.sqlite_views import quote

SHIMS = SHIMS_TABLE
ROUTES = "_migrate_shim_routes"

_PG_DDL = [
    """CREATE TABLE IF NOT EXISTS {shims} (
        id bigserial PRIMARY KEY,
        name text NOT NULL,
        migration_id text NOT NULL,
        table_schema text,
        table_name text NOT NULL,
        old_name text NOT NULL,
        new_name text NOT NULL,
        renames jsonb NOT NULL,
        expose text NOT NULL DEFAULT 'old',
        as_of text NOT NULL,
        compat_schema text,
        view_name text NOT NULL,
        columns jsonb NOT NULL,
        created_at timestamptz NOT NULL,
        created_by text NOT NULL,
        created_client text,
        expires_at timestamptz NOT NULL,
        status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'dropped')),
        dropped_at timestamptz,
        dropped_by text,
        reason text,
        extensions jsonb NOT NULL DEFAULT '[]'
    )""",
    "CREATE UNIQUE INDEX IF NOT EXISTS {shims_idx} ON {shims} (name) WHERE status = 'active'",
    """CREATE TABLE IF NOT EXISTS {routes} (
        id bigserial PRIMARY KEY,
        role_name text NOT NULL,
        database_name text,
        as_of text NOT NULL,
        compat_schema text NOT NULL,
        search_path text NOT NULL,
        previous_setting text,
        routed_at timestamptz NOT NULL,
        routed_by text NOT NULL,
        status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'undone')),
        undone_at timestamptz,
        undone_by text,
        reason text
    )""",
]
_SQLITE_DDL = [
    """CREATE TABLE IF NOT EXISTS {shims} (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        migration_id TEXT NOT NULL,
        table_schema TEXT,
        table_name TEXT NOT NULL,
        old_name TEXT NOT NULL,
        new_name TEXT NOT NULL,
        renames TEXT NOT NULL,
        expose TEXT NOT NULL DEFAULT 'old',
        as_of TEXT NOT NULL,
        compat_schema TEXT,
        view_name TEXT NOT NULL,
        columns TEXT NOT NULL,
        created_at TEXT NOT NULL,
        created_by TEXT NOT NULL,
        created_client TEXT,
        expires_at TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'dropped')),
        dropped_at TEXT,
        dropped_by TEXT,
        reason TEXT,
        extensions TEXT NOT NULL DEFAULT '[]'
    )""",
    "CREATE UNIQUE INDEX IF NOT EXISTS {shims_idx} ON {shims} (name) WHERE status = 'active'",
    """CREATE TABLE IF NOT EXISTS {routes} (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        role_name TEXT NOT NULL,
        database_name TEXT,
        as_of TEXT NOT NULL,
        compat_schema TEXT NOT NULL,
        search_path TEXT NOT NULL,
        previous_setting TEXT,
        routed_at TEXT NOT NULL,
        routed_by TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'undone')),
        undone_at TEXT,
        undone_by TEXT,
        reason TEXT
    )""",
]

_SHIM_COLUMNS = (
    "id, name, migration_id, table_schema, table_name, old_name, new_name, renames, expose, as_of, "
    "compat_schema, view_name, columns, created_at, created_by, created_client, expires_at, status, "
    "dropped_at, dropped_by, reason, extensions"
)
_ROUTE_COLUMNS = (
    "id, role_name, database_name, as_of, compat_schema, search_path, previous_setting, routed_at, "
    "routed_by, status, undone_at, undone_by, reason"
)


@dataclass
class Shim:
    """One registry row: a shim view and its life cycle."""

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

    def to_json(self) -> dict[str, Any]:
        """The JSON object ``shims list`` prints."""
        return {
            "name": self.name,
            "table": self.table,
            "old": self.old,
            "new": self.new,
            "renames": self.renames,
            "schema": self.compat_schema,
            "view": self.view_name,
            "as_of": self.as_of,
            "expose": self.expose,
            "migration": self.migration_id,
            "created_at": _iso(self.created_at),
            "created_by": self.created_by,
            "created_client": self.created_client,
            "expires_at": _iso(self.expires_at),
            "status": self.status,
            "dropped_at": _iso(self.dropped_at),
            "dropped_by": self.dropped_by,
            "reason": self.reason,
            "extensions": self.extensions,
        }


@dataclass
class Route:
    """One registry row of ``shims route``: a role whose search_path we set."""

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


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(timezone.utc).isoformat() if value is not None else None


class Registry:
    """Registry access on one connection (psycopg 3 or sqlite3), inside the caller's transaction.

    ``schema`` is the runner's schema on PostgreSQL (None on SQLite). Nothing
    here commits: callers own the transaction.
    """

    def __init__(self, connection: Any, dialect: str, schema: str | None) -> None:
        self.connection = connection
        self.dialect = dialect
        self.schema = schema

    # -- plumbing -----------------------------------------------------------
    @property
    def is_pg(self) -> bool:
        return self.dialect == "postgresql"

    def _query(self, template: str) -> Any:
        """``template`` with {shims}, {routes}, {shims_idx} and {json} filled in for this dialect."""
        if self.is_pg:
            from psycopg import sql

            def table(name: str) -> Any:
                return sql.Identifier(self.schema, name) if self.schema else sql.Identifier(name)

            return sql.SQL(template).format(
                shims=table(SHIMS), routes=table(ROUTES), shims_idx=sql.Identifier(f"{SHIMS}_active_name"),
                json=sql.SQL("::jsonb"),
            )
        return template.format(
            shims=quote(SHIMS), routes=quote(ROUTES), shims_idx=quote(f"{SHIMS}_active_name"), json="",
        ).replace("%s", "?")

    def _execute(self, template: str, params: tuple[Any, ...] = ()) -> Any:
        return self.connection.execute(self._query(template), params)

    def _ts(self, value: datetime | None) -> Any:
        if value is None or self.is_pg:
            return value
        return value.astimezone(timezone.utc).isoformat()

    @staticmethod
    def _read_ts(value: Any) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        return value.astimezone(timezone.utc)

    @staticmethod
    def _read_json(value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value

    # -- schema ---------------------------------------------------------------
    def exists(self) -> bool:
        """Whether the registry table exists (commands read nothing when it does not)."""
        from runner.db import table_exists

        return table_exists(self.connection, self.dialect, self.schema, SHIMS)

    def ensure(self) -> None:
        """Create the registry tables if missing (inside the caller's transaction)."""
        for statement in _PG_DDL if self.is_pg else _SQLITE_DDL:
            self._execute(statement)

    # -- who and when ------------------------------------------------------------
    def now(self) -> datetime:
        """The database's clock (transaction start on PostgreSQL); UTC."""
        if self.is_pg:
            return self.connection.execute("SELECT now()").fetchone()[0].astimezone(timezone.utc)
        return datetime.now(timezone.utc)

    def actor(self) -> tuple[str, str]:
        """(database user, client) for created_by/dropped_by: client is application_name@address."""
        if self.is_pg:
            user, app, addr = self.connection.execute(
                "SELECT current_user, current_setting('application_name', true), host(inet_client_addr())"
            ).fetchone()
            return user, f"{app or 'unknown-app'}@{addr or 'local-socket'}"
        from runner.identity import host, os_user

        return os_user(), f"pid {os.getpid()}@{host()}"

    # -- shims -------------------------------------------------------------------
    def add(
        self, *, name: str, migration_id: str, table_schema: str | None, table_name: str,
        renames: list[dict[str, str]], expose: str, as_of: str, compat_schema: str | None,
        view_name: str, columns: list[dict[str, Any]], created_at: datetime, expires_at: datetime,
    ) -> Shim:
        """Insert an active shim row and return it."""
        user, client = self.actor()
        old = ", ".join(r["old"] for r in renames)
        new = ", ".join(r["new"] for r in renames)
        row = self._execute(
            "INSERT INTO {shims} (name, migration_id, table_schema, table_name, old_name, new_name, renames, "
            "expose, as_of, compat_schema, view_name, columns, created_at, created_by, created_client, "
            "expires_at, status, extensions) VALUES (%s, %s, %s, %s, %s, %s, %s{json}, %s, %s, %s, %s, "
            "%s{json}, %s, %s, %s, %s, 'active', '[]') RETURNING id",
            (name, migration_id, table_schema, table_name, old, new, json.dumps(renames), expose, as_of,
             compat_schema, view_name, json.dumps(columns), self._ts(created_at), user, client,
             self._ts(expires_at)),
        ).fetchone()
        return self.get(row[0])

    def _shim(self, row: Any) -> Shim:
        (id_, name, migration_id, table_schema, table_name, old, new, renames, expose, as_of, compat_schema,
         view_name, columns, created_at, created_by, created_client, expires_at, status, dropped_at,
         dropped_by, reason, extensions) = row
        return Shim(
            id=id_, name=name, migration_id=migration_id, table_schema=table_schema, table_name=table_name,
            old=old, new=new, renames=self._read_json(renames), expose=expose, as_of=as_of,
            compat_schema=compat_schema, view_name=view_name, columns=self._read_json(columns),
            created_at=self._read_ts(created_at), created_by=created_by, created_client=created_client,
            expires_at=self._read_ts(expires_at), status=status, dropped_at=self._read_ts(dropped_at),
            dropped_by=dropped_by, reason=reason, extensions=self._read_json(extensions),
        )

    def get(self, shim_id: int) -> Shim:
        row = self._execute(f"SELECT {_SHIM_COLUMNS} FROM {{shims}} WHERE id = %s", (shim_id,)).fetchone()
        return self._shim(row)

    def shims(self, status: str | None = None, *, for_update: bool = False) -> list[Shim]:
        """Every shim (or those with ``status``), oldest first; [] when the registry does not exist."""
        if not self.exists():
            return []
        where = " WHERE status = %s" if status else ""
        lock = " FOR UPDATE" if for_update and self.is_pg else ""
        rows = self._execute(
            f"SELECT {_SHIM_COLUMNS} FROM {{shims}}{where} ORDER BY id{lock}", (status,) if status else ()
        ).fetchall()
        return [self._shim(r) for r in rows]

    def mark_dropped(self, shim: Shim, reason: str | None) -> Shim:
        """Set status dropped, dropped_at (now), dropped_by and reason."""
        user, client = self.actor()
        self._execute(
            "UPDATE {shims} SET status = 'dropped', dropped_at = %s, dropped_by = %s, reason = %s WHERE id = %s",
            (self._ts(self.now()), f"{user} ({client})", reason, shim.id),
        )
        return self.get(shim.id)

    def set_expiry(self, shim: Shim, expires_at: datetime, reason: str) -> Shim:
        """Move ``expires_at`` and append ``{at, by, from, to, reason}`` to the extension history."""
        user, client = self.actor()
        entry = {
            "at": _iso(self.now()), "by": f"{user} ({client})", "from": _iso(shim.expires_at),
            "to": _iso(expires_at), "reason": reason,
        }
        history = [*shim.extensions, entry]
        self._execute(
            "UPDATE {shims} SET expires_at = %s, extensions = %s{json} WHERE id = %s",
            (self._ts(expires_at), json.dumps(history), shim.id),
        )
        return self.get(shim.id)

    def set_columns(self, shim: Shim, columns: list[dict[str, Any]]) -> None:
        """Replace the column map (SQLite: after a declared rename of an exposed column)."""
        self._execute("UPDATE {shims} SET columns = %s{json} WHERE id = %s", (json.dumps(columns), shim.id))

    # -- routes ------------------------------------------------------------------
    def _route(self, row: Any) -> Route:
        (id_, role, database, as_of, compat_schema, search_path, previous, routed_at, routed_by, status,
         undone_at, undone_by, reason) = row
        return Route(
            id=id_, role=role, database=database, as_of=as_of, compat_schema=compat_schema,
            search_path=search_path, previous_setting=previous, routed_at=self._read_ts(routed_at),
            routed_by=routed_by, status=status, undone_at=self._read_ts(undone_at), undone_by=undone_by,
            reason=reason,
        )

    def add_route(self, *, role: str, database: str | None, as_of: str, compat_schema: str,
                  search_path: str, previous_setting: str | None) -> Route:
        user, client = self.actor()
        row = self._execute(
            "INSERT INTO {routes} (role_name, database_name, as_of, compat_schema, search_path, previous_setting, "
            "routed_at, routed_by, status) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'active') RETURNING id",
            (role, database, as_of, compat_schema, search_path, previous_setting, self._ts(self.now()),
             f"{user} ({client})"),
        ).fetchone()
        return self.routes(route_id=row[0])[0]

    def routes(self, status: str | None = None, *, role: str | None = None,
               compat_schema: str | None = None, route_id: int | None = None) -> list[Route]:
        """Routes matching every given filter, oldest first."""
        if not self.exists():
            return []
        clauses, params = [], []
        for column, value in (("status", status), ("role_name", role), ("compat_schema", compat_schema),
                              ("id", route_id)):
            if value is not None:
                clauses.append(f"{column} = %s")
                params.append(value)
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        rows = self._execute(f"SELECT {_ROUTE_COLUMNS} FROM {{routes}}{where} ORDER BY id", tuple(params)).fetchall()
        return [self._route(r) for r in rows]

    def mark_route_undone(self, route: Route, reason: str) -> None:
        user, client = self.actor()
        self._execute(
            "UPDATE {routes} SET status = 'undone', undone_at = %s, undone_by = %s, reason = %s WHERE id = %s",
            (self._ts(self.now()), f"{user} ({client})", reason, route.id),
        )
