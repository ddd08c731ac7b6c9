"""The one helper stack of the test suite: running the CLI, writing migrations, reading the catalog,
a throwaway PostgreSQL cluster of a test's own.

Fixtures live in conftest.py and build on these; every layer (unit, pg, sqlite, cli, reliability)
imports from here. The suite's server is ``MIGRATE_TEST_DATABASE_URL`` (see conftest.py).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import psycopg.sql

import forkserver

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_MIGRATIONS = ROOT / "migrations"
CONTRACTS = ROOT / "contracts"
ADMIN_URL = os.environ.get("MIGRATE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")

# Settings a developer's shell may carry that would change what a test's `migrate` run does.
_SCRUBBED = ("DATABASE_URL", "MIGRATE_MIGRATIONS", "MIGRATE_CONFIG", "MIGRATE_LOCK_TIMEOUT", "MIGRATE_LOCK_WAIT",
             "MIGRATE_FORMAT", "MIGRATE_LOG_FORMAT", "MIGRATE_SCHEMA", "NO_COLOR")


# ----------------------------------------------------------------------------- running the CLI
_FORKS = forkserver.Client()
atexit.register(_FORKS.stop)


@dataclass
class Result:
    """One finished `migrate` run."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float = 0.0

    @property
    def error_lines(self) -> list[str]:
        """stderr lines that are not JSON log events, and the final error event as its line."""
        return error_lines(self.stderr)

    def json(self) -> Any:
        return json.loads(self.stdout)

    def describe(self) -> str:
        return f"migrate {' '.join(self.args)} -> exit {self.returncode}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"

    def __repr__(self) -> str:
        return f"Result(rc={self.returncode}, stdout={self.stdout[-2000:]!r}, stderr={self.stderr[-2000:]!r})"


def migrate_env(extra: dict[str, str] | None = None, json_logs: bool = False) -> dict[str, str]:
    """The environment of a `migrate` subprocess: this one without the runner's settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    env["PYTHONUNBUFFERED"] = "1"
    if json_logs:
        env["MIGRATE_LOG_FORMAT"] = "json"
    env.update(extra or {})
    return env


def run_migrate(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 120,
                json_logs: bool = False) -> Result:
    """Run the ``migrate`` CLI in a subprocess, as a user or a pipeline would. A traceback fails the test."""
    started = time.monotonic()
    full_env = migrate_env(env, json_logs)
    if forkserver.needs_own_interpreter(full_env):
        proc = subprocess.run([sys.executable, "-m", "runner", *args], cwd=cwd or ROOT,
                              env=full_env, capture_output=True, text=True, timeout=timeout)
        code, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    else:  # the same process, forked from one that has imported the CLI already (tests/forkserver.py)
        code, stdout, stderr = _FORKS.run(list(args), full_env, cwd or ROOT, timeout)
    result = Result(list(args), code, stdout, stderr, time.monotonic() - started)
    assert "Traceback" not in result.stderr, result.describe()
    return result


def migrate_json_logs(*args: str, **kwargs: Any) -> Result:
    """:func:`run_migrate` with JSON log lines on stderr (so that plain lines are the errors)."""
    return run_migrate(*args, json_logs=True, **kwargs)


# ----------------------------------------------------------------------------- files
def write_migrations(folder: Path, files: dict[str, str | bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = folder / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return folder


# ----------------------------------------------------------------------------- URLs
def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))


def url_as(url: str, user: str, password: str | None = None) -> str:
    """``url`` with its user (and password) replaced."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = f":{parts.port}" if parts.port else ""
    auth = user + (f":{password}" if password else "")
    return urlunsplit((parts.scheme, f"{auth}@{host}{port}", parts.path, parts.query, ""))


# ----------------------------------------------------------------------------- the catalog
def admin_connect() -> psycopg.Connection:
    """An autocommit connection to the suite's server (``MIGRATE_TEST_DATABASE_URL``)."""
    return psycopg.connect(ADMIN_URL, autocommit=True)


