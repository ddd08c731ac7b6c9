"""The `migrate` command line: a thin layer over :mod:`runner.commands`.

Global options (--database, --migrations, --config, --format, --log-format)
are accepted before or after the command name. Errors a user can cause are
printed as one line on stderr with a documented exit code (see runner.errors).

Each command imports what it runs inside its own function: `migrate --help` lists every command
(and so loads this module) without importing psycopg, yoyo or the library behind the commands
(bench/bench_runner.py: cold start).
"""

from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

import click

from runner import errors
from runner.secrets import redact_data, redact_text

GLOBAL_OPTIONS = ("--database", "--migrations", "--config", "--format", "--log-format")


@dataclass
class Invocation:
    """What every command gets as ``ctx.obj``."""

    flags: dict[str, Any]
    databases: tuple[str, ...] = ()
    # --format sarif|github: for `lint` and `check-files` only (runner.lint_formats), never a setting.
    ci_format: str | None = None
    out: Any = field(default=None, repr=False)  # the real stdout; sys.stdout is stderr while a command runs
    command: str | None = None
    emitted: bool = False  # a document was printed (a failure after it adds none)
    _settings: Any = field(default=None, repr=False)

    @property
    def settings(self) -> Any:
        if self._settings is None:
            from runner.config import load_settings

            if len(self.databases) > 1:
                raise errors.UsageError("--database may be given several times only to `migrate status`")
            flags = dict(self.flags, database=self.databases[0] if self.databases else None)
            self._settings = load_settings(flags)
        return self._settings

    def open_database(self, *, read_only: bool = False) -> Any:
        from runner.db import open_database

        return open_database(self.settings, read_only=read_only)

    @property
    def json(self) -> bool:
        return self.settings.format == "json"

    def emit(self, data: Any, text: str) -> None:
        """Print ``data`` as one JSON document (--format json) or ``text``."""
        if self.json:
            click.echo(redact_text(json.dumps(redact_data(data), indent=2, default=str)), file=self.out)
            self.emitted = True
        elif text:
            click.echo(redact_text(text), file=self.out)


def reorder(argv: Sequence[str]) -> list[str]:
    """Move global options (and their values) in front of the command name."""
    front: list[str] = []
    rest: list[str] = []
    items = list(argv)
    i = 0
    while i < len(items):
        token = items[i]
        if token == "--":
            rest.extend(items[i:])
            break
        name = token.split("=", 1)[0]
        if name in GLOBAL_OPTIONS:
            if "=" in token or i + 1 >= len(items):
                front.append(token)
                i += 1
            else:
                front.extend(items[i:i + 2])
                i += 2
            continue
        rest.append(token)
        i += 1
    return front + rest


class _Commands(click.Group):
    """The `migrate` group. Command groups that live in their own modules (shims, fleet, diagnosis)
    are imported when named, as click's documentation shows for lazily loaded subcommands: `migrate
    up` and `migrate status` do not import them (bench/bench_runner.py: the no-op `up`)."""

    ELSEWHERE = {
        "shims": "compat.cli:shims",
        "fleet": "runner.cli_fleet:fleet",
        **{name: f"runner.cli_diagnose:{name.replace('-', '_')}"
           for name in ("doctor", "snapshot", "adopt", "lint", "check-files", "envs")},
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.ELSEWHERE])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.ELSEWHERE and cmd_name not in self.commands:
            import importlib

            module, name = self.ELSEWHERE[cmd_name].split(":")
            self.add_command(getattr(importlib.import_module(module), name), cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]}, invoke_without_command=True)
@click.option("--database", "databases", multiple=True, metavar="URL",
              help="Database URL (env DATABASE_URL). Default: sqlite:///migrate.db")
@click.option("--migrations", metavar="DIR", help="Migrations folder (env MIGRATE_MIGRATIONS). Default: migrations")
@click.option("--config", metavar="FILE", help="Config file. Default: migrate.toml, else [tool.migrate] in pyproject.toml")
@click.option("--format", "format_", type=click.Choice(["text", "json", "sarif", "github"]),
              help="Output on stdout. Default: text (sarif, github: lint and check-files only)")
@click.option("--log-format", type=click.Choice(["auto", "console", "json"]),
              help="Logs on stderr: auto = console on a terminal, else JSON lines")
