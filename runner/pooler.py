"""Connection poolers (PgBouncer and its kind) between the runner and PostgreSQL: detect one, and
say what changes.

A pooler hands each client a server connection for a whole client session (``session`` pool
mode) or only for one transaction at a time (``transaction`` mode). In transaction mode
session state is meaningless: a session advisory lock is taken on one server connection and
stays there when the client dies, and a ``SET`` is lost for the client's next transaction and
leaks into another client's. So whenever a pooler is in the way the runner:

* takes a lease (:mod:`runner.lease`, a row with an expiry by the database's clock, renewed
  while the run lasts) instead of a session advisory lock, in both modes;
* in transaction mode sends no session ``SET``: its settings go as ``SET LOCAL`` inside each of
  its transactions (search_path, lock_timeout, client_connection_check_interval);
* cannot see the pooler's clients: only the server connections the pooler holds appear in
  ``pg_stat_activity`` (``shims drop`` says so; a fresh-database batch is never assumed safe).

Detection (``pooler = "auto"``, the default): PgBouncer (like other poolers) sends the client a
cancel key of its own, so the backend pid the connection was told at start-up differs from
``pg_backend_pid()``; no direct connection does that. The mode comes from PgBouncer's admin
console (``SHOW DATABASES``, for a user in ``admin_users``/``stats_users``) when it answers,
else transaction mode is assumed (what the runner does for it is correct in session mode too).
The ``pooler`` setting (``none``, ``session``, ``transaction``) overrides detection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runner.errors import ConfigError
from runner.logs import get_logger

log = get_logger("migrate.pooler")

SETTINGS = ("auto", "none", "session", "transaction")
MODES = ("session", "transaction", "statement")


@dataclass(frozen=True)
class Pooler:
    """What stands between the runner and the server.

    ``mode``: ``none`` (a direct connection), ``session`` or ``transaction``; ``how``: how it
    was found out (the evidence, in words); ``assumed``: the mode was not readable and
    transaction mode is assumed.
    """

    mode: str
    how: str
    assumed: bool = False

    @property
    def pooled(self) -> bool:
        return self.mode != "none"

    @property
    def per_transaction(self) -> bool:
        """Server connections change between transactions: no session state may be relied on."""
        return self.mode == "transaction"

    def describe(self) -> str:
        if not self.pooled:
            return f"no pooler ({self.how})"
        return f"pooler detected: {self.mode}{' (assumed)' if self.assumed else ''} ({self.how})"

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "how": self.how, "assumed": self.assumed}


DIRECT = Pooler("none", "direct connection")


def consequences(found: Pooler) -> str:
    """What the runner does differently through ``found``, in words (doctor, docs/poolers.md)."""
    if not found.pooled:
        return "session advisory lock, session settings"
    text = ("the runner's lock is a lease in _migrate_lock (renewed while a run lasts, expiring lock_lease after a "
            "killed runner) instead of a session advisory lock; migrate cannot see the pooler's clients, only the "
            "server connections it holds (shims drop says so, fresh-database batches are off)")
    if found.per_transaction:
        text += ("; no session SET: the runner's search_path, lock_timeout and client_connection_check_interval are "
                 "SET LOCAL in each of its transactions; a non-transactional migration (CREATE INDEX CONCURRENTLY) "
                 "runs with the server connection's own lock_timeout and search_path")
    return text


def detect(setting: str, told_pid: int, server_pid: int, connect_args: dict[str, Any]) -> Pooler:
    """The pooler of a new connection: ``told_pid`` is the backend pid the connection start-up
    reported, ``server_pid`` what ``pg_backend_pid()`` answered."""
    if setting == "none":
        return Pooler("none", "setting pooler = none")
    if setting in ("session", "transaction"):
        return Pooler(setting, f"setting pooler = {setting}")
    if told_pid == server_pid:
        return DIRECT
    evidence = f"the start-up backend pid {told_pid} is not the server's pg_backend_pid() {server_pid}"
    mode = admin_console_mode(connect_args)
    if mode is None:
        return Pooler("transaction", f"{evidence}; pool mode not readable from PgBouncer's admin console", assumed=True)
    if mode == "statement":
        raise ConfigError(f"the pooler in front of the database runs pool_mode = statement ({evidence}): "
                          "migrations need transactions; connect through a session or transaction pool, or directly")
    return Pooler(mode, f"{evidence}; pool_mode = {mode} from PgBouncer's SHOW DATABASES")


def admin_console_mode(connect_args: dict[str, Any]) -> str | None:
    """The pool mode PgBouncer's admin console reports for this database, None when it does not
    answer (not PgBouncer, or a user outside ``admin_users``/``stats_users``)."""
    database = connect_args.get("dbname")
    answers = _admin_console({k: v for k, v in connect_args.items() if k != "options"}, "SHOW DATABASES", "SHOW CONFIG")
    if answers is None:
        return None
    rows, settings = answers
    config = {row["key"]: row["value"] for row in settings}
    row = next((r for r in rows if r.get("name") == database), None) or next(
        (r for r in rows if r.get("name") == "*"), None)
    mode = (row or {}).get("pool_mode") or config.get("pool_mode")
    return mode if mode in MODES else None


@dataclass(frozen=True)
class PoolerClient:
    """A client connected to the pooler (PgBouncer's ``SHOW CLIENTS``)."""

    user: str
    database: str
    state: str
    address: str
    application_name: str


def admin_console_clients(connect_args: dict[str, Any]) -> list[PoolerClient] | None:
    """Clients connected to PgBouncer for this database (not the runner's own connections,
    whose application_name starts with ``migrate``), None when the admin console does not
    answer."""
    database = connect_args.get("dbname")
    answers = _admin_console(dict(connect_args), "SHOW CLIENTS")
    if answers is None:
        return None
    (rows,) = answers
    return [PoolerClient(str(r.get("user")), str(r.get("database")), str(r.get("state")),
                         f"{r.get('addr')}:{r.get('port')}", str(r.get("application_name") or ""))
            for r in rows if r.get("database") == database
            and not str(r.get("application_name") or "").startswith("migrate")]


def _admin_console(connect_args: dict[str, Any], *commands: str) -> list[list[dict[str, Any]]] | None:
    """The rows (as dicts by column name) PgBouncer's admin console answers to each of ``commands``,
    connecting as the runner's user to the ``pgbouncer`` database; None when it does not answer."""
    import psycopg

    args = dict(connect_args)
    args.update(dbname="pgbouncer", connect_timeout="3")
    answers = []
    try:
        with psycopg.connect(**args, autocommit=True) as console:
            console.prepare_threshold = None
            for command in commands:
                cursor = console.execute(command)
                names = [d.name for d in cursor.description or []]
                answers.append([dict(zip(names, row)) for row in cursor.fetchall()])
    except psycopg.Error as err:
        log.debug("pgbouncer admin console not readable", error=str(err).splitlines()[0] if str(err) else "")
        return None
    return answers
