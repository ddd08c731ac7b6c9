"""Connections: the one place that knows how to reach each database.

A :class:`Database` is the DB-API connection the runner opens (as yoyo's
backends would open it), with what the runner needs: the dialect, the schema of
the runner's own tables, the session settings, one-line errors with the password
redacted, and a yoyo backend around the same connection, made when first used.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

from runner.errors import DatabaseUnreachable
from runner.urls import DatabaseURL, parse_url, redact

__all__ = ["Database", "connect", "transaction", "redact", "one_line", "is_connection_error", "table_exists",
           "ScriptFailed", "run_script", "server_message"]

MIGRATION_TABLE = "_yoyo_migration"


@dataclass
class Database:
    """An open connection (autocommit DB-API connection, psycopg 3 or sqlite3).

    ``backend`` is a yoyo backend around that same connection, made on first use: yoyo's
    transaction and savepoint bookkeeping, its parameter style and its internal tables. A
    command that needs none of them (a no-op ``up``, ``status``) never imports yoyo.
    """

    connection: Any
    dialect: str
    schema: str | None
    address: DatabaseURL
    # Session settings the runner relies on; re-applied after every session reset.
    session_sql: str | None = None
    _backend: Any = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """The URL, redacted."""
        return self.address.redacted

    @property
    def backend(self) -> Any:
        if self._backend is None:
            self._backend = _adopt(self)
        return self._backend

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> Any:
        """Execute one statement; ``params`` in yoyo's ``:name`` style. Returns the cursor."""
        if params is None:
            return self.connection.execute(sql)
        return self.backend.execute(sql, params)

    def qualify(self, table: str) -> str:
        """``table`` quoted and qualified with the runner's schema (if any)."""
        quoted = _quote(table)
        return f"{_quote(self.schema)}.{quoted}" if self.schema else quoted

    def close(self) -> None:
        try:
            self.connection.close()
        except Exception:  # noqa: BLE001 - closing a dead connection is not an error
            pass

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _quote(identifier: str) -> str:
    """An identifier in double quotes (yoyo's ``quote_identifier``: both dialects quote alike)."""
    if "\x00" in identifier:
        raise ValueError("identifier contains a NUL character")
    return '"' + identifier.replace('"', '""') + '"'


def _adopt(db: Database) -> Any:
    """A yoyo backend that uses ``db``'s connection instead of opening its own."""
    from yoyo.connections import parse_uri

    if db.dialect == "postgresql":
        from yoyo.backends.core.postgresql import PostgresqlPsycopgBackend as backend_class
    else:
        from yoyo.backends.core.sqlite3 import SQLiteBackend as backend_class

    class Adopted(backend_class):  # type: ignore[misc, valid-type]
        def connect(self, dburi: Any) -> Any:
            # No ``schema`` set here: yoyo would re-run its unquoted SET search_path after each
            # rollback; the URL's search_path is in the session settings (``session_sql``) instead.
            return db.connection

        def copy(self) -> Any:  # yoyo's contract: an independent connection
            return backend_class(self.uri, self.migration_table)

    return Adopted(parse_uri(db.address.yoyo_url), MIGRATION_TABLE)


def one_line(err: BaseException, url: str | None = None) -> str:
    """The first meaningful line of a driver error, with any password removed."""
    text = " ".join(line.strip() for line in str(err).strip().splitlines() if line.strip())
    if url:
        text = text.replace(url, redact(url))
    return redact(text) if "://" in text else text


def server_message(err: BaseException) -> str:
    """A server error as one line: its message, detail and hint, without the ``LINE n:`` excerpt
    (which counts lines of the query as sent, not of the migration file)."""
    diag = getattr(err, "diag", None)
    primary = getattr(diag, "message_primary", None)
    if not primary:
        return one_line(err)
    parts = [primary] + [f"{label}{text}" for label, text in (("", getattr(diag, "message_detail", None)),
                                                             ("hint: ", getattr(diag, "message_hint", None))) if text]
    return one_line(Exception("; ".join(parts)))


def is_connection_error(err: BaseException) -> bool:
    """True when ``err`` means the connection to the server is gone."""
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return False
    if isinstance(err, psycopg.OperationalError):
        conn_closed = getattr(err, "sqlstate", None) in (None, "57P01", "57P02", "57P03", "08000", "08003", "08006")
        return conn_closed
    return isinstance(err, psycopg.InterfaceError)


