"""Database URLs: parsed once, into the one record every connection is made from.

Accepted: ``postgresql://``, ``postgres://``, ``postgresql+psycopg://`` (and yoyo's spellings)
and ``sqlite:///relative.db`` / ``sqlite:////absolute.db``. For PostgreSQL the URL is turned
into ``psycopg.connect`` keyword arguments as libpq reads a URL (user, password, host, port and
database percent-decoded; query parameters passed on); yoyo's own ``schema=`` argument is kept
apart as the search_path migrations run with.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from runner.errors import ConfigError
from runner.secrets import redact_url

_PG_SCHEMES = {"postgresql", "postgres", "postgresql+psycopg", "psql", "postgresql+psycopg3"}
_DEFAULT_ARGS = {"connect_timeout": "10", "application_name": "migrate"}


@dataclass(frozen=True)
class DatabaseURL:
    """A parsed database URL.

    ``connect_args``: PostgreSQL keyword arguments for ``psycopg.connect`` (without yoyo's
    ``schema``); ``search_path``: the URL's ``schema=`` value (a search_path, as yoyo reads it);
    ``sqlite_path``: the SQLite file. ``redacted`` is the URL with any password hidden, the only
    form ever shown.
    """

    dialect: str  # "postgresql" | "sqlite"
    redacted: str
    connect_args: dict[str, Any] = field(default_factory=dict, repr=False)
    search_path: str | None = None
    sqlite_path: str | None = None

    @property
    def application_name(self) -> str:
        return str(self.connect_args.get("application_name", ""))


@functools.cache
def _known_parameters() -> frozenset[str]:
    """The connection parameters the installed libpq knows (an unknown one would fail at connect,
    where it would read as "database unreachable")."""
    from psycopg import pq

    return frozenset(o.keyword.decode() for o in pq.Conninfo.get_defaults())


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***`` (see :mod:`runner.secrets`)."""
    return redact_url(url)


def parse_url(url: str) -> DatabaseURL:
    """Validate ``url`` and parse it; raises ConfigError naming what is wrong (password redacted)."""
    shown = redact(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        # Not the parser's own text: it can quote part of the password.
        raise ConfigError(
            f"malformed database URL {shown}: cannot parse host and port "
            "(percent-encode special characters in the password: / ? # @ :)"
        ) from None
    scheme = parts.scheme.lower()
    if scheme in _PG_SCHEMES:
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        if not parts.hostname and "host" not in query:
            raise ConfigError(f"malformed database URL {shown}: no host (expected postgresql://user@host:5432/dbname)")
        unknown = sorted(set(query) - _known_parameters() - {"schema"})
        if unknown:
            raise ConfigError(f"database URL {shown}: unknown parameter '{unknown[0]}' (libpq does not know it; "
                              "see https://www.postgresql.org/docs/current/libpq-connect.html#LIBPQ-PARAMKEYWORDS)")
        args: dict[str, Any] = dict(_DEFAULT_ARGS)
        args.update(query)
        search_path = args.pop("schema", None)
        if search_path and "%" in search_path:
            # Its first schema holds the runner's tables, named in queries next to %s parameters.
            raise ConfigError(f"database URL {shown}: schema={search_path}: a '%' in it is not supported")
        args["dbname"] = unquote(parts.path[1:]) or args.get("dbname") or None
        if parts.username is not None:
            args["user"] = unquote(parts.username)
        if parts.password is not None:
            args["password"] = unquote(parts.password)
        if port is not None:
            args["port"] = port
        if parts.hostname is not None:
            args["host"] = unquote(parts.hostname)
        return DatabaseURL("postgresql", shown, args, search_path=search_path or None)
    if scheme == "sqlite":
        path = parts.path
        if parts.netloc or not path or path == "/":
            raise ConfigError(
                f"malformed database URL {shown}: expected sqlite:///relative/path.db or sqlite:////absolute/path.db"
            )
        if parts.query or parts.fragment:
            extra = f"?{parts.query}" if parts.query else f"#{parts.fragment}"
            raise ConfigError(f"malformed database URL {shown}: a SQLite URL takes no parameters ({extra});"
                              " the runner opens the file read-write")
        return DatabaseURL("sqlite", shown, sqlite_path=path[1:])
    if not scheme:
        raise ConfigError(f"malformed database URL {shown}: no scheme (expected postgresql://... or sqlite:///...)")
    raise ConfigError(f"unsupported database URL scheme '{scheme}' in {shown} (supported: postgresql, sqlite)")
