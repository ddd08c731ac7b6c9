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

from runner.durations import parse_duration
from runner.errors import ConfigError

DEFAULT_DATABASE = "sqlite:///migrate.db"

ENV = {
    "database": "DATABASE_URL",
    "migrations": "MIGRATE_MIGRATIONS",
    "lock_timeout": "MIGRATE_LOCK_TIMEOUT",
    "lock_wait": "MIGRATE_LOCK_WAIT",
    "log_format": "MIGRATE_LOG_FORMAT",
    "format": "MIGRATE_FORMAT",
    "schema": "MIGRATE_SCHEMA",
}
CONFIG_ENV = "MIGRATE_CONFIG"

_TOP_KEYS = {
    "database", "migrations", "schema", "lock_timeout", "lock_wait", "lock_retries",
    "format", "log_format", "compat", "renames", "lint", "environments",
}
_COMPAT_KEYS = {"enabled", "default_window", "schema_template", "sqlite_view_template", "mode"}
COMPAT_MODES = ("declared", "auto")
_RENAME_KEYS = {"migration", "table", "old", "new", "window", "until", "expose"}
_RENAME_REQUIRED = ("migration", "table", "old", "new")
_LINT_KEYS = {"disable"}
_FORMATS = ("text", "json")
_LOG_FORMATS = ("auto", "console", "json")


@dataclass
class CompatSettings:
    enabled: bool = True
    default_window: str = "14d"
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
    format: str = "text"
    log_format: str = "auto"
    compat: CompatSettings = field(default_factory=CompatSettings)
    renames: list[dict[str, Any]] = field(default_factory=list)
    lint_disable: list[str] = field(default_factory=list)
    environments: dict[str, str] = field(default_factory=dict)


def find_config(explicit: str | None, env: Mapping[str, str], cwd: Path) -> tuple[Path | None, dict[str, Any]]:
    """Return the config file used and its migrate table ({} when none)."""
    path_text = explicit or env.get(CONFIG_ENV)
    if path_text:
        path = (cwd / path_text) if not os.path.isabs(path_text) else Path(path_text)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path_text}")
        data = _read_toml(path)
        if path.name == "pyproject.toml":
            return path, data.get("tool", {}).get("migrate", {})
        return path, data
    candidate = cwd / "migrate.toml"
    if candidate.is_file():
        return candidate, _read_toml(candidate)
    candidate = cwd / "pyproject.toml"
    if candidate.is_file():
        table = _read_toml(candidate).get("tool", {}).get("migrate")
        if table is not None:
            return candidate, table
    return None, {}


def _read_toml(path: Path) -> dict[str, Any]:
    import tomllib  # only when there is a file to read

    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: invalid TOML: {err}") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from None


def load_settings(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Settings:
    """Build Settings from flags (None = not given), environment and config."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    env = os.environ if env is None else env
    cwd = cwd or Path.cwd()
    path, table = find_config(flags.pop("config", None), env, cwd)
    where = str(path) if path else "config"
    _check_keys(table, _TOP_KEYS, where)

    def pick(key: str) -> tuple[Any, str]:
        if key in flags:
            return flags[key], f"--{key.replace('_', '-')}"
        if key in ENV and env.get(ENV[key]):
            return env[ENV[key]], ENV[key]
        if key in table:
            return table[key], f"{where}: {key}"
        return None, key

    settings = Settings(config_path=path)
    value, _ = pick("database")
    if value is not None:
        settings.database = _string(value, "database", where)
    value, source = pick("schema")
    if value is not None:
        settings.schema = _string(value, "schema", source)
    value, source = pick("migrations")
    if value is not None:
        folder = Path(_string(value, "migrations", where))
        if source.startswith(where) and path is not None and not folder.is_absolute():
            folder = path.parent / folder
        settings.migrations = folder
    if not settings.migrations.is_absolute():
        settings.migrations = cwd / settings.migrations
    for key in ("lock_timeout", "lock_wait"):
        value, source = pick(key)
        if value is not None:
            try:
                setattr(settings, key, parse_duration(value, source))
            except ValueError as err:
                raise ConfigError(str(err)) from None
    value, source = pick("lock_retries")
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{source}: expected a whole number >= 0, got {value!r}")
        settings.lock_retries = value
    for key, allowed in (("format", _FORMATS), ("log_format", _LOG_FORMATS)):
        value, source = pick(key)
        if value is not None:
            if value not in allowed:
                raise ConfigError(f"{source}: expected one of {', '.join(allowed)}, got {value!r}")
            setattr(settings, key, value)

    compat = table.get("compat", {})
    _check_table(compat, "compat", where)
    _check_keys(compat, _COMPAT_KEYS, f"{where}: [compat]")
    for key, value in compat.items():
        expected = bool if key == "enabled" else str
        if not isinstance(value, expected):
            raise ConfigError(f"{where}: [compat] {key}: expected {expected.__name__}, got {value!r}")
        setattr(settings.compat, key, value)
    if compat.get("mode", "declared") not in COMPAT_MODES:
        raise ConfigError(f"{where}: [compat] mode: expected one of {', '.join(COMPAT_MODES)}, got {compat['mode']!r}")
    for key, fields in (("schema_template", {"version"}), ("sqlite_view_template", {"table", "version"})):
        if key in compat:
            _check_template(compat[key], fields, f"{where}: [compat] {key}")
    if "default_window" in compat:
        try:
            parse_duration(compat["default_window"], f"{where}: [compat] default_window")
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
            if not isinstance(entry.get(key), str) or not entry[key]:
                raise ConfigError(f"{label}: '{key}' is required (a non-empty string)")
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
    settings.environments = dict(environments)
    return settings


def _check_template(template: str, fields: set[str], where: str) -> None:
    """Only ``{name}`` placeholders from ``fields``: no positional, attribute or format fields."""
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


def _check_keys(table: Mapping[str, Any], known: set[str], where: str) -> None:
    for key in table:
        if key not in known:
            raise ConfigError(f"{where}: unknown key '{key}' (known: {', '.join(sorted(known))})")


def _check_table(value: Any, name: str, where: str) -> None:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: {name}: expected a table")


def _string(value: Any, key: str, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: {key}: expected a non-empty string, got {value!r}")
    return value