def connect(url: str | DatabaseURL) -> Database:
    """Open a connection; raises DatabaseUnreachable (exit 5) with a redacted message."""
    parsed = url if isinstance(url, DatabaseURL) else parse_url(url)
    if parsed.dialect == "postgresql":
        import psycopg

        errors: tuple[type[BaseException], ...] = (psycopg.Error,)
    else:
        import sqlite3

        errors = (sqlite3.Error,)
    try:
        if parsed.dialect == "postgresql":
            db = _connect_postgresql(parsed)
        else:
            # As yoyo's SQLite backend connects: one shared cache, declared types converted.
            connection = sqlite3.connect(f"file:{parsed.sqlite_path}?cache=shared", uri=True,
                                         detect_types=sqlite3.PARSE_DECLTYPES)
            connection.isolation_level = None
            connection.execute("PRAGMA busy_timeout = 30000")
            db = Database(connection=connection, dialect="sqlite", schema=None, address=parsed)
    except errors as err:
        raise DatabaseUnreachable(f"cannot connect to {parsed.redacted}: {one_line(err, url if isinstance(url, str) else None)}") from None
    return db


def _connect_postgresql(parsed: DatabaseURL) -> Database:
    import psycopg

    kwargs: dict[str, Any] = parsed.connect_args()
    search_path = kwargs.pop("schema", None)  # yoyo's URL argument for the search_path
    connection = psycopg.connect(**kwargs, autocommit=True)
    try:
        session = []
        if connection.info.server_version >= 140000:
            # A runner killed mid-statement: without this the server keeps running
            # the statement (holding the advisory lock) until it next talks to the client.
            session.append("SET client_connection_check_interval = 1000")
        if search_path:  # the URL's schema= argument: a search_path value, as yoyo takes it
            from psycopg import sql

            session.append(sql.SQL("SELECT set_config('search_path', {}, false)").format(
                sql.Literal(search_path)).as_string(connection))
        session_sql = ";".join(session) or None
        if session_sql:
            connection.execute(session_sql)
        schema = connection.execute("SELECT current_schema()").fetchone()[0]
    except BaseException:
        connection.close()
        raise
    if schema is None:
        connection.close()
        raise DatabaseUnreachable(f"cannot use {parsed.redacted}: search_path names no existing schema")
    return Database(connection=connection, dialect="postgresql", schema=schema, address=parsed,
                    session_sql=session_sql)


def table_exists(connection: Any, dialect: str, schema: str | None, name: str) -> bool:
    """Whether table ``name`` exists (in ``schema`` on PostgreSQL), on a raw DB-API connection."""
    if dialect == "postgresql":
        from psycopg import sql

        qualified = sql.Identifier(schema, name) if schema else sql.Identifier(name)
        row = connection.execute("SELECT to_regclass(%s)", (qualified.as_string(connection),)).fetchone()
        return row[0] is not None
    row = connection.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone()
    return row is not None


class ScriptFailed(Exception):
    """A statement of :func:`run_script` failed: ``index`` is its position in the list (or None
    when it cannot be told), ``error`` the driver's exception."""

    def __init__(self, error: BaseException, index: int | None) -> None:
        super().__init__(str(error))
        self.error = error
        self.index = index


@functools.cache
def _counting_cursor() -> type:
    """A psycopg cursor that remembers which result of a multi-statement query was the error."""
    from psycopg import Cursor
    from psycopg.pq import ExecStatus

    class CountingCursor(Cursor):  # type: ignore[type-arg]
        failed_at: int | None = None

        def _check_results(self, results: list[Any]) -> None:  # psycopg checks all results of a query here
            try:
                super()._check_results(results)
            except Exception:
                self.failed_at = next((n for n, r in enumerate(results) if r.status == ExecStatus.FATAL_ERROR), None)
                raise

    return CountingCursor


def run_script(connection: Any, statements: list[str]) -> None:
    """PostgreSQL: send ``statements`` as ONE simple-protocol query (one round trip).

    Each element must be exactly one statement. The server parses the whole text first (a syntax
    error anywhere runs nothing), then runs the statements in order and stops at the first error;
    :class:`ScriptFailed` then names the statement, from the error's position in the text when the
    server reports one, else from the number of statements that had succeeded.
    """
    starts: list[int] = []
    length = 0
    for text in statements:
        starts.append(length)
        length += len(text) + 2  # "\n;" between statements: a trailing -- comment cannot swallow the next one
    cursor = _counting_cursor()(connection)
    try:
        cursor.execute("\n;".join(statements))
    except Exception as err:  # noqa: BLE001 - re-raised with the statement that failed
        position = getattr(getattr(err, "diag", None), "statement_position", None)
        if position:
            index = max(n for n, start in enumerate(starts) if start < int(position))
        else:
            index = cursor.failed_at
        raise ScriptFailed(err, index) from err
    finally:
        cursor.close()


@contextmanager
def transaction(db: Database) -> Iterator[None]:
    """BEGIN ... COMMIT; ROLLBACK when the block raises (nested: a savepoint)."""
    with db.backend.transaction():
        yield
