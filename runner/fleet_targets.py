"""A fleet's targets: where they come from (a fleet file, one catalog query, a command) and the waves.

A :class:`Target` is one place the runner migrates: a database URL and, for schema-per-tenant,
the schema the runner's tables live in (migrations then run with ``search_path`` = that
schema). Targets are streamed: a catalog query is read through a server-side cursor and a
command's output line by line, so a fleet of any size costs the memory of a few targets.

Passwords are never part of a fleet's text: URLs name no password (libpq finds it in
``PGPASSWORD``, ``~/.pgpass`` or a ``PGSERVICE`` service file), or a target names the
environment variable holding its URL (``url_env``); every URL shown is redacted.
"""

from __future__ import annotations

import os
import shlex
import string
import subprocess
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.config import read_toml
from runner.db import one_line
from runner.errors import ConfigError, DatabaseUnreachable, UsageError
from runner.secrets import redact_url
from runner.urls import parse_url

_TARGET_KEYS = {"url", "url_env", "schema", "tags", "group"}
_WAVE_KEYS = {"name", "select"}
_TOP_KEYS = {"database", "schema_template", "targets", "waves"}


@dataclass(frozen=True)
class Target:
    """One target. ``name`` is unique in the fleet and what shards are computed from."""

    name: str
    url: str
    schema: str | None = None
    tags: tuple[str, ...] = ()

    @property
    def redacted(self) -> str:
        return redact_url(self.url)


@dataclass
class Wave:
    """Targets run together; a wave with a failure stops the waves after it."""

    name: str
    targets: Iterable[Target]


@dataclass
class FleetFile:
    """A parsed fleet file: targets in file order and the waves' selectors."""

    path: Path
    targets: list[Target] = field(default_factory=list)
    waves: list[tuple[str, list[str]]] = field(default_factory=list)  # (name, selectors)


def check_schema_template(template: str, where: str) -> None:
    """``template`` must hold ``{id}`` and no other placeholder."""
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as err:
        raise UsageError(f"{where}: invalid schema template {template!r}: {err}") from None
    if fields != ["id"]:
        raise UsageError(f"{where}: schema template {template!r} must contain {{id}} once and no other placeholder "
                         "(e.g. tenant_{id})")


def tenant_schema(template: str, value: str) -> str:
    return template.format(id=value)


def _check_table(entry: Any, where: str, known: set[str]) -> None:
    """``entry`` is a TOML table whose keys are all in ``known``; else exit 2 naming ``where``."""
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a table")
    for key in entry:
        if key not in known:
            raise ConfigError(f"{where}: unknown key '{key}' (known: {', '.join(sorted(known))})")


def _expect(value: Any, kind: type, where: str) -> Any:
    if not isinstance(value, kind) or (kind is str and not value):
        raise ConfigError(f"{where}: expected a {'non-empty string' if kind is str else kind.__name__}, got {value!r}")
    return value


def load_fleet_file(path: Path, default_url: str | None, env: Mapping[str, str] | None = None) -> FleetFile:
    """Parse a fleet file (TOML); raises ConfigError naming the file and the key."""
    env = os.environ if env is None else env
    if not os.path.lexists(path):
        raise ConfigError(f"fleet file not found: {path}")
    data = read_toml(path)
    for key in data:
        if key not in _TOP_KEYS:
            raise ConfigError(f"{path}: unknown key '{key}' (known: {', '.join(sorted(_TOP_KEYS))})")
    fleet_url = _expect(data["database"], str, f"{path}: database") if "database" in data else default_url
    template = data.get("schema_template")
    if template is not None:
        check_schema_template(_expect(template, str, f"{path}: schema_template"), f"{path}: schema_template")
    targets = data.get("targets", {})
    if not isinstance(targets, dict):
        raise ConfigError(f"{path}: targets: expected tables [targets.NAME]")
    fleet = FleetFile(path)
    for name, entry in targets.items():
        where = f"{path}: [targets.{name}]"
        _check_table(entry, where, _TARGET_KEYS)
        if "url" in entry and "url_env" in entry:
            raise ConfigError(f"{where}: give url or url_env, not both")
        if "url_env" in entry:
            variable = _expect(entry["url_env"], str, f"{where} url_env")
            if not env.get(variable):
                raise ConfigError(f"{where}: url_env: environment variable {variable} is not set")
            url = env[variable]
        elif "url" in entry:
            url = _expect(entry["url"], str, f"{where} url")
        elif fleet_url:
            url = fleet_url
        else:
            raise ConfigError(f"{where}: no url (give url, url_env, a top-level database, or --database)")
        schema = entry.get("schema")
        if schema is not None:
            _expect(schema, str, f"{where} schema")
        elif template is not None:
            schema = tenant_schema(template, name)
        tags = entry.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
            raise ConfigError(f"{where} tags: expected a list of strings")
        if "group" in entry:
            tags = [*tags, _expect(entry["group"], str, f"{where} group")]
        fleet.targets.append(Target(name, url, schema, tuple(tags)))
    waves = data.get("waves", [])
    if not isinstance(waves, list):
        raise ConfigError(f"{path}: waves: expected [[waves]] tables")
    known = {t.name for t in fleet.targets} | {f"tag:{tag}" for t in fleet.targets for tag in t.tags}
    for index, wave in enumerate(waves, 1):
        where = f"{path}: [[waves]] #{index}"
        _check_table(wave, where, _WAVE_KEYS)
        select = wave.get("select")
        if not isinstance(select, list) or not select or not all(isinstance(s, str) for s in select):
            raise ConfigError(f"{where}: select: expected a list of target names, tag:NAME or *")
        unknown = [s for s in select if s != "*" and s not in known]
        if unknown:
            raise ConfigError(f"{where}: select: no target or tag matches {unknown[0]!r}")
        fleet.waves.append((str(wave.get("name") or f"wave {index}"), list(select)))
    return fleet


