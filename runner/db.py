"""Connections: the one place that knows how to reach each database.

A :class:`Database` wraps a yoyo backend (which owns the DB-API connection and
its transaction/savepoint bookkeeping) and adds what the runner needs: the
dialect, the schema of the runner's own tables, and one-line errors with the
password redacted.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from runner.errors import DatabaseUnreachable
from runner.urls import DatabaseURL, parse_url, redact

__all__ = ["Database", "connect", "transaction", "redact", "one_line", "is_connection_error", "table_exists",
           "ScriptFailed", "run_script", "server_message"]

MIGRATION_TABLE = "_yoyo_migration"


@dataclass
class Database:
    """An open connection. ``backend`` is the yoyo backend that owns it."""

    backend: Any
    dialect: str
    schema: str | None
    url: str  # redacted
    # Session settings the runner relies on; re-applied after every session reset.
    session_sql: str | None = None

    @property
    def connection(self) -> Any:
        return self.backend.connection

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> Any:
        """Execute with yoyo's ``:name`` parameter style; returns the cursor."""
        return self.backend.execute(sql, params)

    def qualify(self, table: str) -> str:
        """``table`` quoted and qualified with the runner's schema (if any)."""
        quoted = self.backend.quote_identifier(table)
        if self.schema:
            return f"{self.backend.quote_identifier(self.schema)}.{quoted}"
        return quoted

    def close(self) -> None:
        try:
            self.connection.close()
        except Exception:  # noqa: BLE001 - closing a dead connection is not an error
            pass

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
    from yoyo.connections import parse_uri

    uri = parse_uri(parsed.yoyo_url)
    if parsed.dialect == "postgresql":
        import psycopg
        from yoyo.backends.core.postgresql import PostgresqlPsycopgBackend as backend_class

        errors: tuple[type[BaseException], ...] = (psycopg.Error,)
    else:
        import sqlite3
        from yoyo.backends.core.sqlite3 import SQLiteBackend as backend_class

        errors = (sqlite3.Error,)
    try:
        backend = backend_class(uri, MIGRATION_TABLE)
        schema = None
        session_sql = None
        if parsed.dialect == "postgresql":
            if backend.connection.info.server_version >= 140000:
                # A runner killed mid-statement: without this the server keeps running
                # the statement (holding the advisory lock) until it next talks to the client.
                session_sql = "SET client_connection_check_interval = 1000"
                backend.connection.execute(session_sql)
            schema = backend.connection.execute("SELECT current_schema()").fetchone()[0]
            if schema is None:
                raise DatabaseUnreachable(
                    f"cannot use {parsed.redacted}: search_path names no existing schema"
                )
        else:
            backend.connection.execute("PRAGMA busy_timeout = 30000")
    except errors as err:
        raise DatabaseUnreachable(f"cannot connect to {parsed.redacted}: {one_line(err, url if isinstance(url, str) else None)}") from None
    return Database(backend=backend, dialect=parsed.dialect, schema=schema, url=parsed.redacted,
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
