"""`migrate fleet up | status | verify | shims audit | doctor | lint`: one command over many targets.

Thin over :mod:`runner.fleet_ops` (per-target work through the library API) and
:mod:`runner.fleet_executor` (parallelism, waves, stopping). Output: with ``--format json`` one
JSON line per target as it finishes and a last ``{"summary": ...}`` line; in text, live progress
on a terminal (stderr) and a summary table on stdout. ``--results FILE`` appends the JSON lines
to a file as well.

Exit codes: 0 every target ok (``up``: at head; ``status``/``verify``: at head and clean;
``doctor``: healthy; ``shims audit``: no expired shim; ``lint``: no lint error); 1 at least one
target failed or was not run (each one's reason is on its line); 2 bad options, fleet file or
targets (nothing was run, unless a stream of targets failed midway); 5 the catalog database of
``--targets-sql`` is unreachable.

Each command imports what it runs inside its own function: `migrate --help` lists every command
(and so loads this module) without importing psycopg, yoyo or the library behind the commands
(bench/bench_runner.py: cold start).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

import click

from runner import errors


def _targets_options(command: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--fleet", "fleet_file", metavar="FILE", envvar="MIGRATE_FLEET",
                     help="Fleet file (TOML): [targets.NAME] url/schema/tags, [[waves]] (env MIGRATE_FLEET)."),
        click.option("--targets-sql", metavar="QUERY",
                     help="One query on the --database (catalog) returning URLs, schema names or tenant ids "
                          "(one column, or name and value)."),
        click.option("--targets-cmd", metavar="COMMAND",
                     help="A command printing one target per line ('value' or 'name value'; no shell)."),
        click.option("--schema-template", metavar="TEMPLATE",
                     help="Schema per tenant: ids from --targets-sql/--targets-cmd become schemas, e.g. tenant_{id}."),
        click.option("--tag", "tags", multiple=True, metavar="TAG",
                     help="Only the fleet file's targets with this tag."),
        click.option("--parallel", type=int, default=4, show_default=True, help="Targets worked on at once."),
        click.option("--canary", type=int, default=0, help="Run this many targets first; the rest only if they pass."),
        click.option("--max-failures", type=int, help="Stop starting targets after this many failed."),
        click.option("--on-error", type=click.Choice(["stop", "continue"]), default="continue", show_default=True,
                     help="stop: start no target after the first failure."),
        click.option("--shard-index", type=int, help="This process's shard (env MIGRATE_SHARD_INDEX, "
                                                     "JOB_COMPLETION_INDEX)."),
        click.option("--shard-count", type=int, help="Number of shards (env MIGRATE_SHARD_COUNT)."),
        click.option("--results", "results_path", metavar="FILE", help="Append one JSON line per target to FILE."),
        click.option("--verbose", is_flag=True, help="Log each target's steps (default: warnings only)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


_FLAG = {"fleet_file": "--fleet", "targets_sql": "--targets-sql", "targets_cmd": "--targets-cmd"}


def _source(key: str, value: str) -> str:
    """Where a targets option came from: its flag, or MIGRATE_FLEET for --fleet read from the environment."""
    if key == "fleet_file" and os.environ.get("MIGRATE_FLEET") == value:
        return "MIGRATE_FLEET (environment)"
    return _FLAG[key]


def _waves(inv: Any, opts: dict[str, Any]) -> tuple[list[Any], int | None]:
    """The waves to run and the number of targets (None when streamed)."""
    from runner import fleet_shard as shard_mod
    from runner import fleet_targets as ft
    from runner.fleet_executor import with_canary

    for key in ("fleet_file", "targets_sql", "targets_cmd"):
        if opts.get(key) is not None and not opts[key].strip():
            hint = " (an unset CI secret?)" if _source(key, opts[key]).endswith("(environment)") else ""
            raise errors.ConfigError(f"{_source(key, opts[key])}: {'empty' if not opts[key] else 'blank'}{hint};"
                                     " give a value or leave the option out")
    sources = [k for k in ("fleet_file", "targets_sql", "targets_cmd") if opts.get(k)]
    if len(sources) != 1:
        raise errors.UsageError("give exactly one of --fleet FILE, --targets-sql QUERY, --targets-cmd COMMAND"
                                + (f" (got {', '.join(_FLAG[s] for s in sources)})" if sources else ""))
    shard = shard_mod.resolve_shard(opts.get("shard_index"), opts.get("shard_count"), os.environ)
    template = opts.get("schema_template")
    if template is not None:
        ft.check_schema_template(template, "--schema-template")
    database = _catalog(inv)
    if opts.get("fleet_file"):
        if template is not None:
            raise errors.UsageError("--schema-template goes with --targets-sql/--targets-cmd; "
                                    "in a fleet file, set schema_template = \"...\" at its top")
        from pathlib import Path

        if not Path(opts["fleet_file"]).is_file():
            raise errors.ConfigError(f"{_source('fleet_file', opts['fleet_file'])}: fleet file not found:"
                                     f" {opts['fleet_file']}")
        fleet = ft.load_fleet_file(Path(opts["fleet_file"]), database)
        chosen = list(shard_mod.in_shard(ft.select_tags(fleet.targets, opts["tags"]), shard))
        if opts["canary"] and fleet.waves:
            raise errors.UsageError(f"--canary and the waves of {fleet.path}: give one of them")
        waves = with_canary(chosen, opts["canary"]) if opts["canary"] else ft.file_waves(fleet, chosen)
        return waves, len(chosen)
    if opts["tags"]:
        raise errors.UsageError("--tag selects targets of a fleet file (--fleet)")
    if opts.get("targets_sql"):
        if not database:
            raise errors.UsageError("--targets-sql runs on the catalog database: give --database (or DATABASE_URL)")
        stream: Iterable[Any] = ft.query_targets(database, opts["targets_sql"], template)
    else:
        stream = ft.command_targets(opts["targets_cmd"], database, template)
    return with_canary(shard_mod.in_shard(ft.unique(stream), shard), opts["canary"]), None


def _catalog(inv: Any) -> str | None:
    """The --database (flag, DATABASE_URL or config): the catalog of --targets-sql, the database of
    schema targets; None when not given."""
    from runner.config import DEFAULT_DATABASE

    database = inv.settings.database
    return None if database == DEFAULT_DATABASE and not inv.databases else database


def _open_results(path: str) -> Any:
    """The --results file, opened for appending; a path that cannot be written is a usage error (exit 2)."""
    try:
        return open(path, "a", encoding="utf-8")  # noqa: SIM115
    except OSError as err:
        raise errors.UsageError(f"--results: cannot write {path}: {err.strerror}") from None


def _run(inv: Any, command: str, opts: dict[str, Any], *, keep: bool = False, **kwargs: Any) -> Any:
    from runner import fleet_ops, logs
    from runner.fleet_executor import FleetOptions
    from runner.fleet_report import Reporter

    logs.configure(inv.flags.get("log_format") or "auto", logging.INFO if opts["verbose"] else logging.WARNING)
    options = FleetOptions(parallel=opts["parallel"], canary=opts["canary"], max_failures=opts["max_failures"],
                           on_error=opts["on_error"])
    waves, total = _waves(inv, opts)
    results = _open_results(opts["results_path"]) if opts.get("results_path") else None
    try:
        reporter = Reporter.for_terminal(inv.out, json_lines=inv.json, results_file=results, keep=keep and not inv.json)
        reporter.summary.total = total
        fleet_ops.run(command, inv.settings, waves, options, reporter, **kwargs)
        reporter.finish()
    finally:
        if results is not None:
            results.close()
    return reporter


def _finish(inv: Any, reporter: Any, verb: str, body: str = "") -> int:
    if not inv.json:
        from runner.fleet_report import summary_text

        click.echo("\n".join(part for part in (body, summary_text(reporter.summary, verb)) if part), file=inv.out)
    return reporter.summary.exit_code


@click.group()
def fleet() -> None:
    """Run a command over a fleet of databases or tenant schemas (parallel, waves, shards)."""


@fleet.command()
@_targets_options
@click.option("--no-compat", is_flag=True, help="Apply declared renames without creating shims.")
@click.option("--lock-wait", metavar="DURATION", help="How long to wait for a target's lock (default 5m).")
@click.option("--lock-timeout", metavar="DURATION", help="lock_timeout of each migration's statements (default 5s).")
@click.pass_obj
def up(inv: Any, no_compat: bool, lock_wait: str | None, lock_timeout: str | None, **opts: Any) -> int:
    """Apply pending migrations on every target, each under its own lock."""
    inv.flags.update(lock_wait=lock_wait, lock_timeout=lock_timeout)
    return _finish(inv, _run(inv, "up", opts, compat=not no_compat), "at head")


@fleet.command()
@_targets_options
@click.option("--sort", type=click.Choice(["lag", "name"]), default="lag", show_default=True,
              help="Order of the table: lag = most pending first, then oldest last migration.")
@click.pass_obj
def status(inv: Any, sort: str, **opts: Any) -> int:
    """Each target's head, pending migrations, and since when it is not at head."""
    reporter = _run(inv, "status", opts, keep=True)
    return _finish(inv, reporter, "at head", status_table(reporter.kept, sort) if reporter.kept else "")