@click.version_option(package_name="migrate-runner", prog_name="migrate")
@click.pass_context
def cli(ctx: click.Context, databases: tuple[str, ...], migrations: str | None, config: str | None,
        format_: str | None, log_format: str | None) -> None:
    """Apply database migrations safely from deploy pipelines (yoyo-migrations inside)."""
    from runner import logs

    asks_help = bool(ctx.obj and ctx.obj.get("help"))
    ci_format = None
    if format_ in ("sarif", "github"):
        if ctx.invoked_subcommand not in (None, "lint", "check-files"):
            raise click.UsageError(f"--format {format_} is for `migrate lint` and `migrate check-files` only")
        ci_format, format_ = format_, None
    invocation = Invocation(
        flags={"migrations": migrations, "config": config, "format": format_, "log_format": log_format},
        databases=databases,
        ci_format=ci_format,
        out=sys.stdout,
        command=ctx.invoked_subcommand,
    )
    if isinstance(ctx.obj, dict):
        ctx.obj["invocation"] = invocation  # for main()'s error report
    ctx.obj = invocation
    if ctx.invoked_subcommand is None and not asks_help:
        # `migrate` alone: the help on stdout, and exit 2 (not 0, and the same with every click
        # version): `migrate $COMMAND` with an unset variable must not pass a CI step.
        click.echo(ctx.get_help())
        raise errors.UsageError("no command given (see `migrate --help`)")
    if ctx.invoked_subcommand is not None and not asks_help:
        logs.configure(log_format or _env_log_format())
        # Whatever a migration, yoyo or a driver prints must not corrupt `--format json`:
        # while a command runs, stdout is stderr and only Invocation.emit writes to the real stdout.
        ctx.with_resource(contextlib.redirect_stdout(sys.stderr))


def _env_log_format() -> str:
    import os

    value = os.environ.get("MIGRATE_LOG_FORMAT", "auto")
    return value if value in ("auto", "console", "json") else "auto"


# ---------------------------------------------------------------------------- up
@cli.command()
@click.option("--to", "to", metavar="ID", help="Stop after this migration.")
@click.option("--dry-run", is_flag=True, help="Print the plan and its SQL; change nothing.")
@click.option("--lock-timeout", metavar="DURATION", help="lock_timeout for each migration's statements (default 5s).")
@click.option("--lock-wait", metavar="DURATION", help="How long to wait for another runner's lock (default 5m).")
@click.option("--no-compat", is_flag=True, help="Apply declared renames without creating compatibility shims.")
@click.option("--lint", "lint", is_flag=True, help="Lint pending migrations first; apply nothing on a lint error.")
@click.option("--wait", "wait_for", metavar="DURATION",
              help="First wait up to DURATION for the database (as `migrate wait`); exit 5 after it.")
@click.pass_obj
def up(inv: Invocation, to: str | None, dry_run: bool, lock_timeout: str | None, lock_wait: str | None,
       no_compat: bool, lint: bool, wait_for: str | None) -> int:
    """Apply pending migrations, each exactly once."""
    from runner import commands

    inv.flags.update(lock_timeout=lock_timeout, lock_wait=lock_wait)
    if wait_for is not None:
        from runner.waiting import parse_timeout, wait_for_database

        wait_for_database(inv.settings.database, parse_timeout(wait_for, "--wait"), schema=inv.settings.schema,
                          read_only=False)
    if lint:
        from runner.cli_diagnose import lint_gate

        lint_gate(inv)
    result = commands.up(inv.settings, to=to, dry_run=dry_run, compat=not no_compat, view=_progress_view(inv))
    if dry_run:
        data = {"dry_run": True, "database": result.database, "pending_before": result.pending_before,
                "plan": [{"id": p.id, "path": p.path, "transactional": p.transactional, "statements": p.statements,
                          "post_apply": p.post_apply} for p in result.plan]}
        lines = [f"-- {p.id} ({p.path}){'' if p.transactional else ' [non-transactional]'}"
                 f"{' [post-apply hook]' if p.post_apply else ''}\n"
                 + "\n".join(s.rstrip().rstrip(";") + ";" for s in p.statements) for p in result.plan]
        if result.warnings:  # only then: the document is otherwise unchanged
            data["warnings"] = result.warnings
        inv.emit(data, "\n\n".join(lines) if lines else "nothing to apply: database is at head")
        return errors.OK
    data = {"database": result.database, "applied": result.applied, "pending_before": result.pending_before,
            "duration_s": round(result.duration_s, 3), "shims": result.shims, "post_apply": result.post_apply}
    if result.applied:
        shown = result.applied if len(result.applied) <= 10 else [*result.applied[:3], "...", *result.applied[-3:]]
        text = f"applied {len(result.applied)} migration(s) in {result.duration_s:.2f}s: " + ", ".join(shown)
    else:
        text = "nothing to apply: database is at head"
    if result.post_apply:
        text += "\nran post-apply hook(s): " + ", ".join(result.post_apply)
    if result.warnings:  # only then: the document is otherwise unchanged
        data["warnings"] = result.warnings
        text += "".join(f"\nwarning: {w}" for w in result.warnings)
    for shim in result.shims:
        where = f" in schema {shim['schema']}" if shim.get("schema") else ""
        text += (f"\nactive shim {shim.get('name')}: {shim.get('table')}.{shim.get('old')} -> {shim.get('new')}"
                 f"{where}, expires {shim.get('expires_at')}")
    inv.emit(data, text)
    return errors.OK


