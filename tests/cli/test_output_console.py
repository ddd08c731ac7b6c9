"""Issue 13 part 4: console output a person can follow, checked in a real terminal (tmux).

`migrate up` on a terminal prints one line per migration (n/total, outcome, duration), a batch
as one line, and a heartbeat while a statement runs long, naming what it waits on (from
pg_stat_activity on a second connection); colours only on a terminal without NO_COLOR.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from helpers import ROOT, run_migrate
from helpers import history, hold_table, write_migrations

ESC = "\x1b["


class Terminal:
    """A tmux server of our own (private socket) with one 200x50 pane."""

    def __init__(self, tmp_path: Path) -> None:
        self.socket = str(tmp_path / f"tmux-{uuid.uuid4().hex[:8]}")

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-S", self.socket, *args], check=True, capture_output=True,
                              text=True).stdout

    def run(self, command: str, env: dict[str, str]) -> None:
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        script = f"cd {shlex.quote(str(ROOT))} && env -u NO_COLOR {exports} {command}; echo migrate-exit=$?; sleep 600"
        # bash: it goes on after a child that handled Ctrl-C (dash would end with it)
        self.tmux("new-session", "-d", "-x", "200", "-y", "50", "bash", "-c", script)

    def screen(self, escapes: bool = False) -> str:
        return self.tmux("capture-pane", "-p", "-J", *(["-e"] if escapes else []), "-S", "-200")

    def wait_for(self, text: str, limit: float = 90) -> str:
        """The screen once ``text`` shows on it (a wait, not a timed assertion)."""
        deadline = time.monotonic() + limit
        while True:
            screen = self.screen()
            if text in screen or time.monotonic() > deadline:
                return screen
            time.sleep(0.2)

    def close(self) -> None:
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True)


@pytest.fixture
def terminal(tmp_path: Path):
    term = Terminal(tmp_path)
    yield term
    term.close()


def _migrate_command(url: str, folder: Path, *args: str) -> str:
    return " ".join(shlex.quote(a) for a in [sys.executable, "-m", "runner", "up", "--database", url,
                                              "--migrations", str(folder), *args])


def _line(screen: str, *parts: str) -> str:
    found = [line for line in screen.splitlines() if all(p in line for p in parts)]
    assert found, f"no line with {parts} on the screen:\n{screen}"
    return found[0]


def test_progress_and_heartbeat_in_a_terminal(pg_url: str, tmp_path: Path, terminal: Terminal) -> None:
    folder = write_migrations(tmp_path / "m", {"001_accounts.sql": "CREATE TABLE accounts (id int);"})
    assert run_migrate("up", "--database", pg_url, "--migrations", str(folder)).returncode == 0
    write_migrations(folder, {"002_sleep.sql": "SELECT pg_sleep(4);",
                              "003_alter.sql": "ALTER TABLE accounts ADD COLUMN note text;",
                              "004_tail.sql": "CREATE TABLE tail (id int);"})
    ready, release = threading.Event(), threading.Event()
    holder = threading.Thread(target=hold_table, args=(pg_url, "accounts", ready, release))
    holder.start()
    try:
        assert ready.wait(10)
        terminal.run(_migrate_command(pg_url, folder, "--lock-timeout", "120s"), {"TERM": "xterm-256color"})
        # The ALTER waits for the report's lock: the heartbeat names the wait and the blocker.
        screen = terminal.wait_for("Lock:relation")
    finally:
        release.set()
        holder.join()
    beat = _line(screen, "[2/3]", "003_alter", "running", "waiting on Lock:relation")
    assert "blocked by pid" in beat and "long-report" in beat
    screen = terminal.wait_for("migrate-exit=")
    assert "migrate-exit=0" in screen, screen
    assert _line(screen, "[1/3]", "002_sleep", "applied")
    assert _line(screen, "[2/3]", "003_alter", "applied")
    assert _line(screen, "[3/3]", "004_tail", "applied")
    # One line per migration: no per-step log events on the console.
    assert not [line for line in screen.splitlines() if "applying" in line]
    assert history(pg_url) == ["001_accounts", "002_sleep", "003_alter", "004_tail"]
    # On a terminal without NO_COLOR the outcome is coloured.
    assert ESC in terminal.screen(escapes=True)


def test_no_color_in_a_terminal(pg_url: str, tmp_path: Path, terminal: Terminal) -> None:
    folder = write_migrations(tmp_path / "m", {"001_one.sql": "CREATE TABLE one (id int);",
                                               "002_bad.sql": "SELECT * FROM nowhere;"})
    terminal.run(_migrate_command(pg_url, folder), {"TERM": "xterm-256color", "NO_COLOR": "1"})
    screen = terminal.wait_for("migrate-exit=")
    assert "migrate-exit=4" in screen, screen
    assert _line(screen, "[1/2]", "001_one", "applied")
    assert _line(screen, "[2/2]", "002_bad", "FAILED")
    assert _line(screen, "migrate: error:", "002_bad.sql:1")
    assert ESC not in terminal.screen(escapes=True)


def test_console_without_a_terminal_has_no_escape_codes(pg_url: str, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", {f"{n:03d}_t{n}.sql": f"CREATE TABLE t{n} (id int);"
                                               for n in range(1, 6)})
    result = run_migrate("up", "--log-format", "console", "--database", pg_url, "--migrations", str(folder))
    assert result.returncode == 0, result.stderr
    assert ESC not in result.stderr
    # A fresh database: the first four go as one batch, shown as one line (the last one of a run
    # has its own transaction: the snapshot hook stores the schema in it).
    assert _line(result.stderr, "[1-4/5]", "4 migrations, 001_t1 .. 004_t4", "applied", "(one transaction)")
    assert _line(result.stderr, "[5/5]", "005_t5", "applied")
    assert len([line for line in result.stderr.splitlines() if line.startswith("[")]) == 2


def test_json_logs_carry_the_heartbeat(pg_url: str, tmp_path: Path) -> None:
    """Pipelines keep JSON lines: the heartbeat is a `running` event there."""
    import json

    folder = write_migrations(tmp_path / "m", {"001_accounts.sql": "CREATE TABLE accounts (id int);"})
    assert run_migrate("up", "--database", pg_url, "--migrations", str(folder)).returncode == 0
    write_migrations(folder, {"002_alter.sql": "ALTER TABLE accounts ADD COLUMN note text;"})
    ready, release = threading.Event(), threading.Event()
    holder = threading.Thread(target=hold_table, args=(pg_url, "accounts", ready, release))
    holder.start()
    proc = None
    try:
        assert ready.wait(10)
        proc = subprocess.Popen([sys.executable, "-m", "runner", "up", "--log-format", "json", "--lock-timeout",
                                 "120s", "--database", pg_url, "--migrations", str(folder)], cwd=ROOT,
                                stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        events = []
        for line in proc.stderr:
            events.append(json.loads(line))
            if events[-1]["event"] == "running":
                break
    finally:
        release.set()
        holder.join()
    proc.communicate(timeout=60)
    assert proc.returncode == 0
    beat = events[-1]
    assert beat["migration"] == "002_alter" and beat["wait_event_type"] == "Lock"
    assert beat["wait_event"] == "relation" and beat["blocked_by"] and "long-report" in beat["blocker"]


def test_ctrl_c_in_a_terminal_still_prints_the_document(pg_url: str, tmp_path: Path, terminal: Terminal) -> None:
    """Ctrl-C during a long statement (after its heartbeat named the wait): exit 130, and the
    JSON document says what was not started and what may or may not have committed."""
    import json

    folder = write_migrations(tmp_path / "m", {"001_one.sql": "CREATE TABLE one (id int);",
                                               "002_sleep.sql": "SELECT pg_sleep(60);",
                                               "003_three.sql": "CREATE TABLE three (id int);"})
    terminal.run(_migrate_command(pg_url, folder, "--format", "json"), {"TERM": "xterm-256color"})
    screen = terminal.wait_for("Timeout:PgSleep")
    assert _line(screen, "[2/3]", "002_sleep", "running", "waiting on Timeout:PgSleep")
    terminal.tmux("send-keys", "C-c")
    screen = terminal.wait_for("migrate-exit=")
    assert "migrate-exit=130" in screen, screen
    lines = screen.splitlines()
    start = lines.index("{")
    doc = json.loads("\n".join(lines[start:lines.index("}", start) + 1]))
    assert doc["ok"] is False and doc["error"]["kind"] == "interrupted" and doc["error"]["exit_code"] == 130
    assert doc["pending"] == ["003_three"] and doc["failed"] is None
    assert "002_sleep" in doc["unconfirmed"]
    assert sorted(doc["applied"] + doc["unconfirmed"]) == ["001_one", "002_sleep"]
    assert "002_sleep" not in history(pg_url)
