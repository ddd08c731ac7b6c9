"""PostgreSQL (psycopg 3): connection and session, one-query scripts, locks, catalog reads.

Trust: the runner's session runs with ``search_path = pg_catalog, pg_temp`` (set at connect and
after every session reset), so the runner's own SQL resolves no function, operator or table
through a schema another role can write (the CVE-2018-1058 class). Migrations get the user's
search_path for their own transaction only (:meth:`PostgreSQL.migration_search_path`); every
statement the runner sends inside a migration's transaction (the restore after the migration's
statements) names ``pg_catalog`` explicitly. A table of the runner (history, log, snapshots,
shim registry) is used only when a trusted role owns it: the runner's role, a role it is a
member of, or a superuser.
"""

from __future__ import annotations

import functools
import re
import zlib
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from runner import lease, pooler as poolers
from runner.db import Database, one_line, quote_identifier, transaction
from runner.dialects import Activity, Blocker, LockHolder, ScriptFailed
from runner.errors import DatabaseUnreachable, UntrustedObject
from runner.logs import get_logger
from runner.pooler import DIRECT
from runner.urls import DatabaseURL, parse_url

log = get_logger("migrate.postgresql")
LOCK_CLASS = 0x6D677274  # "mgrt": first key of the runner's two-int advisory lock
LOCK_NOT_AVAILABLE = "55P03"
SAFE_SEARCH_PATH = "pg_catalog, pg_temp"
# How long a dead peer keeps a session (and its advisory lock): the server drops the runner's
# session within idle + interval * count seconds of silence, or TCP_USER_TIMEOUT_MS of unacknowledged data.
TCP_KEEPALIVES = {"tcp_keepalives_idle": 10, "tcp_keepalives_interval": 5, "tcp_keepalives_count": 3,
                  "tcp_user_timeout": 30000}
# The same on the runner's side of the socket (libpq connection parameters), unless the URL sets them.
CLIENT_KEEPALIVES = {"keepalives": "1", "keepalives_idle": "10", "keepalives_interval": "5",
                     "keepalives_count": "3", "tcp_user_timeout": "30000"}


def split_search_path(value: str) -> list[str]:
    """The schema names of a search_path value as PostgreSQL prints it (``"$user", public``)."""
    names, current, quoted, i = [], [], False, 0
    while i < len(value):
        ch = value[i]
        if quoted:
            if ch == '"' and value[i + 1:i + 2] == '"':
                current.append('"')
                i += 1
            elif ch == '"':
                quoted = False
            else:
                current.append(ch)
        elif ch == '"':
            quoted = True
        elif ch == ",":
            names.append("".join(current).strip())
            current = []
        else:
            current.append(ch if quoted else ch.lower() if "A" <= ch <= "Z" else ch)
        i += 1
    tail = "".join(current).strip()
    if tail or names:
        names.append(tail)
    return [n for n in names if n]


def schema_lock_key(schema: str | None) -> tuple[int, int]:
    """The runner's advisory lock key (classid, objid) for the runner's schema ``schema``: one lock
    per schema, so tenants' schemas in one database migrate in parallel (`migrate fleet`)."""
    return LOCK_CLASS, zlib.crc32((schema or "").encode()) & 0x7FFFFFFF


# A string literal needs libpq's escaping only when it holds one of these.
_NEEDS_ESCAPE = re.compile(r"['\\\x00]")


