"""Status of several databases at once: one row per environment.

Each environment is checked on its own connection, in parallel threads; one
that cannot be reached is reported in its row (``error``) and does not stop
the others. Read-only.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from compat.registry import Registry
from runner import history
from runner.db import connect, one_line
from runner.doctor import lock_finding
from runner.errors import MigrateError, OK, UNREACHABLE, UsageError
from runner.snapshot import diff_snapshots, latest_snapshot, take_snapshot
from runner.sources import load_migrations
from runner.status import compute
from runner.urls import redact


@dataclass
class EnvStatus:
    """One environment. ``drift``: modified/missing files plus schema changes outside migrations."""

    name: str
    url: str  # redacted
    reachable: bool = False
    head_applied: str | None = None
    pending: int = 0
    pending_ids: list[str] = field(default_factory=list)
    drift: list[str] = field(default_factory=list)
    expired_shims: list[str] = field(default_factory=list)
    lock_holder: str | None = None
    managed: bool = True
    error: str | None = None

    @property
    def healthy(self) -> bool:
        return (self.reachable and self.managed and not self.pending and not self.drift
                and not self.expired_shims)


def parse_targets(values: Sequence[str], environments: dict[str, str]) -> list[tuple[str, str]]:
    """(name, url) pairs: a value is a configured environment name or a URL (named after its host/db)."""
    out: list[tuple[str, str]] = []
    if not values:
        return list(environments.items())
    for value in values:
        if value in environments:
            out.append((value, environments[value]))
        elif "://" in value:
            out.append((redact(value), value))
        else:
            known = ", ".join(sorted(environments)) or "none configured"
            raise UsageError(f"unknown environment '{value}' (configured: {known}; or give a database URL)")
    return out


def env_status(name: str, url: str, settings: Any, files: Sequence[Any]) -> EnvStatus:
    """Check one environment; never raises for database errors (they go in ``error``)."""
    row = EnvStatus(name=name, url=redact(url))
    try:
        with connect(url, schema=settings.schema, read_only=True) as db:
            row.reachable = True
            lock = lock_finding(db)
            row.lock_holder = lock.object if lock else None
            if not db.table_exists(history.HISTORY):
                row.managed = False
                row.error = "never migrated by the runner: run `migrate doctor` against it"
                return row
            applied = history.read_applied(db)
            state = compute(list(files), applied)
            ids = {a.migration_id for a in applied}
            in_order = [m for m in files if m.id in ids]
            row.head_applied = in_order[-1].id if in_order else None
            row.pending_ids = list(state.pending)
            row.pending = len(state.pending)
            row.drift = [f"modified {m.id}" for m in state.modified] + [f"missing {m}" for m in state.missing]
            stored = latest_snapshot(db)
            if stored is not None and row.head_applied and stored.migration_id == row.head_applied:
                live = take_snapshot(db, settings.compat.sqlite_view_template)
                row.drift += [c.detail for c in diff_snapshots(stored.snapshot, live)]
            now = db.now()
            row.expired_shims = [s.name for s in Registry(db).shims("active") if s.expired(now)]
    except MigrateError as err:
        row.error = str(err)
    except Exception as err:  # noqa: BLE001 - one environment's failure must not stop the others
        row.error = f"{type(err).__name__}: {one_line(err, url)}"
    return row


def status_rows(targets: Sequence[tuple[str, str]], settings: Any) -> list[EnvStatus]:
    """Status of each (name, url), in the given order; migration files are read once."""
    files = load_migrations(settings.migrations, settings.sources.get("migrations"))
    with ThreadPoolExecutor(max_workers=min(8, max(1, len(targets)))) as pool:
        return list(pool.map(lambda t: env_status(t[0], t[1], settings, files), targets))


def render(rows: Sequence[EnvStatus]) -> str:
    """A fixed-width table, one row per environment."""
    header = ("ENVIRONMENT", "HEAD APPLIED", "PENDING", "DRIFT", "EXPIRED SHIMS", "LOCK", "STATE")
    table = [header]
    for r in rows:
        if not r.reachable:
            table.append((r.name, "-", "-", "-", "-", "-", f"UNREACHABLE: {r.error}"))
            continue
        if not r.managed:
            table.append((r.name, "-", "-", "-", "-", r.lock_holder or "-", f"NOT MANAGED: {r.error}"))
            continue
        state = "ok" if r.healthy else ("error: " + r.error if r.error else "needs attention")
        table.append((r.name, r.head_applied or "-", str(r.pending), str(len(r.drift)),
                      ", ".join(r.expired_shims) or "0", r.lock_holder or "-", state))
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])) + "  " + row[-1] for row in table]
    return "\n".join(line.rstrip() for line in lines)


def as_json(rows: Sequence[EnvStatus]) -> list[dict[str, Any]]:
    return [dict(asdict(r), healthy=r.healthy) for r in rows]


def exit_code(rows: Sequence[EnvStatus]) -> int:
    """Like `migrate status`: 0 when every environment was read (whatever its state), 5 when any was unreachable.

    The state of each environment is in its row (and ``healthy`` in JSON); the
    gate for one database remains `migrate verify`.
    """
    return UNREACHABLE if any(not r.reachable for r in rows) else OK
