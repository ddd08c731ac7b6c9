"""Click commands: ``doctor``, ``snapshot``, ``adopt``, ``lint``, ``check-files``, ``envs``; plus
what the core commands call for diagnosis (``verify --consumer``, ``up --lint``, ``status --database A --database B``).

runner.cli imports this module when one of these commands is named (``_Commands.ELSEWHERE``).
Each command returns its exit code (see docs/cli.md).

Each command imports what it runs inside its own function: `migrate --help` lists every command
(and so loads this module) without importing psycopg, yoyo or the library behind the commands
(bench/bench_runner.py: cold start).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from runner import errors
from runner.secrets import redact_data, redact_text


class LintFailed(errors.MigrateError):
    """``migrate up --lint`` found errors: nothing was applied."""

    exit_code = errors.NOT_AT_HEAD


# --------------------------------------------------------------------------- doctor
@click.command()
@click.pass_obj
def doctor(inv: Any) -> int:
    """Diagnose the database: pending, drift, undone migrations, expired shims, lock holder."""
    from runner.doctor import diagnose

    with inv.open_database(read_only=True) as db:
        result = diagnose(db, inv.settings)
    inv.emit(result.as_list(), result.as_text())
    return errors.OK if result.healthy else errors.NOT_AT_HEAD


@click.command()
@click.pass_obj
def snapshot(inv: Any) -> int:
    """Record the live schema as the expected shape of the last applied migration (for `doctor`)."""
    from runner.doctor import record_snapshot

    with inv.open_database() as db:
        last = record_snapshot(db, inv.settings)
    inv.emit({"snapshot_of": last}, f"snapshot stored as the expected schema after {last or 'no migration'}")
    return errors.OK


# --------------------------------------------------------------------------- adopt
@click.command()
@click.argument("tool", type=click.Choice(["yoyo", "goose", "golang-migrate", "alembic"]))
@click.option("--yes", is_flag=True, help="Record the mapping (default: dry run, print it).")
@click.option("--table", metavar="NAME", help="The other tool's history table, if not its default name.")
@click.option("--allow-gaps", is_flag=True,
              help="Adopt even if the history skips migrations before its newest (they stay pending).")
@click.pass_obj
def adopt(inv: Any, tool: str, yes: bool, table: str | None, allow_gaps: bool) -> int:
    """Take over a database migrated by yoyo, goose, golang-migrate or Alembic, without running anything."""
    from runner.adopt import adopt as run_adopt

    plan = run_adopt(inv.settings, tool, apply=yes, table=table, allow_gaps=allow_gaps)
    inv.emit(plan.as_dict(), plan.as_text())
    return errors.OK


# --------------------------------------------------------------------------- lint
def run_lint(settings: Any, *, all_files: bool = False, offline: bool = False,
             paths: Sequence[str] = (), db: Any = None) -> Any:
    """Lint pending migrations (or every one, or ``paths``); returns a LintReport.

    With a PostgreSQL database, active shims and the server version feed the
    rules; ``offline`` (or ``paths`` without a database) lints the files alone.
    """
    from runner import history
    from runner.lint import lint_migrations, read_active_shims
    from runner.sources import load_migrations, read_migration

    if paths:
        migrations = [read_migration(Path(p)) for p in paths]
    else:
        migrations = load_migrations(settings.migrations, settings.sources.get("migrations"))
    shims: list[Any] = []
    server_version = None
    if not offline:
        if db is None:
            from runner.db import open_database
            from runner.dialects import for_url
            from runner.urls import parse_url

            address = parse_url(settings.database)
            if not for_url(address).lints:
                raise errors.UsageError(
                    f"lint checks PostgreSQL migrations, and {address.redacted} is {address.dialect}: use "
                    "`migrate lint --all --offline` to lint the files anyway")
            with open_database(settings, read_only=True) as own:
                return run_lint(settings, all_files=all_files, paths=paths, db=own)
        server_version = db.dialect.server_version(db)
        shims = read_active_shims(db)
        if not all_files and not paths:
            applied = {a.migration_id for a in history.read_applied(db)}
            migrations = [m for m in migrations if m.id not in applied]
    return lint_migrations(migrations, settings.lint_disable, settings.renames, shims, server_version,
                           settings.compat.mode)


@click.command()
@click.argument("paths", nargs=-1, type=click.Path(), metavar="[FILE]...")
@click.option("--all", "all_files", is_flag=True, help="Lint every migration, not only pending ones.")
@click.option("--offline", is_flag=True,
              help="Do not connect: lint the files alone (implies --all; no shim rule, server version unknown).")
@click.pass_obj
def lint(inv: Any, paths: tuple[str, ...], all_files: bool, offline: bool) -> int:
    """Report unsafe operations in pending PostgreSQL migrations (or --all, or the given files)."""
    try:
        report = run_lint(inv.settings, all_files=all_files or offline, offline=offline, paths=paths)
    except errors.MigrationFileError as err:
        if not inv.ci_format:
            raise
        # A file lint cannot parse is a finding too, so that it shows on the pull request.
        from runner.filecheck import FileCheckReport, file_error

        _emit_report(inv, FileCheckReport(findings=[file_error(err)], linted=[Path(err.path).name]))
        raise
    _emit_report(inv, report)
    return errors.NOT_AT_HEAD if report.errors else errors.OK


def _emit_report(inv: Any, report: Any) -> None:
    """A lint or check-files report in the format asked for (text, json, sarif, github)."""
    if inv.ci_format:
        from runner.lint_formats import render

        click.echo(render(report, inv.ci_format), file=inv.out)
    else:
        inv.emit(report.as_dict(), _relative(report.as_text()))


@click.command("check-files")
@click.argument("paths", nargs=-1, required=True, type=click.Path(), metavar="FILE...")
@click.pass_obj
def check_files(inv: Any, paths: tuple[str, ...]) -> int:
    """Check migration files without a database: parse errors, malformed directives, duplicate
    versions or ids in their folder, unknown depends (every problem, not only the first)."""
    from runner.filecheck import check_files as run_check

    report = run_check(paths, inv.settings.renames)
    _emit_report(inv, report)
    return errors.USAGE if report.findings else errors.OK


def _relative(text: str) -> str:
    cwd = str(Path.cwd()) + "/"
    return text.replace(cwd, "")


def lint_gate(inv: Any) -> None:
    """For ``migrate up --lint``: lint what is pending; print findings on stderr; raise LintFailed on errors."""
    report = run_lint(inv.settings)
    if report.findings:
        click.echo(redact_text(_relative("\n".join(f.as_text() for f in report.findings))), err=True)
    if report.errors:
        raise LintFailed(f"lint: {len(report.errors)} error(s) in pending migrations: nothing applied "
                         "(fix them, or disable a rule with `-- lint: disable=RULE`)")


# --------------------------------------------------------------------------- verify --consumer
def verify_consumers(inv: Any, consumers: Sequence[str], models: Sequence[str] = ()) -> int:
    """For ``migrate verify --consumer FILE ... --consumer-models MODULE:ATTR ...``: print the result,
    return 0 (all served) or 1."""
    from runner.contracts import load_contracts, verify_consumers as check

    contracts = load_contracts(consumers)  # bad files fail (exit 2) before any connection
    if models:  # imports SQLAlchemy: only when asked
        from runner.model_contracts import load_model_contracts

        contracts += load_model_contracts(models)
    with inv.open_database(read_only=True) as db:
        report = check(db, inv.settings, contracts)
    if report.ok:
        inv.emit(report.as_dict(), report.as_text())
        return errors.OK
    # Each reason once: on stderr (the gate's error lines); stdout keeps one line per consumer.
    text = "\n".join(r.as_text() if r.ok else (f"FAIL  {r.consumer} ({r.file}): {len(r.reasons)} reason(s), on stderr"
                                                 + "".join(f"\n      note: {n}" for n in r.notes))
                     for r in report.results)
    inv.emit(report.as_dict(), "" if inv.json else text)
    for result in report.results:
        if not result.ok:
            for reason in result.reasons:
                click.echo(redact_text(f"migrate: verify: {result.consumer}: {reason}"), err=True)
    return errors.NOT_AT_HEAD


# --------------------------------------------------------------------------- several environments
def multi_status(inv: Any, targets: Sequence[str]) -> int:
    """For ``migrate status --database URL --database URL`` (or environment names): one row each."""
    from runner import multienv
    from runner.config import load_settings

    settings = load_settings(dict(inv.flags, database=None))
    rows = multienv.status_rows(multienv.parse_targets(targets, settings.environments), settings)
    out = getattr(inv, "out", None)  # the real stdout (sys.stdout is stderr while a command runs)
    if settings.format == "json":
        click.echo(redact_text(json.dumps(redact_data({"environments": multienv.as_json(rows)}), indent=2, default=str)), file=out)
    else:
        click.echo(redact_text(multienv.render(rows)), file=out)
    return multienv.exit_code(rows)


@click.command()
@click.argument("targets", nargs=-1, metavar="[NAME|URL]...")
@click.pass_obj
def envs(inv: Any, targets: tuple[str, ...]) -> int:
    """Status of several databases: configured [environments] (default: all of them) or URLs."""
    from runner.config import load_settings

    settings = load_settings(dict(inv.flags, database=None))
    if not targets and not settings.environments:
        raise errors.UsageError("envs: no [environments] in the config and no NAME or URL given")
    return multi_status(inv, targets)