class PostgreSQL:
    name = "postgresql"
    for_update = " FOR UPDATE"
    lints = True  # whether `migrate lint` (PostgreSQL's grammar) applies
    one_query = True
    types = {"timestamp": "timestamptz", "json": "jsonb", "serial_key": "bigserial PRIMARY KEY",
             "now_default": "DEFAULT pg_catalog.now()", "json_param": "%s::jsonb"}

    @functools.cached_property
    def errors(self) -> tuple[type[BaseException], ...]:  # type: ignore[override]
        import psycopg

        return (psycopg.Error,)

    # -- connection ---------------------------------------------------------------------
    def connect(self, address: DatabaseURL, *, schema: str | None, read_only: bool, pooler: str = "auto") -> Database:
        import psycopg

        kwargs = dict(CLIENT_KEEPALIVES)
        kwargs.update(address.connect_args)
        connection = psycopg.connect(**kwargs, autocommit=True)
        try:
            # The session reset runs DEALLOCATE ALL after every migration, so psycopg's automatic
            # server-side prepared statements would only be prepared and deallocated again.
            connection.prepare_threshold = None
            default_path, statement_timeout, version, server_pid = connection.execute(
                "SELECT pg_catalog.current_setting('search_path'), pg_catalog.current_setting('statement_timeout'), "
                "pg_catalog.current_setting('server_version_num')::pg_catalog.int4, "
                "pg_catalog.pg_backend_pid()").fetchone()
            found = poolers.detect(pooler, connection.info.backend_pid, server_pid, address.connect_args)
            session = [] if found.per_transaction else self._session_settings(version)
            if session:
                connection.execute("; ".join(session))
        except BaseException:
            connection.close()
            raise
        runner_schema = schema or (split_search_path(address.search_path or "")[:1] or ["public"])[0]
        if address.search_path:
            migration_path = address.search_path
        elif schema:
            migration_path = quote_identifier(schema)
        else:
            migration_path = default_path
        db = Database(connection=connection, dialect=self, schema=runner_schema, address=address,
                      migration_search_path=migration_path, statement_timeout=statement_timeout,
                      session_sql=session, read_only=read_only)
        db.facts["server_version"] = version
        db.facts["pooler"] = found
        return db

    @staticmethod
    def _session_settings(version: int) -> list[str]:
        """The runner's session: its safe search_path, and a dead client noticed (not through a
        transaction pooler, where a session SET would land on another client's server connection)."""
        session = [f"SET search_path TO {SAFE_SEARCH_PATH}"]
        if version >= 140000:
            # A runner killed mid-statement: without this the server keeps running the
            # statement (holding the advisory lock) until it next talks to the client.
            session.append("SET client_connection_check_interval = 1000")
        session.extend(f"SET {name} = {value}" for name, value in TCP_KEEPALIVES.items())
        return session

    @staticmethod
    def pooler(db: Database) -> Any:
        """The connection pooler in front of the server (:class:`runner.pooler.Pooler`)."""
        return db.facts.get("pooler", DIRECT)

    def _schema_exists(self, db: Database, schema: str) -> bool:
        return db.execute("SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = %s", (schema,)).fetchone() is not None

    def ensure_schema(self, db: Database) -> None:
        """Create the runner's schema if it does not exist (before creating the runner's tables)."""
        if db.schema and not self._schema_exists(db, db.schema):
            try:
                db.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_identifier(db.schema)}")
            except self.errors as err:
                raise DatabaseUnreachable(f"cannot create the runner's schema {db.schema}: {one_line(err)}") from None

    def placeholders(self, sql: Any) -> Any:
        return sql

    def transaction_settings(self, db: Database) -> list[str]:
        """What starts each of the runner's own transactions. Through a transaction pooler each
        transaction may land on another server connection, which carries the server's default
        search_path (``"$user", public``), not the runner's session setting: the runner's
        search_path is then set for the transaction, so that no operator or function planted in a
        schema another role can write resolves as the runner (issue 10 item 1)."""
        if not self.pooler(db).per_transaction:
            return []
        return [f"SET LOCAL search_path TO {SAFE_SEARCH_PATH}"]

    def literal(self, db: Database, value: Any) -> str:
        if value is None:
            return "NULL"
        if isinstance(value, str) and not _NEEDS_ESCAPE.search(value):
            # What libpq's escaping would return: only a quote and a backslash are escaped (and a
            # NUL refused), whatever standard_conforming_strings says. A fifth of a fresh
            # database's `migrate up` went here (five values per migration's bookkeeping).
            return f"'{value}'"
        from psycopg.sql import Literal

        return Literal(value).as_string(db.connection)

    def now(self, db: Database) -> datetime:
        return db.scalar("SELECT pg_catalog.now()").astimezone(timezone.utc)

    def ts_in(self, value: datetime | None) -> Any:
        return value

    def ts_out(self, value: Any) -> datetime | None:
        return value.astimezone(timezone.utc) if value is not None else None

    def json_out(self, value: Any) -> Any:
        return value

    def db_user(self, db: Database) -> str | None:
        return db.connection.info.user

    def actor(self, db: Database) -> tuple[str, str]:
        user, app, addr = db.execute(
            "SELECT current_user, pg_catalog.current_setting('application_name', true), "
            "pg_catalog.host(pg_catalog.inet_client_addr())").fetchone()
        return user, f"{app or 'unknown-app'}@{addr or 'local-socket'}"

    # -- trust -----------------------------------------------------------------------
    def trusted_roles(self, db: Database) -> frozenset[int]:
        """Roles whose objects the runner uses: its own role, the roles it is a member of
        (through pg_auth_members, not through superuser rights), and superusers."""
        cached = db.facts.get("trusted_roles")
        if cached is None:
            rows = db.execute(
                "WITH RECURSIVE m(id) AS (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user "
                "UNION SELECT a.roleid FROM pg_catalog.pg_auth_members a JOIN m ON a.member = m.id) "
                "SELECT id FROM m UNION SELECT oid FROM pg_catalog.pg_roles WHERE rolsuper").fetchall()
            cached = frozenset(r[0] for r in rows)
            db.facts["trusted_roles"] = cached
        return cached

    def table_exists(self, db: Database, name: str) -> bool:
        row = db.execute(
            "SELECT c.relkind, c.relowner, pg_catalog.pg_get_userbyid(c.relowner) FROM pg_catalog.pg_class c "
            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
            (db.schema, name)).fetchone()
        if row is None:
            return False
        kind, owner, owner_name = row
        if kind not in ("r", "p"):
            raise UntrustedObject(f"{db.schema}.{name} is not a table (relkind {kind!r}): the runner keeps its "
                                  "records in tables it creates itself; remove that object")
        if owner not in self.trusted_roles(db):
            raise UntrustedObject(
                f"{db.schema}.{name} is owned by role {owner_name}, which the runner does not trust (not its own "
                f"role {self.db_user(db)}, a role it belongs to, or a superuser): it did not create it; check "
                "who did, then drop it or change its owner")
        return True

    def plain_table_exists(self, db: Database, name: str) -> bool:
        """Whether ``name`` is a table (not a view) in the runner's schema, whoever owns it."""
        kind = db.scalar("SELECT c.relkind FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
                         "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s", (db.schema, name))
        return kind in ("r", "p")

    def read_untrusted(self, db: Database, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of a query on a table another role may own (another tool's history): with row
        security off, no policy of that role's runs as the runner (a table that needs one raises)."""
        with transaction(db):
            db.execute("SET LOCAL row_security = off")
            return db.execute(sql, params).fetchall()

    # -- a migration's transaction -------------------------------------------------------
    def migration_start(self, db: Database, lock_timeout: timedelta, flush: bool, local: bool = True) -> list[str]:
        """SET LOCALs right after BEGIN (``local=False``: session settings, for a migration run
        outside a transaction; the session reset after it undoes them)."""
        if not local and self.pooler(db).per_transaction:
            # Each statement outside a transaction may land on another server connection: a
            # session SET would be lost for the next statement and leak to another client.
            log.warning("through a transaction pooler a statement outside a transaction runs with the server "
                        "connection's own settings: no lock_timeout or search_path of the runner applies to it")
            return []
        statements = [lock_timeout_sql(lock_timeout, local=local)]
        if not flush:
            statements.append("SET LOCAL synchronous_commit = off")
        if local and self.pooler(db).per_transaction:
            # The server connection carries whatever its last client left: the runner's own
            # session settings, for this transaction.
            statements.append(f"SET LOCAL search_path TO {SAFE_SEARCH_PATH}")
            if self.server_version(db) >= 140000:
                statements.append("SET LOCAL client_connection_check_interval = 1000")
        held = db.facts.get("lease")
        if local and held is not None:
            statements.append(held.guard_sql())
        return statements

    def migration_search_path(self, db: Database, local: bool) -> list[str]:
        """The user's search_path, for the migration's statements only."""
        if not local and self.pooler(db).per_transaction:
            return []  # see migration_start
        key = f"migration_search_path_{local}"  # the same for every migration of the connection
        if key not in db.facts:
            db.facts[key] = [f"SELECT pg_catalog.set_config('search_path', "
                             f"{self.literal(db, db.migration_search_path or '')}, {'true' if local else 'false'})"]
        return list(db.facts[key])

    def migration_end(self, db: Database) -> list[str]:
        """Right after the migration's statements: back to the runner's own role, search_path and
        statement_timeout for the bookkeeping (every name qualified: the user's search_path is
        still in force when this is parsed)."""
        if "migration_end" not in db.facts:  # the same for every migration of the connection
            db.facts["migration_end"] = [
                f"SELECT pg_catalog.set_config('role', 'none', true), "
                f"pg_catalog.set_config('search_path', {self.literal(db, SAFE_SEARCH_PATH)}, true), "
                f"pg_catalog.set_config('statement_timeout', {self.literal(db, db.statement_timeout or '0')}, true)"]
        return list(db.facts["migration_end"])

    def session_reset(self, db: Database) -> list[str]:
        """Session state a migration changed must not leak into the next one. Not DISCARD ALL: it
        would release the runner's advisory lock. RESET ALL also resets the runner's own session
        settings, which are re-applied."""
        return ["RESET ALL", "SET SESSION AUTHORIZATION DEFAULT", "DEALLOCATE ALL", "CLOSE ALL", "DISCARD TEMP",
                *db.session_sql]

    def batch_reset(self, db: Database) -> list[str]:
        """Between two migrations of one batch (runner.engine): only DISCARD TEMP. A batch holds
        only statements runner.statement_kinds calls effect free, and of session state those can
        leave only temporary objects behind: no SET, RESET, SET ROLE, SET SESSION AUTHORIZATION,
        PREPARE, DECLARE or LISTEN, and no code the server would run (which could call set_config):
        no function call or cast to a type not built in where a value is evaluated, nothing naming
        the tables the batch's bookkeeping writes. The runner's own SET LOCALs are the same for every migration of the batch
        and ``migration_end`` restores the role, search_path and statement_timeout after each."""
        return ["DISCARD TEMP"]

    # Milliseconds since the migration began: since ``migrate.started`` where the executor set it
    # (several migrations in one transaction), else since the transaction began.
    migration_duration_sql = (
        "(pg_catalog.date_part('epoch', pg_catalog.clock_timestamp() - coalesce(nullif("
        "pg_catalog.current_setting('migrate.started', true), '')::pg_catalog.timestamptz, pg_catalog.now())) "
        "OPERATOR(pg_catalog.*) 1000::pg_catalog.float8)::pg_catalog.int4")

    def migration_started(self) -> str:
        """Marks where the next migration of a multi-migration transaction starts (for its duration)."""
        return "SELECT pg_catalog.set_config('migrate.started', pg_catalog.clock_timestamp()::pg_catalog.text, true)"

    def clock(self, db: Database) -> tuple[str, str]:
        """SQL for now (timestamptz) and now in UTC without a zone (yoyo's columns): the server's clock."""
        return "pg_catalog.clock_timestamp()", "(pg_catalog.clock_timestamp() AT TIME ZONE 'UTC')"

    def combine(self, statements: list[str]) -> list[str]:
        """Statements that touch different rows, as ONE statement (all but the last as data-modifying CTEs)."""
        *first, last = statements
        if not first:
            return [last]
        return ["WITH " + ", ".join(f"w{n} AS ({sql})" for n, sql in enumerate(first)) + " " + last]

    def execute_all(self, db: Database, statements: list[str]) -> None:
        """Several statements in one round trip."""
        if statements:
            db.connection.execute(";\n".join(statements))

    def run_script(self, db: Database, statements: list[str]) -> None:
        """Send ``statements`` as ONE simple-protocol query (one round trip).

        Each element must be exactly one statement. The server parses the whole text first (a
        syntax error anywhere runs nothing), then runs the statements in order and stops at the
        first error; :class:`ScriptFailed` then names the statement, from the error's position in
        the text when the server reports one, else from the number of statements that succeeded.
        """
        starts: list[int] = []
        length = 0
        for text in statements:
            starts.append(length)
            length += len(text) + 2  # "\n;" between statements: a trailing -- comment cannot swallow the next one
        cursor = _counting_cursor()(db.connection)
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

    # -- errors ----------------------------------------------------------------------
    def is_connection_error(self, err: BaseException) -> bool:
        import psycopg

        if isinstance(err, psycopg.OperationalError):
            return getattr(err, "sqlstate", None) in (None, "57P01", "57P02", "57P03", "08000", "08003", "08006")
        return isinstance(err, psycopg.InterfaceError)

    def is_lock_timeout(self, err: BaseException) -> bool:
        return getattr(err, "sqlstate", None) == LOCK_NOT_AVAILABLE

    def server_message(self, err: BaseException) -> str:
        """A server error as one line: message, detail and hint, without the ``LINE n:`` excerpt
        (which counts lines of the query as sent, not of the migration file)."""
        diag = getattr(err, "diag", None)
        primary = getattr(diag, "message_primary", None)
        if not primary:
            return one_line(err)
        parts = [primary] + [f"{label}{text}" for label, text in (("", getattr(diag, "message_detail", None)),
                                                                 ("hint: ", getattr(diag, "message_hint", None)))
                             if text]
        return one_line(Exception("; ".join(parts)))

    # -- the runner's lock ---------------------------------------------------------------
    @staticmethod
    def lock_key(db: Database) -> tuple[int, int]:
        """Advisory lock key (classid, objid) for the runner's schema."""
        return schema_lock_key(db.schema)

    def try_lock(self, db: Database) -> bool:
        """The session advisory lock (a direct connection), else a lease (through a pooler: see
        :mod:`runner.lease`); each refuses while the other kind is held."""
        if self.pooler(db).pooled:
            held = db.facts.get("lease")
            if held is None:
                held = db.facts["lease"] = lease.Lease(db, self.lock_key(db), lease.lease_length(db))
            return held.try_acquire()
        if not db.scalar("SELECT pg_catalog.pg_try_advisory_lock(%s::pg_catalog.int4, %s::pg_catalog.int4)",
                         self.lock_key(db)):
            return False
        if lease.live_holder(db) is not None:
            self.unlock(db)
            return False
        return True

    def unlock(self, db: Database) -> None:
        held = db.facts.pop("lease", None)
        if held is not None:
            held.release()
            return
        db.execute("SELECT pg_catalog.pg_advisory_unlock(%s::pg_catalog.int4, %s::pg_catalog.int4)", self.lock_key(db))

    def lock_holder(self, db: Database) -> LockHolder | None:
        held = db.facts.get("lease")
        leased = lease.live_holder(db, held.token if held is not None else None)
        if leased is not None:
            return leased
        classid, objid = self.lock_key(db)
        row = db.execute(
            "SELECT a.pid, a.usename, a.application_name, pg_catalog.host(a.client_addr), a.backend_start, a.state, "
            "pg_catalog.now() - a.query_start, pg_catalog.left(a.query, 200) "
            "FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s::pg_catalog.oid "
            "AND l.objid = %s::pg_catalog.oid AND l.objsubid = 2 "
            "AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()) "
            "AND l.pid <> pg_catalog.pg_backend_pid()",
            (classid, objid)).fetchone()
        if row is None:
            return None
        return LockHolder(str(row[0]), row[1], row[2], row[3], row[4], row[5], row[6], row[7])

    def blockers(self, db: Database) -> list[Blocker]:
        """Other sessions holding locks on relations of this database (outside pg_catalog)."""
        rows = db.execute(
            "SELECT DISTINCT a.pid, a.application_name, a.state, a.query_start, a.xact_start, c.relname, l.mode "
            "FROM pg_catalog.pg_locks l "
            "JOIN pg_catalog.pg_class c ON c.oid = l.relation "
            "JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.granted AND l.pid <> pg_catalog.pg_backend_pid() AND l.locktype = 'relation' "
            "AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()) "
            "AND c.relnamespace <> 'pg_catalog'::pg_catalog.regnamespace ORDER BY a.pid").fetchall()
        return [Blocker(r[0], r[1], r[2], r[3].isoformat() if r[3] else None, r[4].isoformat() if r[4] else None,
                        r[5], r[6]) for r in rows]

    # -- the heartbeat -----------------------------------------------------------------
    def session_id(self, db: Database) -> int | None:
        """The runner's backend pid (known to the driver: no query while a migration runs)."""
        return int(db.connection.info.backend_pid)

    def activity(self, db: Database, session: int) -> Activity | None:
        """What backend ``session`` waits on, read on ``db`` (another connection, with the
        runner's search_path): None when no such backend is visible (e.g. through a pooler,
        where the driver's pid is the pooler's)."""
        row = db.execute(
            "SELECT a.state, pg_catalog.date_part('epoch', pg_catalog.clock_timestamp() - a.query_start)"
            "::pg_catalog.float8, a.wait_event_type, a.wait_event, pg_catalog.pg_blocking_pids(a.pid), "
            "(SELECT pg_catalog.format('pid %%s, application_name=%%L, state %%s, query %%L', b.pid, "
            "b.application_name, b.state, pg_catalog.left(b.query, 80)) "
            " FROM pg_catalog.pg_stat_activity b WHERE b.pid = (pg_catalog.pg_blocking_pids(a.pid))[1]) "
            "FROM pg_catalog.pg_stat_activity a WHERE a.pid = %s::pg_catalog.int4", (session,)).fetchone()
        if row is None:
            return None
        return Activity(row[0], round(row[1], 1) if row[1] is not None else None, row[2], row[3],
                        tuple(int(p) for p in row[4] or ()), row[5])

    # -- readiness (migrate wait) --------------------------------------------------------
    def not_ready(self, db: Database) -> str | None:
        """Why a server that accepts connections cannot be migrated yet (None: it can): a standby,
        or a server still replaying WAL, accepts no writes; a failover may promote it."""
        if db.scalar("SELECT pg_catalog.pg_is_in_recovery()"):
            return "the server is in recovery (a read-only standby): it cannot be migrated until it is promoted"
        return None

    # -- throwaway databases (the pytest plugin) ---------------------------------------------
    def create_scratch(self, server_url: str, name: str, directory: str) -> str:
        """Create the empty database ``name`` on the server of ``server_url``; its URL (same user,
        password and parameters). ``directory`` is unused (SQLite keeps its files there)."""
        from urllib.parse import quote, urlsplit, urlunsplit

        import psycopg
        from psycopg import sql

        with psycopg.connect(**parse_url(server_url).connect_args, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        parts = urlsplit(server_url)
        return urlunsplit((parts.scheme, parts.netloc, "/" + quote(name), parts.query, ""))

    def drop_scratch(self, server_url: str, url: str) -> None:
        """Drop a database made by :meth:`create_scratch` (sessions still connected are ended)."""
        from urllib.parse import unquote, urlsplit

        import psycopg
        from psycopg import sql

        name = unquote(urlsplit(url).path[1:])
        with psycopg.connect(**parse_url(server_url).connect_args, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    # -- catalog -----------------------------------------------------------------------
    def is_fresh(self, db: Database, own_tables: Sequence[str]) -> bool:
        """No table, view or sequence in any schema but the runner's own tables, no event trigger,
        and no other client connected: nothing there for another session to be using."""
        return not db.scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
            "ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') "
            "AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_' "
            "AND NOT (n.nspname = %s AND c.relname = ANY(%s::pg_catalog.text[]))) "
            "OR EXISTS (SELECT 1 FROM pg_catalog.pg_event_trigger) OR %s",
            (db.schema, list(own_tables), self.others_connected(db)))

    def others_connected(self, db: Database) -> bool:
        """Whether another client session is connected to this database (through a pooler: always
        assumed, its clients are not visible as backends of their own)."""
        if self.pooler(db).pooled:
            return True
        # The runner's own heartbeat connection (runner.heartbeat) is no other client.
        companions = sorted(db.facts.get("companion_sessions", ()))
        return bool(db.scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity WHERE datname = pg_catalog.current_database() "
            "AND pid <> pg_catalog.pg_backend_pid() AND backend_type = 'client backend' "
            "AND pid <> ALL(%s::pg_catalog.int4[]))", (companions,)))

    def has_event_triggers(self, db: Database) -> bool:
        """Whether an event trigger exists (it runs its function on DDL: no batches then)."""
        return bool(db.scalar("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_event_trigger)"))

    def server_version(self, db: Database) -> int:
        return int(db.facts["server_version"])

    def catalog_columns(self, db: Database, schema: str) -> list[tuple[str, str, str, str, bool, int]]:
        """(relation, kind, column, type, not null, position) of the tables and views in ``schema``.

        Type names of the schema's own types are printed unqualified (as a search_path holding the
        schema would print them), so a snapshot does not depend on the session's search_path."""
        rows = db.execute(
            "SELECT c.relname, c.relkind, a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull, "
            "a.attnum FROM pg_catalog.pg_class c "
            "JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
            "WHERE c.relnamespace = (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = %s) "
            "AND c.relkind IN ('r', 'p', 'v', 'm', 'f') ORDER BY c.relname, a.attnum", (schema,)).fetchall()
        prefixes = (quote_identifier(schema) + ".", schema + ".")
        kinds = {"r": "table", "p": "partitioned table", "f": "foreign table", "v": "view", "m": "materialized view"}
        out = []
        for relname, relkind, attname, typ, notnull, attnum in rows:
            for prefix in prefixes:
                if typ.startswith(prefix):
                    typ = typ[len(prefix):]
                    break
            out.append((relname, kinds[relkind], attname, typ, notnull, attnum))
        return out

    def catalog_indexes(self, db: Database, schema: str) -> list[tuple[str, str, str]]:
        """(index, table, definition) of the indexes in ``schema``."""
        return db.execute(
            "SELECT i.relname, t.relname, pg_catalog.pg_get_indexdef(i.oid) FROM pg_catalog.pg_index x "
            "JOIN pg_catalog.pg_class i ON i.oid = x.indexrelid JOIN pg_catalog.pg_class t ON t.oid = x.indrelid "
            "WHERE t.relnamespace = (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = %s) ORDER BY i.relname",
            (schema,)).fetchall()

    def relation_columns(self, db: Database, schemas: Sequence[str]) -> dict[tuple[str, str], list[str]]:
        """Column names of every table and view in ``schemas``, by (schema, relation)."""
        rows = db.execute(
            "SELECT n.nspname, c.relname, a.attname FROM pg_catalog.pg_class c "
            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
            "WHERE n.nspname = ANY(%s::pg_catalog.text[]) AND c.relkind IN ('r', 'p', 'v', 'm', 'f') "
            "ORDER BY n.nspname, c.relname, a.attnum", (list(schemas),)).fetchall()
        out: dict[tuple[str, str], list[str]] = {}
        for nsp, rel, col in rows:
            out.setdefault((nsp, rel), []).append(col)
        return out

    def table_columns(self, db: Database, table: str) -> list[str] | None:
        """Column names of ``table`` in the runner's schema, None when it does not exist."""
        rows = db.execute(
            "SELECT a.attname FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid "
            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s "
            "AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            (db.schema, table)).fetchall()
        return [r[0] for r in rows] or None


def lock_timeout_sql(timeout: timedelta, local: bool) -> str:
    """``SET [LOCAL] lock_timeout`` in milliseconds."""
    ms = max(1, int(timeout.total_seconds() * 1000))
    return f"SET {'LOCAL ' if local else ''}lock_timeout = '{ms}ms'"


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


DIALECT = PostgreSQL()