def _log_format(inv: Invocation) -> str:
    """``console`` or ``json``: what stderr carries."""
    from runner import logs

    return logs.resolve(inv.flags.get("log_format") or _env_log_format())


def _problem(inv: Invocation, command: str, line: str) -> None:
    """A problem a command found, on stderr: a line, or a JSON event with --log-format json."""
    if (inv.flags.get("log_format") or _env_log_format()) == "json":
        from runner import logs

        logs.get_logger("migrate").error("problem", command=command, problem=line)
    else:
        click.echo(f"migrate: {command}: {line}", err=True)


def _progress_view(inv: Invocation) -> Any:
    """On the console, `up` shows compact progress lines (runner.console); JSON logs keep events."""
    if _log_format(inv) != "console":
        return None
    from runner.console import ConsoleProgress

    return ConsoleProgress()


# -------------------------------------------------------------------------- wait
@cli.command()
@click.option("--timeout", default="60s", show_default=True, metavar="DURATION",
              help="Give up (exit 5) after this long.")
@click.pass_obj
def wait(inv: Invocation, timeout: str) -> int:
    """Wait until the database accepts connections and can be migrated (exit 5 after --timeout)."""
    from runner.waiting import parse_timeout, wait_for_database

    result = wait_for_database(inv.settings.database, parse_timeout(timeout, "--timeout"),
                               schema=inv.settings.schema)
    inv.emit(result.to_dict(), f"database ready after {result.waited_s:.1f}s ({result.attempts} attempt(s)): "
                               f"{result.database}")
    return errors.OK


# ------------------------------------------------------------------------ status
@cli.command()
@click.option("--env", "envs", multiple=True, metavar="NAME",
              help="A named environment from [environments] (several allowed): one row per environment.")
@click.pass_obj
def status(inv: Invocation, envs: tuple[str, ...]) -> int:
    """Applied, pending, modified and missing migrations."""
    from runner import commands

    if len(inv.databases) > 1 or envs:
        from runner.cli_diagnose import multi_status

        return multi_status(inv, [*inv.databases, *envs])
    state = commands.status(inv.settings)
    lines = [f"{'applied':9} {a.id}  ({a.applied_at})" for a in state.applied]
    lines += [f"{'pending':9} {p}" for p in state.pending]
    lines += [f"{'MODIFIED':9} {m.id}" for m in state.modified]
    lines += [f"{'MISSING':9} {m}" for m in state.missing]
    lines.append(f"head: {state.head or '-'}; at head: {'yes' if state.at_head else 'no'}")
    warnings = [] if state.head else [f"the migrations folder {inv.settings.migrations} has no migrations"
                                      + (f" but the database has {len(state.applied)} applied" if state.applied else "")]
    lines += [f"warning: {w}" for w in warnings]
    inv.emit(dict(state.to_dict(), warnings=warnings) if warnings else state.to_dict(), "\n".join(lines))
    return errors.OK


# ------------------------------------------------------------------------ verify
@cli.command()
@click.option("--consumer", "consumers", multiple=True, type=click.Path(), metavar="FILE",
              help="A consumer contract (TOML/JSON), several allowed: exit 0 only if the database serves each.")
@click.option("--consumer-models", "consumer_models", multiple=True, metavar="MODULE:ATTR",
              help="A consumer's SQLAlchemy models (e.g. myapp.models:Base), several allowed: checked like "
                   "--consumer, with the columns its mapped classes select.")
@click.pass_obj
def verify(inv: Invocation, consumers: tuple[str, ...], consumer_models: tuple[str, ...]) -> int:
    """Exit 0 only when nothing is pending, modified or missing (the gate tests run first)."""
    from runner import commands

    if consumers or consumer_models:
        from runner.cli_diagnose import verify_consumers

        return verify_consumers(inv, consumers, consumer_models)
    result = commands.verify(inv.settings)
    data = dict(result.status.to_dict(), ok=result.ok, problems=result.problems)
    if not result.ok:
        inv.emit(data, "")
        for line in result.problems:
            _problem(inv, "verify", line)
        return errors.NOT_AT_HEAD
    inv.emit(data, f"ok: database is at head ({result.status.head or 'no migrations'})")
    return errors.OK


