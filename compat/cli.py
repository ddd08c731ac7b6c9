"""``migrate shims ...``: list, audit, drop, extend, connect, route.

A click group over :mod:`compat.lifecycle` and :mod:`compat.routes`. ``ctx.obj`` is the runner's
``Invocation`` (settings, open_database(), emit(data, text)); global options
(--database, --format, ...) belong to the runner and are not redefined here.
Every command returns its exit code; errors are MigrateError subclasses.

Each command imports what it runs inside its own function: `migrate --help` lists every command
(and so loads this module) without importing psycopg, yoyo or the library behind the commands
(bench/bench_runner.py: cold start).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import click

from runner.durations import parse_duration
from runner.errors import OK, UsageError


def _duration(value: str, option: str) -> timedelta:
    try:
        return parse_duration(value, option)
    except ValueError as err:
        raise UsageError(str(err)) from None


def _as_of(inv: Any, text: str) -> str:
    """The version label ``--as-of`` names: a label (017), a migration id or an unambiguous prefix of one
    (runner.ids.resolve_id; ambiguous: exit 2). A version no file has (a consumer's label, a folder
    not at hand) is taken as given."""
    from runner.ids import candidates, resolve_id
    from runner.sources import load_migrations

    settings = inv.settings
    if not settings.migrations.is_dir():
        return text
    files = load_migrations(settings.migrations, settings.sources.get("migrations"))
    ids = [m.id for m in files]
    if text == "0" or text in {m.version_label or m.id for m in files} or not candidates(text, ids):
        return text
    chosen = resolve_id(text, ids, "--as-of")
    migration = next(m for m in files if m.id == chosen)
    return migration.version_label or migration.id


def _when(value: datetime | None) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S} UTC" if value is not None else "-"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip() for row in [headers, *rows]]
    return "\n".join(lines)


def _shim_rows(shims: list[Any], now: datetime) -> list[list[str]]:
    from compat import lifecycle

    rows = []
    for s in shims:
        expiry = _when(s.expires_at)
        if s.status == "active":
            expiry += f" ({lifecycle.describe_delta(s.expires_at - now)})"
        rows.append([s.name, s.table, s.presents, s.as_of, s.status, expiry])
    return rows


_HEADERS = ["NAME", "TABLE", "PRESENTS", "VERSION", "STATUS", "EXPIRES"]


@click.group("shims")
def shims() -> None:
    """Compatibility shims: views presenting an older version's shape of a changed table."""


@shims.command("list")
@click.option("--status", type=click.Choice(["all", "active", "dropped"]), default="all", show_default=True,
              help="Which shims to show.")
@click.pass_obj
def list_command(inv: Any, status: str) -> int:
    """Every shim in the registry: name, table, what it presents (renames, hides, casts, fills),
    version, status, expiry."""
    from compat import lifecycle

    with inv.open_database(read_only=True) as db:
        found = lifecycle.list_shims(db, None if status == "all" else status)
        now = db.now()
    text = _table(_HEADERS, _shim_rows(found, now)) if found else "no shims"
    inv.emit([s.to_json() for s in found], text)
    return OK


@shims.command()
@click.option("--warn-within", default="7d", show_default=True, metavar="DURATION",
              help="Also list active shims expiring within this time.")
@click.pass_obj
def audit(inv: Any, warn_within: str) -> int:
    """Exit 1 when any active shim is past its expiry; list those expiring soon."""
    from compat import lifecycle

    window = _duration(warn_within, "--warn-within")
    with inv.open_database(read_only=True) as db:
        report = lifecycle.audit(db, window)
    lines = [f"{len(report.active)} active shim(s); {len(report.expired)} past expiry; "
             f"{len(report.expiring)} expiring within {warn_within}"]
    if report.expired:
        lines += ["", "EXPIRED:", _table(_HEADERS, _shim_rows(report.expired, report.checked_at))]
    if report.expiring:
        lines += ["", "EXPIRING SOON:", _table(_HEADERS, _shim_rows(report.expiring, report.checked_at))]
    inv.emit(report.to_json(), "\n".join(lines))
    if not report.ok:
        raise lifecycle.ShimsExpired(lifecycle.expired_message(report.expired))
    return OK