def sql(url: str, *statements: str) -> list[Any]:
    """Run statements on ``url`` (autocommit); returns the rows of the last one that returns rows."""
    rows: list[Any] = []
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in statements:
            cur = conn.execute(statement)
            if cur.description is not None:
                rows = cur.fetchall()
    return rows


def scalar(url: str, query: str, params: tuple = ()) -> object:
    with psycopg.connect(url) as conn:
        return conn.execute(query, params).fetchone()[0]


def tables(url: str, schema: str = "public") -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT tablename FROM pg_catalog.pg_tables WHERE schemaname = %s", (schema,)).fetchall()
    return {r[0] for r in rows}


def columns(url: str, table: str, schema: str = "public") -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT a.attname FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid"
            " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped"
            " ORDER BY a.attnum", (schema, table)).fetchall()
    return [r[0] for r in rows]


def history(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        exists = conn.execute("SELECT to_regclass('public._migrate_history')").fetchone()[0]
        if exists is None:
            return []
        rows = conn.execute("SELECT migration_id FROM public._migrate_history ORDER BY migration_id").fetchall()
    return [r[0] for r in rows]


def schema_history(url: str, schema: str) -> list[str]:
    with psycopg.connect(url) as conn:
        if conn.execute("SELECT to_regclass(%s)", (f"{schema}._migrate_history",)).fetchone()[0] is None:
            return []
        return [r[0] for r in conn.execute(
            psycopg.sql.SQL("SELECT migration_id FROM {}._migrate_history ORDER BY 1").format(psycopg.sql.Identifier(schema)))]


def hold_table(url: str, table: str, ready: threading.Event, release: threading.Event) -> None:
    """A report (application_name 'long-report') reading ``table``: holds its AccessShareLock,
    which a migration's ALTER TABLE must wait for, until ``release`` is set."""
    with psycopg.connect(url) as conn:
        conn.execute("SET application_name = 'long-report'")
        conn.execute(f"SELECT count(*) FROM {table}")
        ready.set()
        release.wait(60)
        conn.rollback()


def expire_shims(url: str, schema: str = "public") -> int:
    """Move every active shim's expiry into the past (the database's clock): no test sleeps for an expiry."""
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(
            psycopg.sql.SQL("UPDATE {}.{} SET expires_at = now() - interval '1 minute' WHERE status = 'active'")
            .format(psycopg.sql.Identifier(schema), psycopg.sql.Identifier("_migrate_shims")))
        return cur.rowcount


# ----------------------------------------------------------------------------- gates (no timer-based races)
GATE_WAIT = ("DO $$ BEGIN WHILE NOT EXISTS (SELECT 1 FROM public.test_gate) LOOP PERFORM pg_sleep(0.02); END LOOP;"
             " END $$;\n")
"""A statement for a migration that holds it open until the test calls :func:`open_gate` (not a lock wait)."""


def make_gate(url: str, *readers: str) -> None:
    """Create the (closed) gate :data:`GATE_WAIT` polls, readable by ``readers`` (role names)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.test_gate (opened int)")
        for role in readers:
            conn.execute(psycopg.sql.SQL("GRANT SELECT ON public.test_gate TO {}").format(psycopg.sql.Identifier(role)))


def open_gate(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO public.test_gate VALUES (1)")


def error_lines(stderr: str) -> list[str]:
    """stderr lines that are not JSON log events, and the final error (an `error` event) or a
    `problem` event (verify) as the line it stands for (--log-format json: every line is an event)."""
    lines = []
    for line in stderr.splitlines():
        if not line.strip():
            continue
        if not line.startswith("{"):
            lines.append(line)
            continue
        event = json.loads(line)
        if event.get("event") == "error" and "exit_code" in event:
            lines.append(f"migrate: error: {event['message']}")
        elif event.get("event") == "problem":
            lines.append(f"migrate: {event['command']}: {event['problem']}")
    return lines


# ----------------------------------------------------------------------------- a private cluster
PG_BIN = Path(os.environ.get("MIGRATE_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
"""PostgreSQL server binaries (initdb, pg_ctl) for :func:`new_private_cluster`."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on (55432 and up, clear of the shared server)."""
    for _ in range(200):
        port = 55432 + int.from_bytes(os.urandom(2), "big") % 2000
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port for a private PostgreSQL cluster")


def _as_postgres(*command: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``command`` as the ``postgres`` OS user (initdb refuses root; the suite runs as root, as CI does)."""
    return subprocess.run(["runuser", "-u", "postgres", "--", *command],
                          capture_output=True, text=True, check=check, timeout=timeout)


@dataclass
class PrivateCluster:
    """A PostgreSQL server a test owns (tests marked ``private_cluster``): stop, start, restart,
    crash or promote it at will; the suite's shared server is never touched."""

    directory: Path  # the temporary directory: data directories, logs and the Unix sockets
    port: int
    extra_options: str = ""  # more server options, e.g. "-c shared_preload_libraries=pg_stat_statements"
    name: str = "data"  # this server's data directory, inside ``directory``
    copies: list[PrivateCluster] = field(default_factory=list)  # standby_copy() results, stopped at the end

    @property
    def data(self) -> Path:
        return self.directory / self.name

    def admin_url(self, database: str = "postgres") -> str:
        """The superuser ``postgres`` (trust auth) on 127.0.0.1."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        options = (f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off "
                   f"{self.extra_options}").strip()
        return _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l",
                            str(self.directory / f"{self.name}.log"), "-w", "-t", "60", "-o", options, *args,
                            check=check, timeout=90)

    def start(self) -> None:
        self.pg_ctl("start")

    def stop(self, mode: str = "fast") -> None:
        """Stop and wait (``immediate``: a crash); nothing happens if it is not running."""
        self.pg_ctl("stop", "-m", mode, check=False)

    def restart(self, mode: str = "fast") -> float:
        """Restart and wait; returns the seconds it took."""
        started = time.monotonic()
        self.pg_ctl("restart", "-m", mode)
        return time.monotonic() - started

    def promote(self) -> None:
        self.pg_ctl("promote")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def standby_copy(self) -> PrivateCluster:
        """A copy of this (stopped) cluster on a port of its own that starts as a standby: in recovery,
        accepting read-only connections, with no primary to follow, until promoted. Not started."""
        assert not self.running(), "stop the cluster before copying it"
        port = free_port()
        copy = PrivateCluster(self.directory, port, self.extra_options, name=f"standby-{port}")
        _as_postgres("cp", "-a", str(self.data), str(copy.data))
        _as_postgres("touch", str(copy.data / "standby.signal"))
        self.copies.append(copy)
        return copy

    def create_database(self) -> str:
        name = f"rel_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.admin_url(), autocommit=True) as conn:
            conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
        return name


@contextmanager
def new_private_cluster(extra_options: str = "", start: bool = True) -> Iterator[PrivateCluster]:
    """A throwaway cluster (initdb as the ``postgres`` OS user in a temporary directory, on a free port;
    trust for ``postgres``, scram-sha-256 for everyone else), running unless ``start`` is false, and
    stopped (``immediate``) and removed afterwards, standby copies included."""
    directory = Path(tempfile.mkdtemp(prefix="migrate-pg-"))
    shutil.chown(directory, "postgres")
    os.chmod(directory, 0o755)
    cluster = PrivateCluster(directory, free_port(), extra_options)
    try:
        _as_postgres(str(PG_BIN / "initdb"), "-D", str(cluster.data), "-U", "postgres", "-A", "trust", "--no-sync",
                     "-E", "UTF8", "--locale=C")
        hba = cluster.data / "pg_hba.conf"
        hba.write_text(
            "local all all trust\n"
            "host all postgres 127.0.0.1/32 trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n",
            encoding="utf-8",
        )
        shutil.chown(hba, "postgres")
        if start:
            cluster.start()
        yield cluster
    finally:
        for server in [*cluster.copies, cluster]:
            if server.running():
                server.stop("immediate")
        shutil.rmtree(directory, ignore_errors=True)
