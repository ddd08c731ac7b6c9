"""Issue 13 part 4: the console progress view (runner.console) and the heartbeat (runner.heartbeat)
through the library API, on SQLite (the tmux tests cover PostgreSQL in a terminal)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from helpers import write_migrations
from runner import commands, heartbeat
from runner.config import Settings
from runner.console import ConsoleProgress, use_color
from runner.migration import MigrationFile

ESC = "\x1b["


def _m(mid: str) -> MigrationFile:
    return MigrationFile(mid, f"migrations/{mid}.sql", "sql", "", None, None)


def _view(n: int, color: bool = False) -> tuple[ConsoleProgress, io.StringIO, list[MigrationFile]]:
    out = io.StringIO()
    view = ConsoleProgress(out, color=color)
    migrations = [_m(f"{i:03d}_m{i}") for i in range(1, n + 1)]
    view.begin({m.id: i for i, m in enumerate(migrations, 1)})
    return view, out, migrations


def test_a_batch_is_one_line_once_all_of_it_is_confirmed() -> None:
    view, out, ms = _view(5)
    for m in ms[:3]:
        view.applying(m, 3)
    view.applied(ms[0], 0.01)
    view.applied(ms[1], 0.01)
    assert out.getvalue() == ""  # not all of the batch is known durable yet
    view.applying(ms[3], 1)
    view.applied(ms[2], 0.01)
    view.applied(ms[3], 0.5)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("[1-3/5] 3 migrations, 001_m1 .. 003_m3") and "applied" in lines[0]
    assert "(one transaction)" in lines[0]
    assert lines[1].startswith("[4/5] 004_m4") and "applied" in lines[1] and "0.50s" in lines[1]


def test_a_rolled_back_batch_then_one_by_one() -> None:
    view, out, ms = _view(3)
    for m in ms:
        view.applying(m, 3)
    view.batch_failed(ms, "deadlock detected")
    view.applying(ms[0], 1)
    view.applied(ms[0], 0.1)
    view.applying(ms[1], 1)
    view.failed(ms[1], RuntimeError("boom"))
    lines = out.getvalue().splitlines()
    assert "[1-3/3]" in lines[0] and "rolled back" in lines[0] and "deadlock detected" in lines[0]
    assert lines[1].startswith("[1/3] 001_m1") and "applied" in lines[1]
    assert lines[2].startswith("[2/3] 002_m2") and "FAILED" in lines[2]
    assert ESC not in out.getvalue()


def test_colours_only_when_asked_and_never_with_no_color() -> None:
    view, out, ms = _view(1, color=True)
    view.applying(ms[0], 1)
    view.applied(ms[0], 0.1)
    assert ESC in out.getvalue()

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert use_color(Tty(), {}) is True
    assert use_color(Tty(), {"NO_COLOR": "1"}) is False
    assert use_color(Tty(), {"NO_COLOR": ""}) is True  # no-color.org: set and not empty
    assert use_color(Tty(), {"TERM": "dumb"}) is False
    assert use_color(io.StringIO(), {}) is False


class Recorder:
    """A view that keeps what it is told."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, object]] = []

    def applying(self, migration, batch):
        self.calls.append(("applying", migration.id, batch))

    def applied(self, migration, seconds):
        self.calls.append(("applied", migration.id, seconds))

    def failed(self, migration, error):
        self.calls.append(("failed", migration.id, error))

    def batch_failed(self, batch, error):
        self.calls.append(("batch_failed", batch[0].id, error))

    def running(self, migration, beat):
        self.calls.append(("running", migration.id, beat))


def test_heartbeat_on_sqlite_says_how_long_and_stops_with_the_migration(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heartbeat, "EVERY", 0.2)
    folder = write_migrations(tmp_path / "m", {
        "001_slow.py": "import time\nfrom yoyo import step\nsteps = [step(lambda conn: time.sleep(1.2))]\n",
        "002_quick.sql": "CREATE TABLE quick (id int);",
    })
    view = Recorder()
    result = commands.up(Settings(database=f"sqlite:///{tmp_path / 'db.sqlite'}", migrations=folder), view=view)
    assert result.applied == ["001_slow", "002_quick"]
    names = [c[0] for c in view.calls]
    assert ("applying", "001_slow", 1) in view.calls
    beats = [c for c in view.calls if c[0] == "running"]
    assert beats and {c[1] for c in beats} == {"001_slow"}
    assert all(b[2].activity is None and b[2].waiting_on() == "running" for b in beats)
    # Every beat comes while 001 runs: after it was announced, before it was reported applied.
    announced = names.index("applying")
    done = next(i for i, c in enumerate(view.calls) if c[:2] == ("applied", "001_slow"))
    assert all(announced < i < done for i, c in enumerate(view.calls) if c[0] == "running")


def test_heartbeat_follows_the_migration_of_a_batch_that_runs_now(tmp_path: Path) -> None:
    """The migrations of a batch are announced one after the other without waking the thread: it
    wakes when the first beat is due and beats for the migration announced last, timed from the
    batch's start."""
    import threading

    from runner.db import connect

    class Waiting(Recorder):
        beat = threading.Event()

        def running(self, migration, beat):
            super().running(migration, beat)
            self.beat.set()

    with connect(f"sqlite:///{tmp_path / 'db.sqlite'}") as db:
        view = Waiting()
        every = 0.3
        with heartbeat.Heartbeat(db, view, every=every) as beating:
            beating.applying(_m("001_a"), 2)
            beating.applying(_m("002_b"), 2)
            assert view.beat.wait(30)
            beating.applied(_m("001_a"), 0.1)
            beating.applied(_m("002_b"), 0.1)
        beats = [c for c in view.calls if c[0] == "running"]
        assert beats and {b[1] for b in beats} == {"002_b"}
        assert beats[0][2].elapsed_s >= every
