"""Settings: command-line flag > environment > config file > default.

The config file is ``--config FILE`` (or ``MIGRATE_CONFIG``); without one,
``migrate.toml`` in the working directory, else the ``[tool.migrate]`` table of
``pyproject.toml``. Unknown keys are an error naming the key and the file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from runner.durations import parse_duration, parse_lock_timeout
from runner.errors import ConfigError
from runner.pooler import SETTINGS as pooler_settings
from runner.urls import parse_url

DEFAULT_DATABASE = "sqlite:///migrate.db"

ENV = {
    "database": "DATABASE_URL",
    "migrations": "MIGRATE_MIGRATIONS",
    "lock_timeout": "MIGRATE_LOCK_TIMEOUT",
    "lock_wait": "MIGRATE_LOCK_WAIT",
    "log_format": "MIGRATE_LOG_FORMAT",
    "format": "MIGRATE_FORMAT",
    "schema": "MIGRATE_SCHEMA",
    "pooler": "MIGRATE_POOLER",
    "lock_lease": "MIGRATE_LOCK_LEASE",
}
CONFIG_ENV = "MIGRATE_CONFIG"

_TOP_KEYS = {
    "database", "migrations", "schema", "lock_timeout", "lock_wait", "lock_retries",
    "format", "log_format", "compat", "renames", "lint", "environments", "pooler", "lock_lease",
}
_COMPAT_KEYS = {"enabled", "default_window", "max_window", "schema_template", "sqlite_view_template", "mode"}
COMPAT_MODES = ("declared", "auto")
_RENAME_KEYS = {"migration", "table", "old", "new", "window", "until", "expose"}
_RENAME_REQUIRED = ("migration", "table", "old", "new")
_LINT_KEYS = {"disable"}
_FORMATS = ("text", "json")
_LOG_FORMATS = ("auto", "console", "json")
_POOLERS = pooler_settings
MAX_VALUE_LENGTH = 4096  # longer than any URL or path a user types; a pasted file is a mistake
MAX_LOCK_RETRIES = 1000


@dataclass
class CompatSettings:
    enabled: bool = True
    default_window: str = "14d"
    # The longest compatibility window a declaration (window=, until=) or `shims extend` may ask for.
    max_window: str = "365d"
    # {version} is the label of the last migration before the rename ("017").
    schema_template: str = "compat_{version}"
    # SQLite has no schemas: a shim is a view named after this template.
    sqlite_view_template: str = "{table}__v{version}"
    # "declared": windows only for changes declared with -- compat: directives; "auto": for every
    # shape change of an existing table a transactional migration makes (compat.shapes).
    mode: str = "declared"


@dataclass
class Settings:
    database: str = DEFAULT_DATABASE
    migrations: Path = Path("migrations")
    # PostgreSQL: the schema the runner keeps its tables in (None: the URL's schema=, else public).
    schema: str | None = None
    config_path: Path | None = None
    lock_timeout: timedelta = timedelta(seconds=5)
    lock_retries: int = 5
    lock_wait: timedelta = timedelta(minutes=5)
    # A connection pooler in front of PostgreSQL (runner.pooler): auto, none, session, transaction;
    # and the lease the runner's lock becomes through one (runner.lease).
    pooler: str = "auto"
    lock_lease: timedelta = timedelta(seconds=30)
    format: str = "text"
    log_format: str = "auto"
    compat: CompatSettings = field(default_factory=CompatSettings)
    renames: list[dict[str, Any]] = field(default_factory=list)
    lint_disable: list[str] = field(default_factory=list)
    environments: dict[str, str] = field(default_factory=dict)
    # Where each setting given explicitly came from ("--migrations", "DATABASE_URL (environment)", ...).
    sources: dict[str, str] = field(default_factory=dict)


def find_config(explicit: str | None, env: Mapping[str, str], cwd: Path) -> tuple[Path | None, dict[str, Any]]:
    """Return the config file used and its migrate table ({} when none)."""
    path_text = explicit or env.get(CONFIG_ENV)
    if path_text:
        source = "--config" if explicit else f"{CONFIG_ENV} (environment)"
        path = (cwd / path_text) if not os.path.isabs(path_text) else Path(path_text)
        if not _is_file(path):
            raise ConfigError(f"{source}: config file not found: {path_text}")
        data = read_toml(path)
        if path.name == "pyproject.toml":
            return path, data.get("tool", {}).get("migrate", {})
        return path, data
    candidate = cwd / "migrate.toml"
    if _is_file(candidate):
        return candidate, read_toml(candidate)
    candidate = cwd / "pyproject.toml"
    if _is_file(candidate):
        table = read_toml(candidate).get("tool", {}).get("migrate")
        if table is not None:
            return candidate, table
    return None, {}


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except PermissionError:
        raise ConfigError(f"cannot look for a config file at {path}: permission denied"
                          " (run from a directory this user can read, or pass --config)") from None


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file as a dict; ConfigError naming the file when it cannot be read or parsed."""
    import tomllib  # only when there is a file to read

    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: invalid TOML: {err}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: invalid TOML: not UTF-8 (byte 0x{err.object[err.start]:02x}"
                          f" at offset {err.start})") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from None