# -------------------------------------------------------------------------- down
@cli.command()
@click.option("--to", "to", metavar="ID", help="Roll back every migration applied after this one.")
@click.option("--steps", type=click.IntRange(min=1), help="How many migrations to roll back (default 1).")
@click.pass_obj
def down(inv: Invocation, to: str | None, steps: int | None) -> int:
    """Roll back applied migrations (their Down section or .rollback.sql)."""
    from runner import commands

    result = commands.down(inv.settings, to=to, steps=steps)
    text = ("rolled back: " + ", ".join(result.rolled_back)) if result.rolled_back else "nothing to roll back"
    inv.emit({"rolled_back": result.rolled_back, "duration_s": round(result.duration_s, 3)}, text)
    return errors.OK


# ------------------------------------------------------------- bookkeeping only
def _bookkeeping_command(name: str, help_text: str, past: str, unchanged: str = ""):
    @cli.command(name=name, help=help_text)
    @click.argument("ids", nargs=-1, required=True, metavar="ID...")
    @click.pass_obj
    def command(inv: Invocation, ids: tuple[str, ...]) -> int:
        from runner import commands

        result = getattr(commands, name)(inv.settings, ids)
        lines = [f"{past}: " + ", ".join(result.done)] if result.done else []
        if result.unchanged:
            lines.append(f"unchanged ({unchanged}): " + ", ".join(result.unchanged))
        inv.emit({past: result.done, "unchanged": result.unchanged}, "\n".join(lines))
        return errors.OK

    return command


_bookkeeping_command("mark", "Record migrations as applied without running them (baseline).", "marked",
                     "already recorded as applied")
_bookkeeping_command("unmark", "Forget that migrations were applied, without running them.", "unmarked")
_bookkeeping_command("rehash", "Accept the current file content of applied migrations (after a deliberate edit).",
                     "rehashed", "the recorded checksum already matches the file")


# --------------------------------------------------------------------------- new
@cli.command()
@click.argument("name")
@click.option("--goose", is_flag=True, help="Write a goose-format file (-- +goose Up/Down).")
@click.pass_obj
def new(inv: Invocation, name: str, goose: bool) -> int:
    """Create the next numbered migration file."""
    from runner import commands

    path = commands.new(inv.settings, name, "goose" if goose else "sql")
    inv.emit({"path": str(path)}, f"created {path}")
    return errors.OK


def main(argv: Sequence[str] | None = None) -> int:
    args = reorder(sys.argv[1:] if argv is None else argv)
    state: dict[str, Any] = {"help": "--help" in args or "-h" in args}
    try:
        code = cli.main(args=args, prog_name="migrate", standalone_mode=False, obj=state)
    except BaseException as err:  # noqa: BLE001 - every failure becomes one line (and a document)
        from runner import failure

        found = failure.from_exception(err)
        if found is None or isinstance(err, SystemExit):
            raise
        _report(found, state.get("invocation"), args)
        return found.exit_code
    return code if isinstance(code, int) else errors.OK


def _report(found: Any, inv: Invocation | None, args: Sequence[str]) -> None:
    """The error as one line on stderr (a JSON event with --log-format json) and, with --format json,
    as the command's document on stdout."""
    import os

    from runner import logs

    flags = inv.flags if inv is not None else {}
    log_format = flags.get("log_format") or _option(args, "--log-format") or _env_log_format()
    if log_format == "json":  # asked for: with `auto` the error stays a line a person reads
        logs.configure("json")
        logs.get_logger("migrate").error("error", **found.error())
    else:
        click.echo(found.line_text(), err=True)
    settings = inv._settings if inv is not None else None
    output = (settings.format if settings is not None else None) or flags.get("format") or \
        _option(args, "--format") or os.environ.get("MIGRATE_FORMAT")
    if output == "json" and not (inv is not None and inv.emitted):  # one document, the command's own
        command = inv.command if inv is not None else None
        click.echo(json.dumps(found.document(command), indent=2, default=str),
                   file=inv.out if inv is not None else sys.stdout)


def _option(args: Sequence[str], name: str) -> str | None:
    """The value of global option ``name`` in reordered ``args`` (when the command line did not parse)."""
    for i, token in enumerate(args):
        if token == name and i + 1 < len(args):
            return args[i + 1]
        if token.startswith(name + "="):
            return token.split("=", 1)[1]
    return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
