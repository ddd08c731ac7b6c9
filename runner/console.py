"""A progress view of `migrate up` for a person at a terminal (``--log-format console``).

One line per migration, written when it is done::

    [  3/300] 003_add_users                       applied   0.12s
    [4-103/300] 100 migrations, 004_a .. 103_z     applied   0.45s   (one transaction)
    [104/300] 104_backfill                        running   6.0s    waiting on Lock:relation, blocked by pid 4242 (...)
    [104/300] 104_backfill                        FAILED    9.1s

A batch of migrations applied in one transaction is one line; a heartbeat (runner.heartbeat)
adds a ``running`` line every few seconds while a migration runs. Colours only when the stream
is a terminal, ``NO_COLOR`` is unset or empty and ``TERM`` is not ``dumb``
(https://no-color.org); without them the lines carry no escape code at all.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from runner.migration import MigrationFile

_STYLES = {"applied": "\x1b[32m", "FAILED": "\x1b[1;31m", "running": "\x1b[33m", "rolled back": "\x1b[33m"}
_RESET = "\x1b[0m"
NAME_WIDTH = 36


def use_color(stream: TextIO, environ: dict[str, str] | None = None) -> bool:
    """Colours on ``stream``: a terminal, and neither ``NO_COLOR`` (non-empty) nor ``TERM=dumb``."""
    env = os.environ if environ is None else environ
    if env.get("NO_COLOR") or env.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


@dataclass
class _Batch:
    ids: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # the applied ones


class ConsoleProgress:
    """The view `migrate up` reports to instead of log events (see runner.commands.up ``view``)."""

    def __init__(self, stream: TextIO | None = None, color: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.color = use_color(self.stream) if color is None else color
        self.position: dict[str, int] = {}
        self.total = 0
        self._started: dict[str, float] = {}
        self._filling: _Batch | None = None  # the batch whose migrations are being announced
        self._batch_of: dict[str, _Batch] = {}  # batches applied but not all confirmed yet
        self._write_lock = threading.Lock()  # the heartbeat writes from its own thread

    def begin(self, position: dict[str, int]) -> None:
        """The migrations of the run, numbered from 1."""
        self.position = position
        self.total = len(position)

    # -- Progress ---------------------------------------------------------------------------
    def applying(self, migration: MigrationFile, batch: int) -> None:
        self._started[migration.id] = time.perf_counter()
        if batch > 1:
            if self._filling is None or len(self._filling.ids) >= batch:
                self._filling = _Batch()
            self._filling.ids.append(migration.id)
            self._batch_of[migration.id] = self._filling
        else:
            self._filling = None
            self._batch_of.pop(migration.id, None)  # applied one by one after its batch was rolled back

    def applied(self, migration: MigrationFile, seconds: float) -> None:
        batch = self._batch_of.get(migration.id)
        if batch is None:
            self._line(self._counter(migration.id), migration.id, "applied", seconds)
            return
        batch.seconds[migration.id] = seconds
        if len(batch.seconds) == len(batch.ids):
            for mid in batch.ids:
                del self._batch_of[mid]
            first, last = batch.ids[0], batch.ids[-1]
            self._line(self._span(first, last), f"{len(batch.ids)} migrations, {first} .. {last}", "applied",
                       sum(batch.seconds.values()), "(one transaction)")

    def failed(self, migration: MigrationFile, error: BaseException) -> None:
        seconds = time.perf_counter() - self._started.get(migration.id, time.perf_counter())
        self._line(self._counter(migration.id), migration.id, "FAILED", seconds)

    def batch_failed(self, batch: Sequence[MigrationFile], error: str) -> None:
        first, last = batch[0].id, batch[-1].id
        self._line(self._span(first, last), f"{len(batch)} migrations, {first} .. {last}", "rolled back",
                   time.perf_counter() - self._started.get(first, time.perf_counter()),
                   f"applying them one by one: {error}")
        for m in batch:
            self._batch_of.pop(m.id, None)
        self._filling = None

    def running(self, migration: MigrationFile, beat: Any) -> None:
        """A heartbeat (runner.heartbeat.Beat)."""
        batch = self._batch_of.get(migration.id)
        where = self._span(batch.ids[0], batch.ids[-1]) if batch is not None else self._counter(migration.id)
        self._line(where, migration.id, "running", beat.elapsed_s, f"waiting on {beat.waiting_on()}")
    # -- lines ------------------------------------------------------------------------------
    def _counter(self, mid: str) -> str:
        width = len(str(self.total))
        return f"[{self.position.get(mid, 0):>{width}}/{self.total}]"

    def _span(self, first: str, last: str) -> str:
        return f"[{self.position.get(first, 0)}-{self.position.get(last, 0)}/{self.total}]"

    def _line(self, where: str, name: str, outcome: str, seconds: float, note: str = "") -> None:
        shown = f"{outcome:<11}"
        if self.color:
            shown = f"{_STYLES.get(outcome, '')}{shown}{_RESET}"
        text = f"{where} {name:<{NAME_WIDTH}} {shown} {seconds:>7.2f}s"
        if note:
            text += f"  {note}"
        with self._write_lock:
            self.stream.write(text + "\n")
            self.stream.flush()