@fleet.command()
@_targets_options
@click.pass_obj
def verify(inv: Any, **opts: Any) -> int:
    """Exit 0 only when every target is at head, clean, without expired shims."""
    return _finish(inv, _run(inv, "verify", opts), "verified")


@fleet.command()
@_targets_options
@click.pass_obj
def doctor(inv: Any, **opts: Any) -> int:
    """Diagnose every target (`migrate doctor`)."""
    return _finish(inv, _run(inv, "doctor", opts), "healthy")


@fleet.command()
@_targets_options
@click.pass_obj
def lint(inv: Any, **opts: Any) -> int:
    """Lint the migrations pending on each target, against its server."""
    return _finish(inv, _run(inv, "lint", opts), "without lint errors")


@fleet.group()
def shims() -> None:
    """Compatibility shims across the fleet."""


@shims.command()
@_targets_options
@click.option("--warn-within", default="7d", show_default=True, metavar="DURATION",
              help="List shims expiring within this long.")
@click.pass_obj
def audit(inv: Any, warn_within: str, **opts: Any) -> int:
    """Expired and soon-expiring shims on every target (exit 1 when any has expired)."""
    from runner.durations import parse_duration

    try:
        window = parse_duration(warn_within, "--warn-within")
    except ValueError as err:
        raise errors.UsageError(str(err)) from None
    reporter = _run(inv, "shims-audit", opts, keep=True, warn_within=window)
    return _finish(inv, reporter, "without expired shims", audit_text(reporter.kept))


def status_table(results: list[Any], sort: str = "lag") -> str:
    """One row per target; ``lag``: most pending first, then the oldest last-applied time."""
    from runner.fleet_report import table

    def lag(r: Any) -> tuple[int, str]:
        return (-(len(r.pending) if r.pending is not None else 10**9), r.details.get("since") or "")

    rows = sorted(results, key=lag if sort == "lag" else (lambda r: r.target))
    return table(("TARGET", "SCHEMA", "HEAD APPLIED", "SINCE", "PENDING", "STATE"),
                 [(r.target, r.schema or "-", r.details.get("head_applied") or "-",
                   (r.details.get("since") or "-")[:19], "?" if r.pending is None else str(len(r.pending)),
                   "at head" if r.ok else f"{r.error_kind}: {r.error}"[:140]) for r in rows])


def audit_text(results: list[Any]) -> str:
    lines = []
    for r in sorted(results, key=lambda r: r.target):
        for shim in r.details.get("expired", []):
            lines.append(f"EXPIRED   {r.target}  {shim['name']}  expired {shim['expires_at']}")
        for shim in r.details.get("expiring", []):
            lines.append(f"expiring  {r.target}  {shim['name']}  expires {shim['expires_at']}")
    return "\n".join(lines)
