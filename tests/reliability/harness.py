"""Shared machinery of the reliability suite: running the CLI, reading the catalog, recording figures.

Every `migrate` run goes through :func:`run` or :class:`Spawned`, which keep its
stdout and stderr so that the suite can assert, for every single output, that
no password from a database URL leaks, and can count what it injected for
RELIABILITY.md (see bench/reliability_report.py).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg

ROOT = Path(__file__).resolve().parents[2]
LONG = os.environ.get("MIGRATE_LONG_TESTS") == "1"
FIGURES_ENV = "MIGRATE_RELIABILITY_FIGURES"

# The password of every runner role in this suite. The hex token is what the
# leak check looks for (it survives any encoding of the punctuation around it).
SECRET_TOKEN = "pw" + uuid.uuid4().hex[:16]
PASSWORD = f"R;{SECRET_TOKEN}:@/'\"x"


def scaled(default: int, long: int) -> int:
    """``long`` under MIGRATE_LONG_TESTS=1, else ``default``."""
    return long if LONG else default


# ----------------------------------------------------------------------------- figures
@dataclass
class Figures:
    """Counters the tests fill in; dumped as JSON for RELIABILITY.md."""

    counts: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    outputs_scanned: int = 0
    secret_leaks: list[str] = field(default_factory=list)

    def add(self, section: str, **values: int) -> None:
        for key, value in values.items():
            self.counts[section][key] += value

    def maximum(self, section: str, key: str, value: int) -> None:
        self.counts[section][key] = max(self.counts[section][key], value)

    def dump(self, path: str) -> None:
        data = {"long": LONG, "outputs_scanned": self.outputs_scanned, "secret_leaks": len(self.secret_leaks),
                "sections": {k: dict(v) for k, v in self.counts.items()}}
        Path(path).write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")


FIGURES = Figures()


def check_no_secret(label: str, *texts: str) -> None:
    """Fail when the suite's password appears in any output (raw, encoded or partial)."""
    FIGURES.outputs_scanned += 1
    for text in texts:
        if text and (SECRET_TOKEN in text or PASSWORD in text or quote(PASSWORD, safe="") in text):
            FIGURES.secret_leaks.append(label)
            raise AssertionError(f"password leaked in the output of {label}:\n{text[-2000:]}")


# ----------------------------------------------------------------------------- URLs
def with_user(url: str, user: str, password: str | None = PASSWORD, **query: str) -> str:
    """``url`` with user and (URL-encoded) password replaced, plus query parameters."""
    parts = urlsplit(url)
    auth = quote(user, safe="") + (f":{quote(password, safe='')}" if password else "")
    port = f":{parts.port}" if parts.port else ""
    q = "&".join(f"{k}={quote(v, safe='')}" for k, v in query.items())
    return urlunsplit((parts.scheme, f"{auth}@{parts.hostname}{port}", parts.path, q, ""))


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))


def dbname(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def admin_url_for(url: str) -> str:
    """The same database, as the superuser ``postgres`` without password (trust auth)."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit((parts.scheme, f"postgres@{parts.hostname}{port}", parts.path, "", ""))


# ----------------------------------------------------------------------------- running the CLI
@dataclass
class Result:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def error_lines(self) -> list[str]:
        """stderr lines that are not JSON log events, and the final error as its line when it is
        an `error` event (--log-format json, issue 13) or a `problem` event (verify)."""
        lines = []
        for line in self.stderr.splitlines():
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

    def json(self) -> Any:
        return json.loads(self.stdout)

    def describe(self) -> str:
        return f"migrate {' '.join(self.args)} -> exit {self.returncode}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "MIGRATE_MIGRATIONS", "MIGRATE_CONFIG", "MIGRATE_LOCK_TIMEOUT",
                        "MIGRATE_LOCK_WAIT", "MIGRATE_FORMAT", "MIGRATE_LOG_FORMAT")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 120) -> Result:
    """Run `python -m runner ARGS` to completion; its outputs are checked for secrets."""
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "runner", *args], cwd=cwd or ROOT, env=_env(env),
                          capture_output=True, text=True, timeout=timeout)
    result = Result(list(args), proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)
    check_no_secret(f"migrate {args[:1]}", result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.describe()
    return result


class Spawned:
    """A `migrate` process running in the background (outputs to temporary files)."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        self.args = list(args)
        self._out = tempfile.TemporaryFile("w+", encoding="utf-8")
        self._err = tempfile.TemporaryFile("w+", encoding="utf-8")
        self.started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "runner", *args], cwd=cwd or ROOT, env=_env(env),
                                     stdout=self._out, stderr=self._err, text=True)
        self.result: Result | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> bool:
        """SIGKILL; True when the process was still running."""
        was_alive = self.alive()
        if was_alive:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.wait()
        return was_alive

    def wait(self, timeout: float = 120, check_traceback: bool = True) -> Result:
        if self.result is None:
            code = self.proc.wait(timeout=timeout)
            seconds = time.monotonic() - self.started
            self._out.seek(0)
            self._err.seek(0)
            self.result = Result(self.args, code, self._out.read(), self._err.read(), seconds)
            self._out.close()
            self._err.close()
            check_no_secret(f"migrate {self.args[:1]} (background)", self.result.stdout, self.result.stderr)
            if check_traceback and code != -signal.SIGKILL:
                assert "Traceback" not in self.result.stderr, self.result.describe()
        return self.result


