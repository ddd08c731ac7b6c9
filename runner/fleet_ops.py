"""What `migrate fleet ...` does on one target, through the library API (never a subprocess).

Each function takes the run's :class:`Settings` and a :class:`Target` and returns a
:class:`TargetResult`; an error a target raises is turned into a failed result by the executor.
A target's settings are the run's with the target's URL and schema: the runner's tables live
in that schema and migrations run with ``search_path`` = that schema (see
:func:`runner.dialects.postgresql.PostgreSQL.connect`), and its compat schemas are prefixed
with the schema's name, so tenants in one database never share a shim schema.

:func:`run` is the library entry point: ``run("up", settings, waves, options, reporter)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from datetime import timedelta
from functools import partial
from typing import Any

from compat import lifecycle
from compat.registry import Registry
from runner import commands, history
from runner.cli_diagnose import run_lint
from runner.config import Settings
from runner.db import connect
from runner.doctor import diagnose, lock_finding
from runner.errors import UsageError
from runner.fleet_executor import FleetOptions, run_waves
from runner.fleet_report import FAILED, Reporter, TargetResult, error_fields
from runner.fleet_targets import Target, Wave
from runner.sources import load_folder, load_migrations
from runner.status import compute
from runner.urls import parse_url


def target_settings(settings: Settings, target: Target) -> Settings:
    """The settings of one target: its URL, its schema, its own compat schema names."""
    if target.schema is None:
        return dataclasses.replace(settings, database=target.url)
    if parse_url(target.url).search_path:
        raise UsageError(f"target {target.name}: its URL sets schema= and the target has schema {target.schema}: "
                         "give one of them")
    prefix = target.schema.replace("{", "{{").replace("}", "}}")
    compat = dataclasses.replace(settings.compat, schema_template=f"{prefix}_{settings.compat.schema_template}")
    return dataclasses.replace(settings, database=target.url, schema=target.schema, compat=compat)


def _result(target: Target, **values: Any) -> TargetResult:
    return TargetResult(target.name, target.redacted, target.schema, **values)


def _pending_after_failure(settings: Settings) -> list[str] | None:
    try:
        return list(commands.status(settings).pending)
    except Exception:  # noqa: BLE001 - best effort: the failure itself is what is reported
        return None


# ---------------------------------------------------------------------------------- up
def up(settings: Settings, target: Target, *, compat: bool = True) -> TargetResult:
    """`migrate up` on the target, under the target's own lock (per schema)."""
    own = target_settings(settings, target)
    try:
        done = commands.up(own, compat=compat)
    except Exception as err:  # noqa: BLE001 - reported on the target's line
        kind, message, code = error_fields(err)
        pending = _pending_after_failure(own) if kind in ("migration", "lock", "drift", "database") else None
        return _result(target, outcome=FAILED, error_kind=kind, error=message, exit_code=code, pending=pending)
    pending_after = [p for p in done.pending_before if p not in set(done.applied)]
    shims = [{"name": s.get("name"), "expires_at": s.get("expires_at")} for s in done.shims]
    return _result(target, applied=done.applied, pending=pending_after, shims=shims,
                   details={"post_apply": done.post_apply} if done.post_apply else {})


# ------------------------------------------------------------------------------ status
def status(settings: Settings, target: Target, *, files: list[Any]) -> TargetResult:
    """The `envs` row of one target, plus since when it is not at head: the time its last applied
    migration was applied. ``ok`` only at head without drift."""
    own = target_settings(settings, target)
    with connect(own.database, schema=own.schema, read_only=True) as db:
        lock = lock_finding(db)
        details: dict[str, Any] = {"managed": True, "head_applied": None, "since": None,
                                   "lock_holder": lock.object if lock else None}
        if not db.table_exists(history.HISTORY):
            details["managed"] = False
            return _result(target, outcome=FAILED, pending=[m.id for m in files], error_kind="not-at-head",
                           error="never migrated by the runner", details=details)
        applied = history.read_applied(db)
        state = compute(files, applied)
        when = {a.migration_id: a.applied_at for a in applied}
        in_order = [m.id for m in files if m.id in when]
        if in_order:
            details["head_applied"] = in_order[-1]
            details["since"] = when[in_order[-1]].isoformat() if when[in_order[-1]] else None
        drift = [f"modified {m.id}" for m in state.modified] + [f"missing {m}" for m in state.missing]
        now = db.now()
        expired = [s.name for s in Registry(db).shims("active") if s.expired(now)]
    details.update(drift=drift, expired_shims=expired)
    problems = ([f"{len(state.pending)} pending"] if state.pending else []) + drift
    if problems:
        return _result(target, outcome=FAILED, pending=list(state.pending), error_kind="not-at-head",
                       error="; ".join(problems), details=details)
    return _result(target, pending=[], details=details)


