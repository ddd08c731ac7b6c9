"""SQLite (the standard library's sqlite3): a file, no schemas, no roles, no server clock.

The runner's lock is an exclusive ``flock`` on ``<database>.lock``, released by the kernel when
the process dies. Connections are opened as yoyo's SQLite backend opens them (shared cache,
declared types converted, autocommit); a command that only reads never creates the file.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from runner.db import Database, one_line
from runner.dialects import Activity, Blocker, LockHolder
from runner.errors import ConfigError, DatabaseUnreachable
from runner.identity import host, os_user
from runner.urls import DatabaseURL


class SQLite:
    name = "sqlite"
    for_update = ""  # one writer at a time: the whole database is locked
    lints = False  # whether `migrate lint` (PostgreSQL's grammar) applies
    one_query = False
    errors: tuple[type[BaseException], ...] = (sqlite3.Error,)
    types = {"timestamp": "TEXT", "json": "TEXT", "serial_key": "INTEGER PRIMARY KEY AUTOINCREMENT",
             "now_default": "DEFAULT CURRENT_TIMESTAMP", "json_param": "%s"}

    # -- connection ---------------------------------------------------------------------
    def connect(self, address: DatabaseURL, *, schema: str | None, read_only: bool, pooler: str = "auto") -> Database:
        path = address.sqlite_path or ""
        if read_only and not os.path.exists(path):
            raise DatabaseUnreachable(f"{address.redacted}: no database file {path} (a read-only command does not "
                                      "create it; `migrate up` does)")
        connection = sqlite3.connect(f"file:{path}?cache=shared", uri=True, detect_types=sqlite3.PARSE_DECLTYPES)
        connection.isolation_level = None
        connection.execute("PRAGMA busy_timeout = 30000")
        try:
            connection.execute("PRAGMA schema_version").fetchone()  # reads the header: is it a database?
        except sqlite3.DatabaseError as err:
            if getattr(err, "sqlite_errorname", "") != "SQLITE_NOTADB":
                raise  # e.g. locked: the caller's usual handling
            connection.close()
            raise ConfigError(f"{address.redacted}: {path} is not a SQLite database ({err})") from None
        return Database(connection=connection, dialect=self, schema=None, address=address, read_only=read_only)

    def ensure_schema(self, db: Database) -> None:
        """SQLite has no schemas: nothing to create."""

    def placeholders(self, sql: Any) -> Any:
        return sql.replace("%s", "?")

    def transaction_settings(self, db: Database) -> list[str]:
        """Nothing: the session's settings hold (no pooler)."""
        return []

    def literal(self, db: Database, value: Any) -> str:
        if value is None:
            return "NULL"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        return "'" + str(value).replace("'", "''") + "'"

    def now(self, db: Database) -> datetime:
        return datetime.now(timezone.utc)  # the database is a local file: the client's clock is its clock

    def ts_in(self, value: datetime | None) -> Any:
        return value.astimezone(timezone.utc).isoformat() if value is not None else None

    def ts_out(self, value: Any) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)

    def json_out(self, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value

    def db_user(self, db: Database) -> str | None:
        return None

    def actor(self, db: Database) -> tuple[str, str]:
        return os_user(), f"pid {os.getpid()}@{host()}"

    def table_exists(self, db: Database, name: str) -> bool:
        return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = %s", (name,)).fetchone() is not None

    def plain_table_exists(self, db: Database, name: str) -> bool:
        return self.table_exists(db, name)

    def read_untrusted(self, db: Database, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return db.execute(sql, params).fetchall()

    # -- a migration's transaction (SQLite has no session state to set or reset) -----------
    def migration_start(self, db: Database, lock_timeout: timedelta, flush: bool, local: bool = True) -> list[str]:
        return []

    def migration_search_path(self, db: Database, local: bool) -> list[str]:
        return []

    def migration_end(self, db: Database) -> list[str]:
        return []

    def session_reset(self, db: Database) -> list[str]:
        return []

    def batch_reset(self, db: Database) -> list[str]:
        raise NotImplementedError("no multi-migration transactions on SQLite")

    migration_duration_sql = "0"  # SQLite migrations are timed by the runner

    def migration_started(self) -> str:
        raise NotImplementedError("no multi-migration transactions on SQLite")

    def clock(self, db: Database) -> tuple[str, str]:
        now = datetime.now(timezone.utc)
        return self.literal(db, now.isoformat()), self.literal(db, now.replace(tzinfo=None).isoformat(" "))

    def combine(self, statements: list[str]) -> list[str]:
        return statements

    def execute_all(self, db: Database, statements: list[str]) -> None:
        for statement in statements:
            db.connection.execute(statement)

    def run_script(self, db: Database, statements: list[str]) -> None:
        raise NotImplementedError("SQLite migrations run statement by statement")

    # -- errors ----------------------------------------------------------------------
    def is_connection_error(self, err: BaseException) -> bool:
        return False

    def is_lock_timeout(self, err: BaseException) -> bool:
        return False

    def server_message(self, err: BaseException) -> str:
        return one_line(err)

    # -- the runner's lock: flock on <database>.lock --------------------------------------
    @staticmethod
    def lock_path(db: Database) -> str:
        return f"{db.address.sqlite_path}.lock"

    def try_lock(self, db: Database) -> bool:
        import fcntl

        fd = os.open(self.lock_path(db), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        db.facts["lock_fd"] = fd
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return True

    def unlock(self, db: Database) -> None:
        fd = db.facts.pop("lock_fd", None)
        if fd is not None:
            os.close(fd)  # closing releases the flock

    def lock_holder(self, db: Database) -> LockHolder | None:
        import fcntl

        path = self.lock_path(db)
        if not os.path.exists(path):
            return None
        fd = os.open(path, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return LockHolder(os.pread(fd, 32, 0).decode(errors="replace").strip() or "?", lock_file=path)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def blockers(self, db: Database) -> list[Blocker]:
        return []

    def session_id(self, db: Database) -> int | None:
        return None  # no server session to look at: a heartbeat says only how long it has run

    def activity(self, db: Database, session: int) -> Activity | None:
        return None

    # -- readiness (migrate wait) --------------------------------------------------------
    def not_ready(self, db: Database) -> str | None:
        """A file that opens can be migrated."""
        return None

    # -- throwaway databases (the pytest plugin) ---------------------------------------------
    def create_scratch(self, server_url: str, name: str, directory: str) -> str:
        """A new database file ``name`` in ``directory`` (created by the first command that writes)."""
        return f"sqlite:///{os.path.join(os.path.abspath(directory), name + '.db')}"

    def drop_scratch(self, server_url: str, url: str) -> None:
        path = url[len("sqlite:///"):]
        for leftover in (path, path + ".lock", path + "-wal", path + "-shm", path + "-journal"):
            if os.path.exists(leftover):
                os.remove(leftover)

    # -- catalog -----------------------------------------------------------------------
    def is_fresh(self, db: Database, own_tables: Sequence[str]) -> bool:
        return False  # no batches on SQLite: it has no one-query path

    def others_connected(self, db: Database) -> bool:
        return True

    def has_event_triggers(self, db: Database) -> bool:
        return False

    def server_version(self, db: Database) -> int | None:
        return None

    def catalog_columns(self, db: Database, schema: str | None) -> list[tuple[str, str, str, str, bool, int]]:
        rows = db.execute(
            "SELECT m.name, m.type, p.name, p.type, p.\"notnull\", p.cid "
            "FROM sqlite_master m JOIN pragma_table_info(m.name) p "
            "WHERE m.type IN ('table', 'view') ORDER BY m.name, p.cid").fetchall()
        return [(rel, kind, col, (typ or "").lower(), bool(notnull), cid + 1) for rel, kind, col, typ, notnull, cid in rows]

    def catalog_indexes(self, db: Database, schema: str | None) -> list[tuple[str, str, str]]:
        rows = db.execute("SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'index' ORDER BY name").fetchall()
        return [(name, table, definition or f"(implicit index on {table})") for name, table, definition in rows]

    def relation_columns(self, db: Database, schemas: Sequence[str]) -> dict[tuple[str, str], list[str]]:
        out: dict[tuple[str, str], list[str]] = {}
        for rel, col in db.execute(
            "SELECT m.name, p.name FROM sqlite_master m JOIN pragma_table_info(m.name) p "
            "WHERE m.type IN ('table', 'view') ORDER BY m.name, p.cid"
        ).fetchall():
            out.setdefault(("main", rel), []).append(col)
        return out

    def table_columns(self, db: Database, table: str) -> list[str] | None:
        rows = db.execute("SELECT name FROM pragma_table_info(%s)", (table,)).fetchall()
        return [r[0] for r in rows] or None


DIALECT = SQLite()