def db_args(url: str, migrations: Path, *extra: str) -> list[str]:
    return ["--database", url, "--migrations", str(migrations), "--log-format", "json", *extra]


# ----------------------------------------------------------------------------- catalog helpers
def connect(url: str) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=True)


def rows(url: str, query: str, params: Iterable[Any] = ()) -> list[tuple]:
    with connect(url) as conn:
        return conn.execute(query, tuple(params)).fetchall()


def one(url: str, query: str, params: Iterable[Any] = ()) -> Any:
    found = rows(url, query, params)
    return found[0][0] if found else None


def regclass(conn: psycopg.Connection, name: str) -> Any:
    return conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()[0]


def history_ids(conn: psycopg.Connection) -> list[str]:
    if regclass(conn, "public._migrate_history") is None:
        return []
    return [r[0] for r in conn.execute("SELECT migration_id FROM public._migrate_history ORDER BY migration_id")]


def yoyo_ids(conn: psycopg.Connection) -> list[str]:
    if regclass(conn, "public._yoyo_migration") is None:
        return []
    return [r[0] for r in conn.execute("SELECT migration_id FROM public._yoyo_migration ORDER BY migration_id")]


def log_counts(conn: psycopg.Connection, operation: str = "apply") -> Counter:
    if regclass(conn, "public._migrate_log") is None:
        return Counter()
    return Counter(dict(conn.execute(
        "SELECT migration_id, count(*) FROM public._migrate_log WHERE operation = %s GROUP BY 1", (operation,)
    ).fetchall()))


def wait_for_sessions_gone(admin_url: str, database: str, application_name: str = "migrate",
                           timeout: float = 15) -> float:
    """Wait until no session of ``application_name`` is left on ``database``; returns seconds waited."""
    started = time.monotonic()
    while True:
        n = one(admin_url, "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
                (database, application_name))
        if n == 0:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{n} '{application_name}' session(s) still open on {database} after {timeout}s")
        time.sleep(0.02)


def advisory_locks(admin_url: str, database: str) -> list[tuple]:
    return rows(admin_url, "SELECT l.pid, l.classid, l.objid, l.granted FROM pg_locks l "
                           "JOIN pg_database d ON d.oid = l.database "
                           "WHERE l.locktype = 'advisory' AND d.datname = %s", (database,))


def runner_backend(admin_url: str, database: str, where: str = "true") -> tuple[int, str, str] | None:
    """(pid, state, query) of the runner's session on ``database`` (application_name='migrate')."""
    found = rows(admin_url, "SELECT pid, state, query FROM pg_stat_activity WHERE datname = %s "
                            f"AND application_name = 'migrate' AND ({where}) ORDER BY backend_start LIMIT 1",
                 (database,))
    return found[0] if found else None


def wait_until(predicate, timeout: float, interval: float = 0.01, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def catalog_snapshot(conn: psycopg.Connection) -> set[tuple[str, str, str]]:
    """Every user-visible object: (kind, schema, name) of relations, schemas, functions, types."""
    found: set[tuple[str, str, str]] = set()
    for kind, schema, name in conn.execute(
        "SELECT c.relkind::text, n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%%' "
        "UNION ALL SELECT 'schema', nspname, nspname FROM pg_namespace "
        "WHERE nspname NOT IN ('pg_catalog', 'information_schema') AND nspname NOT LIKE 'pg_toast%%' "
        "AND nspname NOT LIKE 'pg_temp%%' "
        "UNION ALL SELECT 'function', n.nspname, p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') "
        "UNION ALL SELECT 'role', '', rolname FROM pg_roles WHERE rolname NOT LIKE 'migrate_role_%%' "
        "AND rolname NOT LIKE 'pg_%%'"
    ):
        found.add((kind, schema, name))
    return found


class LatencyProbe(threading.Thread):
    """Another client running ``query`` in a loop, recording each query's latency."""

    def __init__(self, url: str, query: str, application_name: str = "probe") -> None:
        super().__init__(daemon=True)
        self.url, self.query, self.application_name = url, query, application_name
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self._halt = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True, application_name=self.application_name) as conn:
            while not self._halt.is_set():
                started = time.monotonic()
                try:
                    conn.execute(self.query).fetchall()
                except psycopg.Error as err:  # recorded, asserted on by the test
                    self.errors.append(str(err))
                self.latencies.append(time.monotonic() - started)
                time.sleep(0.005)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)


_COMPAT: list[bool] = []


def compat_ready() -> bool:
    """The compat package's hook and `migrate shims` exist (issue 3). Checked once per session."""
    if not _COMPAT:
        ok = (ROOT / "compat" / "hook.py").is_file() and subprocess.run(
            [sys.executable, "-m", "runner", "shims", "--help"], cwd=ROOT, capture_output=True, timeout=60,
        ).returncode == 0
        _COMPAT.append(ok)
    return _COMPAT[0]


def write(folder: Path, files: dict[str, str | bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = folder / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return folder


_TRACEBACK = re.compile(r"Traceback \(most recent call last\)")


def assert_one_line_error(result: Result, code: int | set[int], *needles: str) -> str:
    """Exit ``code``, no traceback, exactly one non-log line on stderr containing each needle."""
    codes = {code} if isinstance(code, int) else code
    assert result.returncode in codes, result.describe()
    assert not _TRACEBACK.search(result.stderr), result.describe()
    lines = result.error_lines
    assert len(lines) == 1, result.describe()
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]
