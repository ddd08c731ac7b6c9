"""Connections: the one place a database is opened, and the record every command works on.

A :class:`Database` is the DB-API connection the runner opens (autocommit), with its
:class:`runner.dialects.Dialect` (everything that differs between PostgreSQL and SQLite lives
there), the schema the runner keeps its tables in, the search_path migrations run with, and the
runner's own transaction state. Nothing outside :mod:`runner.dialects` branches on the database
kind.

On PostgreSQL the runner's own statements run with ``search_path = pg_catalog, pg_temp``: no
function, operator or table of the runner's SQL resolves through a schema another role can
write. Through a transaction pooler no session setting holds: each of the runner's transactions
sets it (:func:`transaction`), and a statement sent outside them goes in a transaction of its own
(:meth:`Database.execute`). Migrations run with the search_path the user gave (the URL's
``schema=``, the ``schema`` setting, else the session's default), set for each migration's
transaction only.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from runner.dialects import for_url
from runner.errors import DatabaseUnreachable
from runner.secrets import redact_text
from runner.urls import DatabaseURL, parse_url, redact

if TYPE_CHECKING:
    from runner.config import Settings
    from runner.dialects import Dialect

__all__ = ["Database", "connect", "open_database", "transaction", "redact", "one_line", "quote_identifier"]


def quote_identifier(name: str) -> str:
    """``name`` as a double-quoted SQL identifier (standard SQL: PostgreSQL and SQLite alike)."""
    if "\x00" in name:
        raise ValueError("identifier contains a NUL character")
    return '"' + name.replace('"', '""') + '"'


def dollar_quote(body: str, tag: str) -> str:
    """``body`` as a dollar-quoted string (a DO block's), tagged ``$tag$`` or, where that occurs
    in ``body`` (a schema's name may hold a ``$``), ``$tagN$`` for the first N that does not."""
    n = 0
    while f"${tag}{n or ''}$" in body:
        n += 1
    quote = f"${tag}{n or ''}$"
    return f"{quote}{body}{quote}"


@dataclass
class Database:
    """An open connection and what the runner knows about it.

    ``schema``: where the runner keeps its tables (PostgreSQL; None on SQLite).
    ``migration_search_path``: the search_path a migration runs with (PostgreSQL; None: the
    session's default as the server set it at connect).
    ``session_sql``: the runner's session settings, re-applied after every session reset.
    """

    connection: Any
    dialect: Dialect
    schema: str | None
    address: DatabaseURL
    migration_search_path: str | None = None
    statement_timeout: str | None = None
    session_sql: list[str] = field(default_factory=list)
    read_only: bool = False
    in_transaction: bool = False
    # What the dialect learnt about this connection (server version, trusted roles, lock file...).
    facts: dict[str, Any] = field(default_factory=dict, repr=False)
    _savepoints: int = 0

    @property
    def url(self) -> str:
        """The URL, redacted."""
        return self.address.redacted

    def execute(self, sql: Any, params: Sequence[Any] | None = None) -> Any:
        """Execute one statement of the runner's own SQL (``%s`` placeholders); returns the cursor
        (its rows already fetched). Outside a transaction, when the session's settings do not hold
        (a transaction pooler: :meth:`Dialect.transaction_settings`), it runs in a transaction of
        its own that starts with them."""
        if self.in_transaction or not self.dialect.transaction_settings(self):
            return self._execute(sql, params)
        with transaction(self):
            return self._execute(sql, params)

    def _execute(self, sql: Any, params: Sequence[Any] | None) -> Any:
        if params is None:
            return self.connection.execute(sql)
        return self.connection.execute(self.dialect.placeholders(sql), tuple(params))

    def scalar(self, sql: Any, params: Sequence[Any] | None = None) -> Any:
        row = self.execute(sql, params).fetchone()
        return row[0] if row else None

    def qualify(self, table: str) -> str:
        """``table`` quoted and qualified with the runner's schema (if any)."""
        quoted = quote_identifier(table)
        return f"{quote_identifier(self.schema)}.{quoted}" if self.schema else quoted

    def table_exists(self, name: str) -> bool:
        """Whether the runner's table ``name`` exists (raises if another role made it: see the dialect)."""
        return self.dialect.table_exists(self, name)

    def now(self) -> datetime:
        """The database's clock (UTC), one clock for runners on many hosts."""
        return self.dialect.now(self)

    def close(self) -> None:
        try:
            self.connection.close()
        except Exception:  # noqa: BLE001 - closing a dead connection is not an error
            pass

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def one_line(err: BaseException, url: str | None = None) -> str:
    """The first meaningful line of a driver error, with any password removed."""
    text = " ".join(line.strip() for line in str(err).strip().splitlines() if line.strip())
    if url:
        text = text.replace(url, redact(url))
    return redact_text(text)


def connect(url: str | DatabaseURL, *, schema: str | None = None, read_only: bool = False,
            pooler: str = "auto") -> Database:
    """Open a connection; raises DatabaseUnreachable (exit 5) with a redacted message.

    ``schema``: the runner's schema (PostgreSQL; default: the URL's ``schema=``, else ``public``).
    ``read_only``: the command only reads (SQLite: a missing file is not created).
    ``pooler``: ``auto`` (detect a connection pooler), ``none``, ``session`` or ``transaction``
    (PostgreSQL; see :mod:`runner.pooler`).
    """
    parsed = url if isinstance(url, DatabaseURL) else parse_url(url)
    dialect = for_url(parsed)
    try:
        return dialect.connect(parsed, schema=schema, read_only=read_only, pooler=pooler)
    except dialect.errors as err:
        raise DatabaseUnreachable(
            f"cannot connect to {parsed.redacted}: {one_line(err, url if isinstance(url, str) else None)}") from None


def open_database(settings: Settings, *, read_only: bool = False) -> Database:
    """Connect to the configured database, with the configured schema for the runner's tables."""
    db = connect(settings.database, schema=settings.schema, read_only=read_only, pooler=settings.pooler)
    db.facts["lock_lease"] = settings.lock_lease
    return db


@contextmanager
def transaction(db: Database) -> Iterator[None]:
    """BEGIN ... COMMIT; ROLLBACK when the block raises. Nested: a savepoint. The transaction
    starts with :meth:`Dialect.transaction_settings` (through a transaction pooler: the runner's
    search_path, which no session setting carries there)."""
    if db.in_transaction:
        db._savepoints += 1
        name = f"migrate_sp_{db._savepoints}"
        db.connection.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            rollback_quietly(db, f"ROLLBACK TO SAVEPOINT {name}")
            raise
        db.connection.execute(f"RELEASE SAVEPOINT {name}")
        return
    db.connection.execute("; ".join(["BEGIN", *db.dialect.transaction_settings(db)]))
    db.in_transaction = True
    try:
        yield
    except BaseException:
        rollback_quietly(db)
        raise
    try:
        db.connection.execute("COMMIT")
    finally:
        db.in_transaction = False


def rollback_quietly(db: Database, statement: str = "ROLLBACK") -> None:
    """Roll back what a failure left open (the connection may be gone: then there is nothing to do)."""
    try:
        db.connection.execute(statement)
    except Exception:  # noqa: BLE001 - the first error is the one to report
        pass
    if statement == "ROLLBACK":
        db.in_transaction = False
