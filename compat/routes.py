"""Routing lagging consumers to their shims (``migrate shims connect`` / ``route``).

A consumer on version V reads through ``compat_V`` by putting that schema first in its
search_path: per connection (:func:`connect_info` prints the setting and a ready URL), or for a
role (:func:`route`: ``ALTER ROLE ... IN DATABASE ... SET search_path``, recorded here and undone
when the schema's shims are dropped). Routing needs roles and a search_path: PostgreSQL.

This module owns ``_migrate_shim_routes`` (one row per route: the role, the search_path set, the
setting it replaced, who and when, and when it was undone; never deleted).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from compat.declarations import quote_ident
from compat.dialects import for_database
from compat.model import Route, Shim
from compat.registry import Registry
from runner.config import Settings
from runner.db import transaction
from runner.dialects.postgresql import split_search_path
from runner.errors import UsageError
from runner.logs import get_logger
from runner.urls import redact

if TYPE_CHECKING:
    from runner.db import Database

log = get_logger("migrate.compat")

ROUTES = "_migrate_shim_routes"
TABLES = (ROUTES, f"{ROUTES}_id_seq")
_DDL = (
    "CREATE TABLE IF NOT EXISTS {routes} (id {serial_key}, role_name text NOT NULL, database_name text, "
    "as_of text NOT NULL, compat_schema text NOT NULL, search_path text NOT NULL, previous_setting text, "
    "routed_at {timestamp} NOT NULL, routed_by text NOT NULL, "
    "status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'undone')), "
    "undone_at {timestamp}, undone_by text, reason text)"
)
_COLUMNS = ("id, role_name, database_name, as_of, compat_schema, search_path, previous_setting, routed_at, "
            "routed_by, status, undone_at, undone_by, reason")


@dataclass
class ConnectInfo:
    """How a consumer of version ``as_of`` reaches its shims."""

    as_of: str
    schema: str
    search_path: str
    options: str
    url: str  # password redacted
    shims: list[str]
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"as_of": self.as_of, "schema": self.schema, "search_path": self.search_path,
                "options": self.options, "pgoptions": self.options, "url": self.url, "shims": self.shims,
                "note": self.note}


# -- the routes table ------------------------------------------------------------------------
def _route(db: Database, row: Any) -> Route:
    (id_, role, database, as_of, compat_schema, search_path, previous, routed_at, routed_by, status,
     undone_at, undone_by, reason) = row
    ts = db.dialect.ts_out
    return Route(id=id_, role=role, database=database, as_of=as_of, compat_schema=compat_schema,
                 search_path=search_path, previous_setting=previous, routed_at=ts(routed_at),  # type: ignore[arg-type]
                 routed_by=routed_by, status=status, undone_at=ts(undone_at), undone_by=undone_by, reason=reason)


def _ensure(db: Database) -> None:
    if not db.table_exists(ROUTES):
        db.execute(_DDL.format(routes=db.qualify(ROUTES), **db.dialect.types))


def routes(db: Database, status: str | None = None, *, role: str | None = None, compat_schema: str | None = None,
           route_id: int | None = None) -> list[Route]:
    """Routes matching every given filter, oldest first ([] when no route was ever made)."""
    if not db.table_exists(ROUTES):
        return []
    clauses, params = [], []
    for column, value in (("status", status), ("role_name", role), ("compat_schema", compat_schema), ("id", route_id)):
        if value is not None:
            clauses.append(f"{column} = %s")
            params.append(value)
    where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    rows = db.execute(f"SELECT {_COLUMNS} FROM {db.qualify(ROUTES)}{where} ORDER BY id", params).fetchall()
    return [_route(db, r) for r in rows]


def active_routes(db: Database, *, role: str | None = None, compat_schema: str | None = None) -> list[Route]:
    return routes(db, "active", role=role, compat_schema=compat_schema)


def _who(db: Database) -> str:
    user, client = db.dialect.actor(db)
    return f"{user} ({client})"


def _mark_undone(db: Database, route: Route, reason: str) -> None:
    db.execute(f"UPDATE {db.qualify(ROUTES)} SET status = 'undone', undone_at = %s, undone_by = %s, reason = %s "
               "WHERE id = %s", (db.dialect.ts_in(db.now()), _who(db), reason, route.id))


# -- role settings (PostgreSQL) ----------------------------------------------------------------
def _require_roles(db: Database) -> None:
    if not for_database(db).search_path:
        raise UsageError("SQLite has no schemas or search_path: read through the shim views "
                         "(migrate shims list shows their names)")


def _setting_of(configs: list[str] | None) -> str | None:
    for item in configs or []:
        if item.startswith("search_path="):
            return item[len("search_path="):]
    return None


def role_setting(db: Database, role: str, *, in_database: bool) -> str | None:
    """search_path stored for ``role`` in this database (``in_database``) or for all databases."""
    database = ("(SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())"
                if in_database else "0")
    return _setting_of(db.scalar(
        "SELECT s.setconfig FROM pg_catalog.pg_db_role_setting s JOIN pg_catalog.pg_roles r ON r.oid = s.setrole "
        f"WHERE r.rolname = %s AND s.setdatabase = {database}", (role,)))


def _database_setting(db: Database) -> str:
    value = _setting_of(db.scalar(
        "SELECT s.setconfig FROM pg_catalog.pg_db_role_setting s WHERE s.setrole = 0::pg_catalog.oid AND "
        "s.setdatabase = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())"))
    if value is not None:
        return value
    return db.scalar("SELECT boot_val FROM pg_catalog.pg_settings WHERE name = 'search_path'")


def _set_role_path(db: Database, role: str, value: str | None) -> None:
    """``ALTER ROLE role IN DATABASE here SET search_path`` to the names of ``value`` (a setting
    as PostgreSQL prints it; '' or '""' is the empty search_path), or RESET it (None)."""
    from psycopg import sql

    target = sql.SQL("ALTER ROLE {} IN DATABASE {}").format(
        sql.Identifier(role), sql.Identifier(db.scalar("SELECT pg_catalog.current_database()")))
    if value is None:
        db.execute(sql.SQL("{} RESET search_path").format(target))
        return
    names = split_search_path(value)
    path = sql.SQL(", ").join(sql.Identifier(n) for n in names) if names else sql.SQL("''")
    db.execute(sql.SQL("{} SET search_path TO {}").format(target, path))


def undo(db: Database, route: Route, reason: str) -> None:
    """Restore the role's previous setting (if the setting is still the one the route made)."""
    exists = db.execute("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s", (route.role,)).fetchone()
    current = role_setting(db, route.role, in_database=True) if exists else None
    if exists and current == route.search_path:
        _set_role_path(db, route.role, route.previous_setting)
        _mark_undone(db, route, reason)
        log.info("route undone", role=route.role, schema=route.compat_schema)
    else:
        _mark_undone(db, route, f"{reason}; role setting had changed since (now {current!r}), left as is")


