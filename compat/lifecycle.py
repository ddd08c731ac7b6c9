"""A shim's life after it is created: list, audit, extend, drop (``migrate shims ...``).

Each function takes an open :class:`runner.db.Database` and returns records. Changes run in
their own transaction under the runner's lock (the one `migrate up`/`down` hold), so a drop and
a migration that rebuilds the same view take turns instead of leaving the registry and the
views disagreeing. Expiry is judged by the database's clock everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from compat import routes
from compat.dialects import Session, for_database
from compat.model import Route, Shim
from compat.registry import Registry
from runner import lockwaits
from runner.db import transaction
from runner.durations import format_duration
from runner.errors import DriftError, LockTimeout, UsageError
from runner.lock import runner_lock
from runner.logs import get_logger
from runner.pooler import admin_console_clients

if TYPE_CHECKING:
    from runner.db import Database

log = get_logger("migrate.compat")


class ShimsExpired(DriftError):
    """Active shims are past their expiry (exit 1)."""


class ShimInUse(LockTimeout):
    """A shim is still in use; ``--force`` drops it anyway (exit 3)."""


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


def find(registry: Registry, names: Sequence[str]) -> list[Shim]:
    """Active shims matching each name: a shim name, its compat schema, or schema.view unquoted."""
    everything = registry.shims()
    active = [s for s in everything if s.active]
    found: list[Shim] = []
    for name in names:
        matches = [s for s in active
                   if name in (s.name, s.compat_schema, s.view_name if s.compat_schema is None else None,
                               f"{s.compat_schema}.{s.view_name}" if s.compat_schema else None)]
        if not matches:
            dropped = [s for s in everything if s.name == name and not s.active]
            if dropped:
                d = dropped[-1]
                raise UsageError(f"shim {name} was already dropped at {d.dropped_at:%Y-%m-%d %H:%M:%S} UTC by "
                                 f"{d.dropped_by}")
            known = ", ".join(s.name for s in active) or "none"
            raise UsageError(f"no active shim named {name} (active shims: {known})")
        found.extend(s for s in matches if s not in found)
    return found


# -- read ---------------------------------------------------------------------------
def list_shims(db: Database, status: str | None = None) -> list[Shim]:
    """Every shim in the registry (or only ``active``/``dropped`` ones), oldest first."""
    if status not in (None, "active", "dropped"):
        raise UsageError(f"status: expected active or dropped, got {status!r}")
    return Registry(db).shims(status)


def audit(db: Database, warn_within: timedelta = timedelta(days=7)) -> AuditReport:
    """Active shims past expiry (``expired``) and those expiring within ``warn_within``."""
    registry = Registry(db)
    active = registry.shims("active")
    now = db.now()
    expired = [s for s in active if s.expired(now)]
    expiring = [s for s in active if not s.expired(now) and s.expired(now + warn_within)]
    return AuditReport(now, warn_within, active, expired, expiring)


def expired_message(expired: list[Shim]) -> str:
    names = ", ".join(f"{s.name} (expired {s.expires_at:%Y-%m-%d %H:%M:%S} UTC)" for s in expired)
    return (f"{len(expired)} shim(s) past expiry: {names}; drop them (migrate shims drop --expired) "
            f"or extend them (migrate shims extend NAME --by 7d --reason ...)")


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
def retire(db: Database, registry: Registry, shims: list[Shim], reason: str | None
           ) -> tuple[list[Shim], list[str], list[Route]]:
    """Drop the shims' views, mark them dropped, drop emptied compat schemas and undo routes to them.

    Runs inside the caller's transaction. Returns (dropped, schemas dropped, routes undone).
    """
    builder = for_database(db)
    dropped, schemas = [], []
    for shim in shims:
        schema = builder.drop(db, shim)
        if schema is not None:
            schemas.append(schema)
        dropped.append(registry.mark_dropped(shim, reason))
    undone = []
    for schema in schemas:
        for route in routes.active_routes(db, compat_schema=schema):
            routes.undo(db, route, f"shims in {schema} dropped")
            undone.append(route)
    return dropped, schemas, undone


def drop(db: Database, names: Sequence[str] = (), *, expired: bool = False, force: bool = False,
         reason: str | None = None, lock_timeout: timedelta = timedelta(seconds=5),
         lock_wait: timedelta = timedelta(minutes=5)) -> DropReport:
    """Drop shims by name (or every expired one); refuse while they are in use unless ``force``.

    Takes the runner's lock (waiting up to ``lock_wait`` for a running `migrate up`); the views
    are dropped under ``lock_timeout``. Raises :class:`ShimInUse` naming the sessions,
    UsageError for unknown names.
    """
    if not names and not expired:
        raise UsageError("name the shims to drop, or use --expired")
    with runner_lock(db, lock_wait):
        registry = Registry(db)
        targets = find(registry, names) if names else []
        if expired:
            now = db.now()
            targets.extend(s for s in registry.shims("active") if s.expired(now) and s not in targets)
        if not targets:
            return DropReport(dropped=[], notes=["no expired shims"])
        active_routes = routes.active_routes(db)
        sessions, notes = for_database(db).sessions_using(db, targets, active_routes)
        pooled_sessions, pooled_notes = _through_pooler(db, targets, active_routes)
        sessions.extend(pooled_sessions)
        notes.extend(pooled_notes)
        if sessions and not force:
            raise ShimInUse(_in_use_message(targets, sessions) + "".join(f" ({n})" for n in pooled_notes[:1]))
        reason = reason or ("expired" if expired and not names else "dropped by request")
        if force and sessions:
            reason = f"{reason} (forced past {len(sessions)} session(s))"
        ids = {s.id for s in targets}

        def attempt(_: int) -> tuple[list[Shim], list[str], list[Route]]:
            try:
                with transaction(db):
                    db.dialect.execute_all(db, db.dialect.migration_start(db, lock_timeout, flush=True))
                    # The registry rows, locked, as they are now (a migration may have changed them).
                    current = [s for s in registry.shims("active", for_update=True) if s.id in ids]
                    return retire(db, registry, current, reason)
            except db.dialect.errors as err:
                if db.dialect.is_lock_timeout(err):
                    raise lockwaits.Retry(" ".join(s.view_name for s in targets)) from None
                raise

        try:
            dropped, schemas, undone = lockwaits.retrying(
                db, attempt, retries=0, lock_timeout=lock_timeout, what="shims drop",
                where=lambda: ", ".join(s.name for s in targets))
        except LockTimeout as err:
            raise ShimInUse(f"a session holds a lock on {', '.join(s.name for s in targets)}: {err}; it is still in "
                            f"use. {_fallthrough(targets)}") from None
    for shim in dropped:
        log.info("shim dropped", shim=shim.name, reason=reason)
    return DropReport(dropped, schemas, undone, sessions if force else [], notes)


def _through_pooler(db: Database, shims: list[Shim], active: list[Route]) -> tuple[list[Session], list[str]]:
    """What a connection pooler hides from the in-use check, said, and what its admin console
    shows: clients of roles routed to the shims' schemas connected to the pooler (even idle, with
    no server connection of their own)."""
    found = db.facts.get("pooler")
    if found is None or not found.pooled:
        return [], []
    notes = [f"{found.describe()}: the in-use check sees server connections only; a client of the pooler is "
             "visible only while it holds a server connection (in a transaction, in transaction mode), and "
             "pg_stat_activity shows the pooler's address, not the client's; idle pooled clients reading the shims "
             "cannot be seen in the database; an idle server connection the pooler keeps for a routed role counts as "
             "in use until the pooler closes it (server_idle_timeout, or RECONNECT/KILL on its admin console)"]
    clients = admin_console_clients(db.address.connect_args)
    if clients is None:
        notes.append("PgBouncer's admin console is not readable by this user (admin_users/stats_users): clients "
                     "connected to the pooler were not checked; check them there (SHOW CLIENTS) before dropping")
        return [], notes
    schemas = {s.compat_schema for s in shims if s.compat_schema}
    routed = {r.role: r for r in active if r.compat_schema in schemas}
    sessions = [Session(0, c.user, c.application_name or None, c.address, c.state,
                        f"connected to the pooler as role {c.user}, routed to {routed[c.user].compat_schema} "
                        f"(PgBouncer SHOW CLIENTS)")
                for c in clients if c.user in routed]
    notes.append(f"PgBouncer's SHOW CLIENTS checked: {len(clients)} other client(s) of this database connected "
                 f"to the pooler, {len(sessions)} of a role routed to the shims' schemas")
    return sessions, notes


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
           reason: str, max_window: timedelta | None = None) -> list[Shim]:
    """Move the expiry of shim ``name`` (or every shim of a compat schema) and record why.

    ``by`` counts from the current expiry, or from now when that has passed. ``max_window``
    (``[compat] max_window``): the new expiry may be at most that far from now.
    """
    if not reason or not reason.strip():
        raise UsageError("extend needs --reason TEXT (it is kept in the shim's history)")
    if (by is None) == (until is None):
        raise UsageError("give exactly one of --by DURATION or --until DATE")
    if by is not None and by <= timedelta(0):
        raise UsageError("--by must be longer than zero")
    registry = Registry(db)
    updated = []
    with transaction(db):
        now = db.now()
        if until is not None and until <= now:
            raise UsageError(f"--until {until.isoformat()} is in the past")
        ids = {s.id for s in find(registry, [name])}
        for shim in registry.shims("active", for_update=True):
            if shim.id in ids:
                target = until if until is not None else max(shim.expires_at, now) + by  # type: ignore[operator]
                if max_window is not None and target - now > max_window:
                    raise UsageError(f"{shim.name}: the new expiry {target:%Y-%m-%d %H:%M} UTC is more than "
                                     f"[compat] max_window ({format_duration(max_window)}) from now")
                updated.append(registry.set_expiry(shim, target, reason.strip()))
    for shim in updated:
        log.info("shim extended", shim=shim.name, expires_at=shim.expires_at.isoformat(), reason=reason)
    return updated


def check_not_expired(db: Database) -> None:
    """Raise :class:`ShimsExpired` (exit 1) when any active shim is past its expiry."""
    report = audit(db, timedelta(0))
    if not report.ok:
        raise ShimsExpired(expired_message(report.expired))