def load_settings(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Settings:
    """Build Settings from flags (None = not given), environment and config.

    A value that is empty, whitespace only, too long, holds a control character or does not parse is
    an error naming its source (``--database``, ``DATABASE_URL (environment)``, ``FILE: database``) and
    the setting: an empty ``DATABASE_URL`` (an unset CI secret) must not quietly mean the default.
    """
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    env = os.environ if env is None else env
    cwd = cwd or Path.cwd()
    explicit_config = flags.pop("config", None)
    if explicit_config is not None:
        check_text(explicit_config, "config", "--config")
    elif CONFIG_ENV in env:
        check_text(env[CONFIG_ENV], "config", f"{CONFIG_ENV} (environment)")
    path, table = find_config(explicit_config, env, cwd)
    where = str(path) if path else "config"
    _check_keys(table, _TOP_KEYS, where)

    def pick(key: str) -> tuple[Any, str]:
        if key in flags:
            return flags[key], f"--{key.replace('_', '-')}"
        if key in ENV and ENV[key] in env:
            return env[ENV[key]], f"{ENV[key]} (environment)"
        if key in table:
            return table[key], f"{where}: {key}"
        return None, key

    settings = Settings(config_path=path)
    value, source = pick("database")
    if value is not None:
        settings.database = check_database_url(value, source)
        settings.sources["database"] = source
    value, source = pick("schema")
    if value is not None:
        settings.schema = check_text(value, "schema", source, max_length=63)
        if settings.schema.lower().startswith("pg_") or settings.schema == "information_schema":
            raise ConfigError(f"{source}: schema {settings.schema}: a system schema of PostgreSQL"
                              " (pg_*, information_schema) cannot hold the runner's tables")
        if "%" in settings.schema:
            # The runner's queries carry its schema's name next to their %s parameters.
            raise ConfigError(f"{source}: schema {settings.schema}: a '%' in the runner's schema name is not supported")
        settings.sources["schema"] = source
    value, source = pick("migrations")
    if value is not None:
        folder = Path(check_text(value, "migrations", source))
        if source.startswith(where) and path is not None and not folder.is_absolute():
            folder = path.parent / folder
        settings.migrations = folder
        settings.sources["migrations"] = source
    if not settings.migrations.is_absolute():
        settings.migrations = cwd / settings.migrations
    for key, parse in (("lock_timeout", parse_lock_timeout), ("lock_wait", parse_duration),
                       ("lock_lease", parse_duration)):
        value, source = pick(key)
        if value is not None:
            if isinstance(value, str):
                check_text(value, key, source, max_length=40)
            try:
                setattr(settings, key, parse(value, source))
            except ValueError as err:
                raise ConfigError(str(err)) from None
            if key == "lock_lease" and settings.lock_lease < timedelta(seconds=1):
                raise ConfigError(f"{source}: the lease must be at least 1s, got {value!r}")
            settings.sources[key] = source
    value, source = pick("lock_retries")
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_LOCK_RETRIES:
            raise ConfigError(f"{source}: expected a whole number from 0 to {MAX_LOCK_RETRIES}, got {value!r}")
        settings.lock_retries = value
    for key, allowed in (("format", _FORMATS), ("log_format", _LOG_FORMATS), ("pooler", _POOLERS)):
        value, source = pick(key)
        if value is not None:
            if value not in allowed:
                shown = value[:40] if isinstance(value, str) else value
                raise ConfigError(f"{source}: expected one of {', '.join(allowed)}, got {shown!r}")
            setattr(settings, key, value)

    compat = table.get("compat", {})
    _check_table(compat, "compat", where)
    _check_keys(compat, _COMPAT_KEYS, f"{where}: [compat]")
    for key, value in compat.items():
        expected = bool if key == "enabled" else str
        if not isinstance(value, expected):
            raise ConfigError(f"{where}: [compat] {key}: expected {expected.__name__}, got {value!r}")
        if expected is str:
            check_text(value, key, f"{where}: [compat] {key}")
        setattr(settings.compat, key, value)
    if compat.get("mode", "declared") not in COMPAT_MODES:
        raise ConfigError(f"{where}: [compat] mode: expected one of {', '.join(COMPAT_MODES)}, got {compat['mode']!r}")
    for key, fields in (("schema_template", {"version"}), ("sqlite_view_template", {"table", "version"})):
        if key in compat:
            _check_template(compat[key], fields, f"{where}: [compat] {key}", required=fields)
    try:
        maximum = parse_duration(settings.compat.max_window, f"{where}: [compat] max_window")
        parse_duration(settings.compat.default_window, f"{where}: [compat] default_window", maximum)
    except ValueError as err:
        raise ConfigError(str(err)) from None

    renames = table.get("renames", [])
    if not isinstance(renames, list):
        raise ConfigError(f"{where}: renames: expected [[renames]] tables")
    for index, entry in enumerate(renames, 1):
        label = f"{where}: [[renames]] #{index}"
        _check_table(entry, f"[[renames]] #{index}", where)
        _check_keys(entry, _RENAME_KEYS, label)
        for key in _RENAME_REQUIRED:
            if not isinstance(entry.get(key), str) or not entry[key].strip():
                raise ConfigError(f"{label}: '{key}' is required (a non-empty string)")
        for key, value in entry.items():
            if isinstance(value, str):
                check_text(value, key, label)
    settings.renames = [dict(entry) for entry in renames]

    lint = table.get("lint", {})
    _check_table(lint, "lint", where)
    _check_keys(lint, _LINT_KEYS, f"{where}: [lint]")
    disable = lint.get("disable", [])
    if not isinstance(disable, list) or not all(isinstance(x, str) for x in disable):
        raise ConfigError(f"{where}: [lint] disable: expected a list of rule names")
    settings.lint_disable = list(disable)

    environments = table.get("environments", {})
    _check_table(environments, "environments", where)
    for name, url in environments.items():
        if not isinstance(url, str):
            raise ConfigError(f"{where}: [environments] {name}: expected a database URL string")
        check_database_url(url, f"{where}: [environments] {name}")
    settings.environments = dict(environments)
    return settings


def check_text(value: Any, setting: str, source: str, max_length: int = MAX_VALUE_LENGTH) -> str:
    """``value`` if it is a usable setting value: a string, not empty or blank, not longer than
    ``max_length``, without control characters (NUL, newline, escape ...). Else ConfigError naming
    ``source`` (where the value came from) and ``setting``."""
    if not isinstance(value, str):
        named = source if source.endswith(setting) else f"{source}: {setting}"  # "migrate.toml: database"
        raise ConfigError(f"{named}: expected a string, got {value!r}")
    if not value.strip():
        hint = " (an unset CI secret?)" if source.endswith("(environment)") else ""
        raise ConfigError(f"{source}: {setting} is {'empty' if not value else 'blank'}{hint}; "
                          "give a value or leave the setting out")
    if len(value) > max_length:
        raise ConfigError(f"{source}: {setting} is too long ({len(value)} characters; at most {max_length})")
    bad = next((c for c in value if ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        raise ConfigError(f"{source}: {setting} contains a control character (U+{ord(bad):04X}) "
                          f"at position {value.index(bad) + 1}")
    if value != value.strip():
        raise ConfigError(f"{source}: {setting} has leading or trailing spaces")
    return value


def check_database_url(value: Any, source: str) -> str:
    """A database URL that parses (:func:`runner.urls.parse_url`); errors name ``source``."""
    check_text(value, "database", source)
    try:
        parse_url(value)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    return value


def _check_template(template: str, fields: set[str], where: str, required: set[str] = frozenset()) -> None:
    """Only ``{name}`` placeholders from ``fields``, each of ``required`` at least once: no positional,
    attribute or format fields (a template without ``{version}`` would give every version's shims
    one schema)."""
    import string

    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise ConfigError(f"{where}: invalid template {template!r}: {err}") from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in fields or spec or conversion:
            allowed = ", ".join("{" + f + "}" for f in sorted(fields))
            raise ConfigError(f"{where}: invalid placeholder {{{name}}} in {template!r} (allowed: {allowed})")
    missing = sorted(required - {name for _, name, _, _ in parsed if name})
    if missing:
        raise ConfigError(f"{where}: {template!r} lacks the placeholder {{{missing[0]}}}")


def _check_keys(table: Mapping[str, Any], known: set[str], where: str) -> None:
    for key in table:
        if key not in known:
            raise ConfigError(f"{where}: unknown key '{key}' (known: {', '.join(sorted(known))})")


def _check_table(value: Any, name: str, where: str) -> None:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: {name}: expected a table")