# -- commands ------------------------------------------------------------------------------
def _schema_for(db: Database, as_of: str, settings: Settings) -> tuple[str, str, list[Shim]]:
    """(as_of label, compat schema, active shims in it); the schema comes from the template before any shim exists."""
    _require_roles(db)
    active = [s for s in Registry(db).shims("active") if s.compat_schema]
    mine = [s for s in active if as_of in (s.as_of, s.compat_schema)]
    if mine:
        return mine[0].as_of, mine[0].compat_schema or "", mine
    schema, _ = for_database(db).location(settings, "", as_of)
    return as_of, schema or "", []


def _search_path(names: list[str], schema: str) -> list[str]:
    return [schema] + [s for s in names if s != schema]


def connect_info(db: Database, as_of: str, settings: Settings) -> ConnectInfo:
    """The search_path setting and a ready URL (password redacted) for a consumer of version ``as_of``.

    The URL keeps the configured one's parameters but yoyo's ``schema=`` (libpq rejects it) and
    adds the search_path to its ``options`` (merged with the options it already has)."""
    label, schema, shims = _schema_for(db, as_of, settings)
    builder = for_database(db)
    builder.require_ours(db, schema, Registry(db), f"point version {label} consumers at {schema}")
    base = builder.migration_schemas(db)  # type: ignore[attr-defined]
    setting = ",".join(quote_ident(p) for p in _search_path(base, schema))
    search = "-c search_path=" + setting.replace("\\", "\\\\").replace(" ", "\\ ")
    parts = urlsplit(settings.database)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "schema"]
    options = next((v for k, v in query if k == "options"), "")
    merged = f"{options} {search}".strip() if options else search
    query = [(k, v) for k, v in query if k != "options"] + [("options", merged)]
    ready = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query, quote_via=quote), parts.fragment))
    note = None if shims else (
        f"no shim for version {label} exists yet; PostgreSQL skips {schema} until one does, so this setting is "
        f"safe to deploy before the rename (`migrate shims route` also reserves {schema} for the runner)")
    return ConnectInfo(label, schema, setting, search, redact(ready), [s.name for s in shims], note)