# ------------------------------------------------------------------------------ verify
def verify(settings: Settings, target: Target) -> TargetResult:
    """`migrate verify` on the target: pending, modified, missing, post-apply hooks due, expired shims."""
    outcome = commands.verify(target_settings(settings, target))
    if outcome.ok:
        return _result(target, pending=[])
    return _result(target, outcome=FAILED, pending=list(outcome.status.pending), error_kind="not-at-head",
                   error="; ".join(outcome.problems), exit_code=1, details={"problems": outcome.problems})


# -------------------------------------------------------------------------- shims audit
def shims_audit(settings: Settings, target: Target, *, warn_within: timedelta) -> TargetResult:
    """Expired and soon-expiring shims of the target (each target has its own windows)."""
    own = target_settings(settings, target)
    with connect(own.database, schema=own.schema, read_only=True) as db:
        report = lifecycle.audit(db, warn_within)

    def rows(shims: list[Any]) -> list[dict[str, Any]]:
        return [{"name": s.name, "expires_at": s.expires_at.isoformat()} for s in shims]

    details = {"expired": rows(report.expired), "expiring": rows(report.expiring), "active": len(report.active)}
    shims = [{"name": s.name, "expires_at": s.expires_at.isoformat()} for s in report.active]
    if report.expired:
        return _result(target, outcome=FAILED, error_kind="expired-shims", exit_code=1, shims=shims,
                       error=lifecycle.expired_message(report.expired), details=details)
    return _result(target, shims=shims, details=details)


# ------------------------------------------------------------------------------ doctor
def doctor(settings: Settings, target: Target) -> TargetResult:
    own = target_settings(settings, target)
    with connect(own.database, schema=own.schema, read_only=True) as db:
        found = diagnose(db, own)
    details = {"findings": found.as_list()}
    if found.healthy:
        return _result(target, details=details)
    first = next(f for f in found.findings if f.severity == "error")
    count = sum(1 for f in found.findings if f.severity == "error")
    return _result(target, outcome=FAILED, error_kind="unhealthy", exit_code=1, details=details,
                   error=f"{count} problem(s): {first.kind}: {first.detail}")


# -------------------------------------------------------------------------------- lint
def lint(settings: Settings, target: Target) -> TargetResult:
    """Lint the migrations pending on the target, with its server version and active shims."""
    own = target_settings(settings, target)
    with connect(own.database, schema=own.schema, read_only=True) as db:
        report = run_lint(own, db=db)
    details = {"linted": report.linted, "errors": len(report.errors),
               "warnings": len(report.findings) - len(report.errors)}
    if report.errors:
        first = report.errors[0]
        return _result(target, outcome=FAILED, error_kind="lint", exit_code=1, details=details,
                       error=f"{len(report.errors)} lint error(s): {first.as_text().splitlines()[0]}")
    return _result(target, details=details)


# ------------------------------------------------------------------------- entry point
COMMANDS = ("up", "status", "verify", "shims-audit", "doctor", "lint")


def action_for(command: str, settings: Settings, *, compat: bool = True,
               warn_within: timedelta = timedelta(days=7)) -> Callable[[Target], TargetResult]:
    """The per-target function of ``command`` (one of :data:`COMMANDS`)."""
    if command == "up":
        return partial(up, settings, compat=compat)
    if command == "status":
        return partial(status, settings, files=load_migrations(settings.migrations))
    if command == "shims-audit":
        return partial(shims_audit, settings, warn_within=warn_within)
    functions = {"verify": verify, "doctor": doctor, "lint": lint}
    if command not in functions:
        raise UsageError(f"unknown fleet command {command!r} (known: {', '.join(COMMANDS)})")
    return partial(functions[command], settings)


def run(command: str, settings: Settings, waves: Iterable[Wave], options: FleetOptions, reporter: Reporter,
        **kwargs: Any) -> Reporter:
    """Run ``command`` over the waves of targets; every result goes to ``reporter`` as it comes.

    The migrations folder is read (and checked) once before any target is touched."""
    load_folder(settings.migrations)
    run_waves(waves, action_for(command, settings, **kwargs), options, reporter)
    return reporter
