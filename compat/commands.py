"""Library API behind ``migrate shims ...``: each function takes an open database and returns records.

``db`` is a :class:`runner.db.Database`. Functions that change something run
their own transaction (:func:`runner.db.transaction`); read-only ones run in
autocommit.

* :func:`list_shims`, :func:`audit`, :func:`active_summary`: read the registry.
* :func:`drop`: removes shim views (and the compat schema once empty),
  records who and why, undoes routes to the schema; refuses while a session
  holds a lock on a view or a role routed to the schema is connected.
* :func:`extend`: moves an expiry and records the reason.
* :func:`connect_info`: the search_path setting and a ready URL for a lagging consumer.
* :func:`route` / :func:`unroute`: ``ALTER ROLE ... IN DATABASE ... SET search_path``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit, urlunsplit

from compat.declarations import quote_ident
from compat.registry import Registry, Route, Shim
from runner.db import transaction
from runner.errors import DriftError, LockTimeout, UsageError
from runner.logs import get_logger

if TYPE_CHECKING:
    from runner.db import Database

log = get_logger("migrate.compat")


class ShimsExpired(DriftError):
    """Active shims are past their expiry (exit 1)."""


class ShimInUse(LockTimeout):
    """A shim is still in use; ``--force`` drops it anyway (exit 3)."""


@dataclass
class Session:
    """A database session that is (or may be) using a shim."""

    pid: int
    user: str | None
    application_name: str | None
    client_addr: str | None
    state: str | None
    evidence: str

    def describe(self) -> str:
        app = self.application_name or "?"
        addr = self.client_addr or "local socket"
        return f"pid {self.pid} ({self.user}, {app}@{addr}, {self.state or 'unknown'}): {self.evidence}"

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "user": self.user, "application_name": self.application_name,
                "client_addr": self.client_addr, "state": self.state, "evidence": self.evidence}


@dataclass
class AuditReport:
    """Outcome of :func:`audit`: ``ok`` is False when any active shim is past its expiry."""

    checked_at: datetime
    warn_within: timedelta
    active: list[Shim]
    expired: list[Shim]
    expiring: list[Shim]

    @property
    def ok(self) -> bool:
        return not self.expired

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "checked_at": self.checked_at.isoformat(),
            "warn_within_seconds": int(self.warn_within.total_seconds()),
            "active": len(self.active), "expired": [s.to_json() for s in self.expired],
            "expiring": [s.to_json() for s in self.expiring],
        }


@dataclass
class DropReport:
    """Outcome of :func:`drop`."""

    dropped: list[Shim]
    schemas_dropped: list[str] = field(default_factory=list)
    routes_undone: list[Route] = field(default_factory=list)
    sessions: list[Session] = field(default_factory=list)  # evidence overridden by --force
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "dropped": [s.to_json() for s in self.dropped], "schemas_dropped": self.schemas_dropped,
            "routes_undone": [r.to_json() for r in self.routes_undone],
            "forced_past": [s.to_json() for s in self.sessions], "notes": self.notes,
        }


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


# -- plumbing -----------------------------------------------------------------------
def _registry(db: Database) -> Registry:
    return Registry(db.connection, db.dialect, db.schema)


def split_setting(value: str) -> list[str]:
    """Split a list setting as stored by PostgreSQL (``"$user", public``) into names."""
    names, current, quoted, i = [], [], False, 0
    while i < len(value):
        ch = value[i]
        if quoted:
            if ch == '"' and value[i + 1:i + 2] == '"':
                current.append('"')
                i += 1
            elif ch == '"':
                quoted = False
            else:
                current.append(ch)
        elif ch == '"':
            quoted = True
        elif ch == ",":
            names.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
        i += 1
    tail = "".join(current).strip()
    if tail or names:
        names.append(tail)
    return [n for n in names if n]


def _find(registry: Registry, names: Sequence[str], status: str = "active") -> list[Shim]:
    """Active shims matching each name: a shim name, its compat schema, or schema.view unquoted."""
    everything = registry.shims()
    active = [s for s in everything if s.status == status]
    found: list[Shim] = []
    for name in names:
        matches = [
            s for s in active
            if name in (s.name, s.compat_schema, s.view_name if s.compat_schema is None else None,
                        f"{s.compat_schema}.{s.view_name}" if s.compat_schema else None)
        ]
        if not matches:
            dropped = [s for s in everything if s.name == name and s.status == "dropped"]
            if dropped:
                d = dropped[-1]
                raise UsageError(f"shim {name} was already dropped at {d.dropped_at:%Y-%m-%d %H:%M:%S} UTC by {d.dropped_by}")
            known = ", ".join(s.name for s in active) or "none"
            raise UsageError(f"no active shim named {name} (active shims: {known})")
        found.extend(s for s in matches if s not in found)
    return found


# -- read ---------------------------------------------------------------------------
def list_shims(db: Database, status: str | None = None) -> list[Shim]:
    """Every shim in the registry (or only ``active``/``dropped`` ones), oldest first."""
    if status not in (None, "active", "dropped"):
        raise UsageError(f"status: expected active or dropped, got {status!r}")
    return _registry(db).shims(status)


def audit(db: Database, warn_within: timedelta = timedelta(days=7)) -> AuditReport:
    """Active shims past expiry (``expired``) and those expiring within ``warn_within``."""
    registry = _registry(db)
    now = registry.now()
    active = registry.shims("active")
    expired = [s for s in active if s.expires_at <= now]
    expiring = [s for s in active if now < s.expires_at <= now + warn_within]
    return AuditReport(now, warn_within, active, expired, expiring)


def check_not_expired(db: Database) -> None:
    """Raise :class:`ShimsExpired` (exit 1) when any active shim is past its expiry (for ``migrate verify``)."""
    report = audit(db, timedelta(0))
    if not report.ok:
        raise ShimsExpired(expired_message(report.expired))


def expired_message(expired: list[Shim]) -> str:
    names = ", ".join(f"{s.name} (expired {s.expires_at:%Y-%m-%d %H:%M:%S} UTC)" for s in expired)
    return (f"{len(expired)} shim(s) past expiry: {names}; drop them (migrate shims drop --expired) "
            f"or extend them (migrate shims extend NAME --by 7d --reason ...)")


def active_summary(db: Database) -> list[dict[str, Any]]:
    """Active shims as JSON objects (name, table, old, new, schema, expires_at, ...), soonest expiry first.

    Printed at the end of ``migrate up``.
    """
    return [s.to_json() for s in sorted(_registry(db).shims("active"), key=lambda s: s.expires_at)]


def describe_delta(delta: timedelta) -> str:
    """``in 13d 23h`` / ``2h 5m ago``."""
    seconds = int(delta.total_seconds())
    ago = seconds < 0
    seconds = abs(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        text = f"{days}d {hours}h"
    elif hours:
        text = f"{hours}h {minutes}m"
    elif minutes:
        text = f"{minutes}m {secs}s"
    else:
        text = f"{secs}s"
    return f"{text} ago" if ago else f"in {text}"


# -- drop ---------------------------------------------------------------------------
def sessions_using(db: Database, shims: list[Shim]) -> tuple[list[Session], list[str]]:
    """Sessions using ``shims`` (locks on the views; connections of roles routed to their schemas)
    and notes from pg_stat_statements when installed. PostgreSQL only."""
    if db.dialect != "postgresql" or not shims:
        return [], []
    conn = db.connection
    sessions: list[Session] = []
    rows = conn.execute(
        "SELECT DISTINCT l.pid, a.usename, a.application_name, host(a.client_addr), a.state, n.nspname, c.relname, "
        "l.mode FROM pg_locks l JOIN pg_class c ON c.oid = l.relation JOIN pg_namespace n ON n.oid = c.relnamespace "
        "LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'relation' AND l.pid <> pg_backend_pid() AND (n.nspname, c.relname) IN "
        "(SELECT * FROM unnest(%s::text[], %s::text[])) ORDER BY l.pid",
        ([s.compat_schema for s in shims], [s.view_name for s in shims]),
    ).fetchall()
    for pid, user, app, addr, state, schema, view, mode in rows:
        sessions.append(Session(pid, user, app, addr, state, f"holds {mode} on {quote_ident(schema)}.{quote_ident(view)}"))
    schemas = sorted({s.compat_schema for s in shims if s.compat_schema})
    routes = [r for r in _registry(db).routes("active") if r.compat_schema in schemas]
    if routes:
        seen = {s.pid for s in sessions}
        rows = conn.execute(
            "SELECT pid, usename, application_name, host(client_addr), state FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() AND usename = ANY(%s) ORDER BY pid",
            ([r.role for r in routes],),
        ).fetchall()
        for pid, user, app, addr, state in rows:
            if pid not in seen:
                route = next(r for r in routes if r.role == user)
                sessions.append(Session(pid, user, app, addr, state,
                                        f"role {user} is routed to {route.compat_schema} (search_path {route.search_path})"))
    return sessions, _statement_notes(conn, shims)


def _statement_notes(conn: Any, shims: list[Shim]) -> list[str]:
    """pg_stat_statements entries that mention a compat schema or an old column name (counts since its reset)."""
    import psycopg

    installed = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'").fetchone()
    if not installed:
        return []
    patterns = sorted({s.compat_schema for s in shims if s.compat_schema}
                      | {r["old"] for s in shims for r in s.renames})
    try:
        rows = conn.execute(
            "SELECT p.pattern, count(*), sum(s.calls) FROM pg_stat_statements s, unnest(%s::text[]) AS p(pattern) "
            "WHERE s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND position(lower(p.pattern) IN lower(s.query)) > 0 GROUP BY p.pattern ORDER BY 1",
            (patterns,),
        ).fetchall()
    except psycopg.Error as err:  # not preloaded, or no permission
        return [f"pg_stat_statements not readable: {str(err).splitlines()[0]}"]
    return [
        f"pg_stat_statements: {count} statement(s) mentioning {pattern}, {calls} call(s) since its last reset "
        f"(they may predate the rename)"
        for pattern, count, calls in rows
    ]


def retire_shims(connection: Any, dialect: str, registry: Registry, shims: list[Shim], reason: str | None
                 ) -> tuple[list[Shim], list[str], list[Route]]:
    """Drop the shims' views, mark them dropped, drop emptied compat schemas and undo routes to them.

    Runs inside the caller's transaction. Returns (dropped, schemas dropped, routes undone).
    """
    from compat import sqlite_views, views

    dropped, schemas = [], []
    for shim in shims:
        if dialect == "postgresql":
            if views.drop_view(connection, shim.compat_schema, shim.view_name):
                schemas.append(shim.compat_schema)
        else:
            sqlite_views.drop_view(connection, shim.view_name)
        dropped.append(registry.mark_dropped(shim, reason))
    undone = []
    for schema in schemas:
        for route in registry.routes("active", compat_schema=schema):
            _undo_route(connection, registry, route, f"shims in {schema} dropped")
            undone.append(route)
    return dropped, schemas, undone


def drop(db: Database, names: Sequence[str] = (), *, expired: bool = False, force: bool = False,
         reason: str | None = None, lock_timeout: timedelta = timedelta(seconds=5)) -> DropReport:
    """Drop shims by name (or every expired one); refuse while they are in use unless ``force``.

    Raises :class:`ShimInUse` naming the sessions, UsageError for unknown names.
    """
    if not names and not expired:
        raise UsageError("name the shims to drop, or use --expired")
    registry = _registry(db)
    targets = _find(registry, names) if names else []
    if expired:
        now = registry.now()
        targets.extend(s for s in registry.shims("active") if s.expires_at <= now and s not in targets)
    if not targets:
        return DropReport(dropped=[], notes=["no expired shims"])
    sessions, notes = sessions_using(db, targets)
    if sessions and not force:
        raise ShimInUse(_in_use_message(targets, sessions))
    reason = reason or ("expired" if expired and not names else "dropped by request")
    if force and sessions:
        reason = f"{reason} (forced past {len(sessions)} session(s))"
    conn = db.connection
    try:
        with transaction(db):
            if db.dialect == "postgresql":
                conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{int(lock_timeout.total_seconds() * 1000)}ms",))
            dropped, schemas, undone = retire_shims(conn, db.dialect, registry, targets, reason)
    except Exception as err:
        if db.dialect == "postgresql" and _is_lock_timeout(err):
            raise ShimInUse(
                f"a session holds a lock on {', '.join(s.name for s in targets)} (waited "
                f"{lock_timeout.total_seconds():g}s); it is still in use. " + _fallthrough(targets)
            ) from None
        raise
    for shim in dropped:
        log.info("shim dropped", shim=shim.name, reason=reason)
    return DropReport(dropped, schemas, undone, sessions if force else [], notes)


def _is_lock_timeout(err: Exception) -> bool:
    import psycopg

    return isinstance(err, psycopg.errors.LockNotAvailable)


def _fallthrough(shims: list[Shim]) -> str:
    old = ", ".join(sorted({r["old"] for s in shims for r in s.renames}))
    return (f"Once dropped, clients with search_path={shims[0].compat_schema or '...'},... fall through to the table "
            f"and get 'column {old} does not exist'")


def _in_use_message(shims: list[Shim], sessions: list[Session]) -> str:
    listed = "; ".join(s.describe() for s in sessions)
    return (f"refusing to drop {', '.join(s.name for s in shims)}: still in use by {len(sessions)} session(s): "
            f"{listed}. {_fallthrough(shims)}. Move those clients to the new version, or use --force")


# -- extend -------------------------------------------------------------------------
def extend(db: Database, name: str, *, by: timedelta | None = None, until: datetime | None = None,
           reason: str) -> list[Shim]:
    """Move the expiry of shim ``name`` (or every shim of a compat schema) and record why.

    ``by`` counts from the current expiry, or from now when that has passed.
    """
    if not reason or not reason.strip():
        raise UsageError("extend needs --reason TEXT (it is kept in the shim's history)")
    if (by is None) == (until is None):
        raise UsageError("give exactly one of --by DURATION or --until DATE")
    if by is not None and by <= timedelta(0):
        raise UsageError("--by must be longer than zero")
    registry = _registry(db)
    updated = []
    with transaction(db):
        now = registry.now()
        if until is not None and until <= now:
            raise UsageError(f"--until {until.isoformat()} is in the past")
        for shim in _find(registry, [name]):
            target = until if until is not None else max(shim.expires_at, now) + by
            updated.append(registry.set_expiry(shim, target, reason.strip()))
    for shim in updated:
        log.info("shim extended", shim=shim.name, expires_at=shim.expires_at.isoformat(), reason=reason)
    return updated


# -- connect / route ----------------------------------------------------------------
def _schema_for(db: Database, as_of: str, schema_template: str) -> tuple[str, str, list[Shim]]:
    """(as_of label, compat schema, active shims in it); the schema comes from the template before any shim exists."""
    from compat.views import compat_schema_name

    if db.dialect != "postgresql":
        raise UsageError("SQLite has no schemas or search_path: read through the shim views "
                         "(migrate shims list shows their names)")
    active = [s for s in _registry(db).shims("active") if s.compat_schema]
    mine = [s for s in active if as_of in (s.as_of, s.compat_schema)]
    if mine:
        return mine[0].as_of, mine[0].compat_schema, mine
    return as_of, compat_schema_name(schema_template, as_of), []


def _search_path(db: Database, schema: str, base: list[str] | None = None) -> list[str]:
    if base is None:
        base = list(db.connection.execute("SELECT current_schemas(false)").fetchone()[0])
    return [schema] + [s for s in base if s != schema]


def connect_info(db: Database, as_of: str, url: str, schema_template: str = "compat_{version}") -> ConnectInfo:
    """The search_path setting and a ready URL (password redacted) for a consumer of version ``as_of``."""
    from runner.urls import redact

    label, schema, shims = _schema_for(db, as_of, schema_template)
    path = _search_path(db, schema)
    setting = ",".join(quote_ident(p) for p in path)
    options = "-c search_path=" + setting.replace(" ", "\\ ")
    parts = urlsplit(url)
    query = "&".join(q for q in parts.query.split("&") if q and not q.startswith("options="))
    query = (query + "&" if query else "") + "options=" + quote(options, safe="")
    ready = urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))
    note = None if shims else (
        f"no shim for version {label} exists yet; PostgreSQL skips {schema} until one does, "
        f"so this setting is safe to deploy before the rename"
    )
    return ConnectInfo(label, schema, setting, options, redact(ready), [s.name for s in shims], note)


def _role_setting(conn: Any, role: str, database: bool) -> str | None:
    """search_path stored for ``role`` in this database (``database``) or for all databases."""
    row = conn.execute(
        "SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole "
        "WHERE r.rolname = %s AND s.setdatabase = " +
        ("(SELECT oid FROM pg_database WHERE datname = current_database())" if database else "0"),
        (role,),
    ).fetchone()
    for item in (row[0] if row else None) or []:
        if item.startswith("search_path="):
            return item[len("search_path="):]
    return None


def _database_setting(conn: Any) -> str:
    row = conn.execute(
        "SELECT s.setconfig FROM pg_db_role_setting s WHERE s.setrole = 0 AND "
        "s.setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())"
    ).fetchone()
    for item in (row[0] if row else None) or []:
        if item.startswith("search_path="):
            return item[len("search_path="):]
    return conn.execute("SELECT boot_val FROM pg_settings WHERE name = 'search_path'").fetchone()[0]


def _set_role_path(conn: Any, role: str, names: list[str] | None) -> None:
    from psycopg import sql

    database = conn.execute("SELECT current_database()").fetchone()[0]
    if names is None:
        query = sql.SQL("ALTER ROLE {} IN DATABASE {} RESET search_path").format(
            sql.Identifier(role), sql.Identifier(database))
    else:
        query = sql.SQL("ALTER ROLE {} IN DATABASE {} SET search_path TO {}").format(
            sql.Identifier(role), sql.Identifier(database), sql.SQL(", ").join(sql.Identifier(n) for n in names))
    conn.execute(query)


def _undo_route(conn: Any, registry: Registry, route: Route, reason: str) -> None:
    exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (route.role,)).fetchone()
    current = _role_setting(conn, route.role, database=True) if exists else None
    if exists and current == route.search_path:
        _set_role_path(conn, route.role, split_setting(route.previous_setting) if route.previous_setting else None)
        registry.mark_route_undone(route, reason)
        log.info("route undone", role=route.role, schema=route.compat_schema)
    else:
        registry.mark_route_undone(route, f"{reason}; role setting had changed since (now {current!r}), left as is")


def route(db: Database, role: str, as_of: str, schema_template: str = "compat_{version}") -> Route:
    """Set ``role``'s search_path in this database to the compat schema of ``as_of`` plus its usual path.

    Recorded in the registry; undone (previous setting restored) when the
    schema's shims are dropped, or by :func:`unroute`. Affects new sessions only.
    """
    import psycopg

    label, schema, _ = _schema_for(db, as_of, schema_template)
    conn = db.connection
    registry = _registry(db)
    if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
        raise UsageError(f"role {role} does not exist")
    try:
        with transaction(db):
            registry.ensure()
            for old in registry.routes("active", role=role):
                _undo_route(conn, registry, old, f"replaced by a route to {schema}")
            previous = _role_setting(conn, role, database=True)
            base = previous or _role_setting(conn, role, database=False) or _database_setting(conn)
            names = _search_path(db, schema, split_setting(base))
            _set_role_path(conn, role, names)
            setting = _role_setting(conn, role, database=True) or ""
            database = conn.execute("SELECT current_database()").fetchone()[0]
            record = registry.add_route(role=role, database=database, as_of=label, compat_schema=schema,
                                        search_path=setting, previous_setting=previous)
    except psycopg.errors.InsufficientPrivilege as err:
        raise UsageError(f"cannot route role {role}: {str(err).splitlines()[0]} (needs CREATEROLE or superuser)") from None
    log.info("role routed", role=role, search_path=setting)
    return record


def unroute(db: Database, role: str) -> list[Route]:
    """Undo the active route of ``role`` (restore its previous search_path setting)."""
    registry = _registry(db)
    routes = registry.routes("active", role=role)
    if not routes:
        raise UsageError(f"role {role} has no active route")
    with transaction(db):
        for r in routes:
            _undo_route(db.connection, registry, r, "unrouted by request")
    return routes