def route(db: Database, role: str, as_of: str, settings: Settings | None = None) -> Route:
    """Set ``role``'s search_path in this database to the compat schema of ``as_of`` plus its usual path.

    The compat schema is reserved for the runner (created, empty, if it does not exist yet) and
    the role gets USAGE on it and the privileges on each shim view that it holds on the table.
    Recorded in the registry; undone (previous setting restored) when the schema's shims are
    dropped, or by :func:`unroute`. Affects new sessions only.
    """
    import psycopg
    from psycopg import sql

    label, schema, shims = _schema_for(db, as_of, settings or Settings())
    if not db.execute("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s", (role,)).fetchone():
        raise UsageError(f"role {role} does not exist")
    if db.execute("SELECT 1 WHERE %s IN (current_user, session_user)", (role,)).fetchone():
        raise UsageError(f"refusing to route role {role}: it is the role the runner connects as, and migrations "
                         "would then run with the compat schema first in their search_path; route the roles of "
                         "the lagging consumers instead")
    builder = for_database(db)
    registry = Registry(db)
    try:
        with transaction(db):
            builder.require_ours(db, schema, registry, f"route role {role} to {schema}")
            builder.reserve(db, schema)
            builder.grant_route(db, role, schema, shims)
            _ensure(db)
            for old in active_routes(db, role=role):
                undo(db, old, f"replaced by a route to {schema}")
            previous = role_setting(db, role, in_database=True)
            base = previous if previous is not None else (role_setting(db, role, in_database=False)
                                                          or _database_setting(db))
            names = _search_path(split_search_path(base), schema)
            _set_role_path(db, role, ", ".join(sql.Identifier(n).as_string(db.connection) for n in names))
            setting = role_setting(db, role, in_database=True) or ""
            database = db.scalar("SELECT pg_catalog.current_database()")
            row = db.execute(
                f"INSERT INTO {db.qualify(ROUTES)} (role_name, database_name, as_of, compat_schema, search_path, "
                "previous_setting, routed_at, routed_by, status) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'active') "
                "RETURNING id",
                (role, database, label, schema, setting, previous, db.dialect.ts_in(db.now()), _who(db))).fetchone()
            record = routes(db, route_id=row[0])[0]
    except psycopg.errors.InsufficientPrivilege as err:
        raise UsageError(f"cannot route role {role}: {str(err).splitlines()[0]} (needs CREATEROLE or superuser)") from None
    log.info("role routed", role=role, search_path=setting)
    return record


def unroute(db: Database, role: str) -> list[Route]:
    """Undo the active route of ``role`` (restore its previous search_path setting)."""
    _require_roles(db)
    found = active_routes(db, role=role)
    if not found:
        raise UsageError(f"role {role} has no active route")
    with transaction(db):
        for r in found:
            undo(db, r, "unrouted by request")
    return found


def unusable(db: Database) -> list[tuple[Route, str]]:
    """Active routes whose role cannot use its compat schema (no USAGE, or the role is gone)."""
    found = []
    for r in active_routes(db):
        row = db.execute(
            "SELECT (SELECT count(*) FROM pg_catalog.pg_roles WHERE rolname = %s), "
            "(SELECT count(*) FROM pg_catalog.pg_namespace WHERE nspname = %s)", (r.role, r.compat_schema)).fetchone()
        if not row[0]:
            found.append((r, f"role {r.role} no longer exists"))
        elif row[1] and not db.scalar("SELECT pg_catalog.has_schema_privilege(%s, %s, 'USAGE')",
                                      (r.role, r.compat_schema)):
            found.append((r, f"role {r.role} has no USAGE on {r.compat_schema}: its sessions skip the schema and "
                             "read the new tables"))
    return found
