"""Database URLs: accept what users paste, map it to yoyo's schemes, redact passwords."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from runner.errors import ConfigError

_PG_SCHEMES = {"postgresql", "postgres", "postgresql+psycopg", "psql", "postgresql+psycopg3"}
_DEFAULT_ARGS = {"connect_timeout": "10", "application_name": "migrate"}


@dataclass(frozen=True)
class DatabaseURL:
    """A parsed database URL. ``yoyo_url`` is what yoyo's backends understand."""

    dialect: str  # "postgresql" | "sqlite"
    yoyo_url: str
    redacted: str
    sqlite_path: str | None = None

    def connect_args(self) -> dict[str, Any]:
        """PostgreSQL: the keyword arguments for ``psycopg.connect``, as yoyo's backend builds them
        (query arguments, then user, password, port and host from the URL), percent-decoded as
        libpq decodes a URL."""
        parts = urlsplit(self.yoyo_url)
        args: dict[str, Any] = {"dbname": unquote(parts.path[1:]) or None, **dict(parse_qsl(parts.query))}
        if parts.username is not None:
            args["user"] = unquote(parts.username)
        if parts.password is not None:
            args["password"] = unquote(parts.password)
        if parts.port is not None:
            args["port"] = parts.port
        if parts.hostname is not None:
            args["host"] = parts.hostname
        return args


def redact(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        password = None
        parts = None
    if parts is not None and password is not None:
        netloc = parts.netloc
        userinfo, _, hostinfo = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        return urlunsplit((parts.scheme, f"{user}:***@{hostinfo}", parts.path, _redact_query(parts.query), parts.fragment))
    # Unparseable (a password with "/", "?" or "#" not percent-encoded, or no scheme at all):
    # strip anything between "user:" and the last "@", and password= parameters.
    if "://" in url:
        url = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)
    else:
        url = re.sub(r"^([^:/@\s]*:)[^@\s]*@", r"\1***@", url)
    return re.sub(r"(password=)[^&\s]*", r"\1***", url, flags=re.I)


def _redact_query(query: str) -> str:
    return re.sub(r"(password=)[^&]*", r"\1***", query, flags=re.I)


def parse_url(url: str) -> DatabaseURL:
    """Validate ``url`` and normalise it; raises ConfigError naming what is wrong."""
    shown = redact(url)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        # Not the parser's own text: it can quote part of the password.
        raise ConfigError(
            f"malformed database URL {shown}: cannot parse host and port "
            "(percent-encode special characters in the password: / ? # @ :)"
        ) from None
    scheme = parts.scheme.lower()
    if scheme in _PG_SCHEMES:
        if not parts.hostname and "host=" not in parts.query:
            raise ConfigError(f"malformed database URL {shown}: no host (expected postgresql://user@host:5432/dbname)")
        args = dict(_DEFAULT_ARGS)
        args.update(parse_qsl(parts.query))
        yoyo = urlunsplit(("postgresql+psycopg", parts.netloc, parts.path, urlencode(args), ""))
        return DatabaseURL("postgresql", yoyo, shown)
    if scheme == "sqlite":
        path = parts.path
        if parts.netloc or not path or path == "/":
            raise ConfigError(
                f"malformed database URL {shown}: expected sqlite:///relative/path.db or sqlite:////absolute/path.db"
            )
        file_path = path[1:]
        return DatabaseURL("sqlite", f"sqlite:///{file_path}", shown, sqlite_path=file_path)
    if not scheme:
        raise ConfigError(f"malformed database URL {shown}: no scheme (expected postgresql://... or sqlite:///...)")
    raise ConfigError(f"unsupported database URL scheme '{scheme}' in {shown} (supported: postgresql, sqlite)")