def _matches(target: Target, selector: str) -> bool:
    if selector == "*":
        return True
    if selector.startswith("tag:"):
        return selector[4:] in target.tags
    return target.name == selector


def file_waves(fleet: FleetFile, targets: list[Target]) -> list[Wave]:
    """``targets`` split by the fleet file's waves: each in the first wave selecting it, the
    others in a last wave ``rest``."""
    if not fleet.waves:
        return [Wave("all", targets)]
    remaining = list(targets)
    out = []
    for name, selectors in fleet.waves:
        chosen = [t for t in remaining if any(_matches(t, s) for s in selectors)]
        chosen_names = {t.name for t in chosen}
        remaining = [t for t in remaining if t.name not in chosen_names]
        out.append(Wave(name, chosen))
    if remaining:
        out.append(Wave("rest", remaining))
    return out


def _value_target(value: str, name: str | None, default_url: str | None, template: str | None,
                  where: str) -> Target:
    """A target from one value: a URL, or (with a database) a schema name or a tenant id."""
    value = value.strip()
    if "://" in value:
        if template is not None:
            raise UsageError(f"{where}: got a URL while --schema-template expects tenant ids")
        return Target(name or _url_name(value), value)
    if not default_url:
        raise UsageError(f"{where}: {value!r} is no URL, and no --database to hold schema {value!r}")
    schema = tenant_schema(template, value) if template is not None else value
    return Target(name or schema, default_url, schema)


def _url_name(url: str) -> str:
    """A stable, password-free name for a URL target: the redacted URL without its scheme."""
    return redact_url(url).split("://", 1)[1]


def query_targets(catalog_url: str, query: str, template: str | None) -> Iterator[Target]:
    """Targets from one query on the catalog database (read-only, a server-side WITH HOLD cursor).

    Each row is ``value`` or ``name, value``: a value is a database URL, a schema name, or a tenant
    id for ``--schema-template``; schemas live in the catalog database."""
    import psycopg

    address = parse_url(catalog_url)
    if address.dialect != "postgresql":  # the catalog query is read through psycopg
        raise UsageError(f"--targets-sql: the catalog database must be PostgreSQL, got {address.redacted}")
    try:
        conn = psycopg.connect(**address.connect_args, autocommit=True)
    except psycopg.Error as err:
        raise DatabaseUnreachable(f"--targets-sql: cannot connect to {address.redacted}: {one_line(err)}") from None
    with conn:
        try:
            # Read-only, and no transaction left open while the fleet runs (an open snapshot would
            # make a tenant's CREATE INDEX CONCURRENTLY wait for the run itself): a WITH HOLD
            # cursor is filled in its own transaction, then read in batches outside any.
            conn.execute("SET default_transaction_read_only = on")
            with conn.cursor(name="migrate_fleet_targets", withhold=True) as cursor:
                cursor.itersize = 500
                cursor.execute(query)
                for n, row in enumerate(cursor, 1):
                    if not row or len(row) > 2 or any(v is None for v in row):
                        raise UsageError(f"--targets-sql: row {n}: expected one column (URL, schema or id) "
                                         f"or two (name, value), got {len(row)} column(s) or a NULL")
                    name, value = (None, str(row[0])) if len(row) == 1 else (str(row[0]), str(row[1]))
                    yield _value_target(value, name, catalog_url, template, f"--targets-sql: row {n}")
        except psycopg.Error as err:
            raise UsageError(f"--targets-sql: {one_line(err)}") from None


def command_targets(command: str, default_url: str | None, template: str | None) -> Iterator[Target]:
    """Targets printed by ``command`` (no shell: use ``sh -c '...'`` for pipes), one per line:
    ``value`` or ``name value``; blank lines and lines starting with ``#`` are ignored."""
    try:
        argv = shlex.split(command)
    except ValueError as err:
        raise UsageError(f"--targets-cmd: cannot parse {command!r}: {err}") from None
    if not argv:
        raise UsageError("--targets-cmd: empty command")
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    except OSError as err:
        raise UsageError(f"--targets-cmd: cannot run {argv[0]}: {err.strerror}") from None
    assert proc.stdout is not None
    try:
        for n, line in enumerate(proc.stdout, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            parts = text.split()
            if len(parts) > 2:
                raise UsageError(f"--targets-cmd: line {n}: expected 'value' or 'name value', got {len(parts)} words")
            name, value = (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])
            yield _value_target(value, name, default_url, template, f"--targets-cmd: line {n}")
    finally:
        proc.stdout.close()
        code = proc.wait()
    if code != 0:
        raise UsageError(f"--targets-cmd: {argv[0]} exited with status {code}")


def select_tags(targets: Iterable[Target], tags: tuple[str, ...]) -> Iterator[Target]:
    """Only targets carrying one of ``tags`` (all when no tags)."""
    for target in targets:
        if not tags or any(tag in target.tags for tag in tags):
            yield target


def unique(targets: Iterable[Target]) -> Iterator[Target]:
    """Refuse two targets of the same name (they would share a shard and a result line)."""
    seen: set[str] = set()
    for target in targets:
        if target.name in seen:
            raise UsageError(f"target {target.name!r} is listed twice")
        seen.add(target.name)
        yield target