@shims.command()
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("--expired", is_flag=True, help="Drop every active shim past its expiry.")
@click.option("--force", is_flag=True, help="Drop even while sessions are using the shim.")
@click.option("--reason", metavar="TEXT", help="Why (kept in the registry).")
@click.pass_obj
def drop(inv: Any, names: tuple[str, ...], expired: bool, force: bool, reason: str | None) -> int:
    """Remove shims (NAME is a shim name or a compat schema) and record who and when.

    Refuses while a session holds a lock on a shim view or a role routed to
    its schema is connected, naming the sessions, unless --force.
    """
    from compat import lifecycle

    with inv.open_database() as db:
        report = lifecycle.drop(db, names, expired=expired, force=force, reason=reason,
                                lock_timeout=inv.settings.lock_timeout, lock_wait=inv.settings.lock_wait)
    lines = [f"dropped {s.name} ({s.change})" for s in report.dropped] or ["nothing to drop"]
    lines += [f"dropped schema {schema}" for schema in report.schemas_dropped]
    lines += [f"restored search_path of role {r.role} (was routed to {r.compat_schema})" for r in report.routes_undone]
    lines += [f"forced past: {s.describe()}" for s in report.sessions]
    lines += [f"note: {n}" for n in report.notes]
    inv.emit(report.to_json(), "\n".join(lines))
    return OK


@shims.command()
@click.argument("name")
@click.option("--by", metavar="DURATION", help="Add this much (from the current expiry, or from now if past).")
@click.option("--until", metavar="DATE", help="New expiry: a date (through that day, UTC) or an ISO timestamp.")
@click.option("--reason", required=True, metavar="TEXT", help="Why (kept in the shim's history).")
@click.pass_obj
def extend(inv: Any, name: str, by: str | None, until: str | None, reason: str) -> int:
    """Move a shim's expiry and record why."""
    from compat import lifecycle
    from compat.declarations import DeclarationError, parse_until

    delta = _duration(by, "--by") if by is not None else None
    try:
        moment = parse_until(until) if until is not None else None
    except DeclarationError as err:
        raise UsageError(str(err).replace("until:", "--until:", 1)) from None
    max_window = _duration(inv.settings.compat.max_window, "[compat] max_window")
    with inv.open_database() as db:
        updated = lifecycle.extend(db, name, by=delta, until=moment, reason=reason, max_window=max_window)
    inv.emit([s.to_json() for s in updated],
             "\n".join(f"{s.name} now expires {_when(s.expires_at)}" for s in updated))
    return OK


@shims.command()
@click.option("--as-of", "as_of", required=True, metavar="VERSION",
              help="The version the consumer runs (e.g. 017).")
@click.pass_obj
def connect(inv: Any, as_of: str) -> int:
    """Print the search_path setting and a ready URL for a consumer still on VERSION."""
    from compat import routes

    with inv.open_database(read_only=True) as db:
        info = routes.connect_info(db, _as_of(inv, as_of), inv.settings)
    lines = [f"search_path={info.search_path}", f"PGOPTIONS='{info.options}'", f"URL: {info.url}"]
    if info.note:
        lines.append(f"note: {info.note}")
    inv.emit(info.to_json(), "\n".join(lines))
    return OK


@shims.command()
@click.argument("role")
@click.option("--as-of", "as_of", metavar="VERSION", help="Route ROLE to the shims of VERSION.")
@click.option("--reset", is_flag=True, help="Undo ROLE's route (restore its previous search_path).")
@click.pass_obj
def route(inv: Any, role: str, as_of: str | None, reset: bool) -> int:
    """Set ROLE's search_path (ALTER ROLE ... IN DATABASE ... SET) to VERSION's compat schema.

    Recorded in the registry and undone when the schema's shims are dropped.
    New sessions of ROLE pick it up; running sessions keep their setting.
    """
    from compat import routes

    if reset == (as_of is not None):
        raise UsageError("give either --as-of VERSION or --reset")
    with inv.open_database() as db:
        if reset:
            undone = routes.unroute(db, role)
            inv.emit([r.to_json() for r in undone], f"role {role}: route undone")
            return OK
        record = routes.route(db, role, _as_of(inv, as_of), inv.settings)
    inv.emit(record.to_json(), f"role {role}: search_path = {record.search_path} (new sessions; "
                               f"undone when {record.compat_schema} is dropped)")
    return OK
