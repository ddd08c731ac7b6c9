"""A real PgBouncer in front of the test server, for tests/test_pooler_*.py.

Debian's ``pgbouncer`` package (``.ci/run`` installs it when missing); each test module starts its
own process on a free local port with its own ini in a temporary directory (``auth_type =
trust``, the server's users in an auth file, every database forwarded), in ``session`` or
``transaction`` pool mode. PgBouncer refuses to run as root: then it is started with ``-u
nobody`` (it drops privileges after opening its port), and its files are readable by all.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

from helpers import ADMIN_URL


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PgBouncer:
    """A running PgBouncer: ``port``, ``mode``; :meth:`url` turns a server URL into one through it."""

    process: subprocess.Popen
    port: int
    mode: str
    folder: Path

    def url(self, server_url: str) -> str:
        parts = urlsplit(server_url)
        netloc = f"{parts.username or 'postgres'}@127.0.0.1:{self.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))

    def admin(self) -> psycopg.Connection:
        """PgBouncer's admin console (SHOW ..., RELOAD)."""
        conn = psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="pgbouncer",
                               autocommit=True)
        conn.prepare_threshold = None
        return conn

    def allow(self, role: str) -> None:
        """Let ``role`` log in through the pooler (the server's trust rules apply behind it)."""
        with open(self.folder / "users.txt", "a") as users:
            users.write(f'"{role}" ""\n')
        with self.admin() as console:
            console.execute("RELOAD")

    def log(self) -> str:
        return (self.folder / "pgbouncer.log").read_text(errors="replace")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        shutil.rmtree(self.folder, ignore_errors=True)


def start(mode: str, *, admin_users: str = "postgres", pool_size: int = 20) -> PgBouncer:
    """Start PgBouncer in ``mode`` in front of the test server; waits until it accepts connections."""
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    server = urlsplit(ADMIN_URL)
    folder = Path(tempfile.mkdtemp(prefix=f"pgbouncer-{mode}-"))
    port = free_port()
    (folder / "users.txt").write_text('"postgres" ""\n')
    (folder / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={server.hostname or '127.0.0.1'} port={server.port or 5432}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {folder / 'users.txt'}\n"
        f"pool_mode = {mode}\ndefault_pool_size = {pool_size}\nmax_client_conn = 200\n"
        f"admin_users = {admin_users}\nstats_users = {admin_users}\n"
        "ignore_startup_parameters = extra_float_digits\n"
        "server_check_delay = 0\n")
    os.chmod(folder, 0o755)
    for name in ("users.txt", "pgbouncer.ini"):
        os.chmod(folder / name, 0o644)
    command = [binary, str(folder / "pgbouncer.ini")]
    if os.geteuid() == 0:
        command[1:1] = ["-u", "nobody"]  # it refuses to run as root
    log = open(folder / "pgbouncer.log", "wb")  # noqa: SIM115 - owned by the process for its life
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    bouncer = PgBouncer(process, port, mode, folder)
    deadline = time.monotonic() + 15
    while True:
        try:
            with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres", connect_timeout=2):
                return bouncer
        except psycopg.OperationalError:
            if process.poll() is not None or time.monotonic() > deadline:
                output = bouncer.log()
                bouncer.stop()
                raise RuntimeError(f"pgbouncer did not start ({command}): {output}") from None
            time.sleep(0.1)
