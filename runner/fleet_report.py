"""A fleet run's results: one record per target, written as a JSON line the moment it finishes,
live progress on a terminal, and a summary that keeps only counts and the failing targets
(memory does not grow with the number of targets that succeed).
"""

from __future__ import annotations

import json
import sys
import threading
from dataclasses import asdict, dataclass, field
from typing import IO, Any

from runner import errors
from runner.db import one_line
from runner.dialects import error_kind
from runner.secrets import redact_text

SUCCEEDED, FAILED, SKIPPED = "ok", "failed", "skipped"


@dataclass
class TargetResult:
    """What happened on one target. ``outcome``: ok (at head / check passed), failed, or skipped
    (not started: an earlier failure stopped the run or its wave). ``error_kind``: unreachable,
    lock, migration, drift, untrusted, usage, database, not-at-head, unhealthy, internal."""

    target: str
    url: str  # redacted
    schema: str | None
    outcome: str = SUCCEEDED
    applied: list[str] = field(default_factory=list)
    pending: list[str] | None = None  # None: unknown (not read)
    error_kind: str | None = None
    error: str | None = None
    exit_code: int = errors.OK
    duration_s: float = 0.0
    shims: list[dict[str, Any]] = field(default_factory=list)
    wave: str | None = None
    details: dict[str, Any] = field(default_factory=dict)  # what the command adds (status, findings...)

    @property
    def ok(self) -> bool:
        return self.outcome == SUCCEEDED

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["duration_s"] = round(self.duration_s, 3)
        data.update(data.pop("details"))
        return data


@dataclass
class Summary:
    """Counts of a run and the targets that did not succeed (in the order they finished)."""

    total: int | None = None  # None: streamed targets, not known in advance
    done: int = 0
    succeeded: int = 0
    skipped: int = 0
    failures: list[TargetResult] = field(default_factory=list)
    applied: int = 0
    stopped: str | None = None  # why the run stopped early

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def ok(self) -> bool:
        return not self.failures and not self.skipped

    @property
    def exit_code(self) -> int:
        """0: every target ok (at head); 1: some target failed or was not run."""
        return errors.OK if self.ok else errors.NOT_AT_HEAD

    def to_json(self) -> dict[str, Any]:
        return {"summary": {"total": self.total if self.total is not None else self.done, "done": self.done,
                            "succeeded": self.succeeded, "failed": self.failed, "skipped": self.skipped,
                            "applied": self.applied, "stopped": self.stopped, "ok": self.ok,
                            "failing": [r.target for r in self.failures if r.outcome == FAILED]}}


def error_fields(err: BaseException) -> tuple[str, str, int]:
    """(kind, one-line message, exit code) of an error raised while working on a target."""
    kinds = {errors.LockTimeout: "lock", errors.MigrationFailed: "migration", errors.DatabaseUnreachable: "unreachable",
             errors.DriftError: "drift", errors.UntrustedObject: "untrusted"}
    if isinstance(err, errors.MigrateError):
        kind = next((k for cls, k in kinds.items() if isinstance(err, cls)), "usage")
        return kind, redact_text(str(err)), err.exit_code
    driver = error_kind(err)
    if driver == "connection":
        return "unreachable", f"lost the connection to the database: {one_line(err)}", errors.UNREACHABLE
    if driver == "database":
        return "database", f"database error: {one_line(err)}", errors.USAGE
    return "internal", redact_text(f"{type(err).__name__}: {one_line(err)}"), errors.USAGE


class Reporter:
    """Receives each result as it comes (from worker threads): writes its JSON line, updates the
    summary and the progress line. Thread-safe."""

    def __init__(self, *, lines: IO[str] | None = None, results_file: IO[str] | None = None,
                 progress: IO[str] | None = None, keep: bool = False) -> None:
        self.summary = Summary()
        self.kept: list[TargetResult] = []  # every result, only when ``keep`` (a report sorted at the end)
        self._keep = keep
        self._lines = lines
        self._file = results_file
        self._progress = progress
        self._lock = threading.Lock()

    @classmethod
    def for_terminal(cls, out: IO[str], *, json_lines: bool, results_file: IO[str] | None = None,
                     keep: bool = False) -> Reporter:
        progress = sys.stderr if sys.stderr.isatty() else None
        return cls(lines=out if json_lines else None, results_file=results_file, progress=progress, keep=keep)

    def add(self, result: TargetResult) -> None:
        line = json.dumps(result.to_json(), default=str)
        with self._lock:
            s = self.summary
            s.done += 1
            s.applied += len(result.applied)
            if result.outcome == SUCCEEDED:
                s.succeeded += 1
            elif result.outcome == SKIPPED:
                s.skipped += 1
            else:
                s.failures.append(result)
            if self._keep:
                self.kept.append(result)
            for stream in (self._lines, self._file):
                if stream is not None:
                    stream.write(line + "\n")
                    stream.flush()
            self._show_progress()

    def _show_progress(self) -> None:
        if self._progress is None:
            return
        s = self.summary
        failing = [r.target for r in s.failures[-3:]]
        more = f" (+{s.failed - 3})" if s.failed > 3 else ""
        text = (f"\rfleet: {s.done}/{s.total if s.total is not None else '?'} done, {s.failed} failed"
                + (f": {', '.join(failing)}{more}" if failing else ""))
        self._progress.write(text[:200].ljust(80))
        self._progress.flush()

    def finish(self) -> None:
        if self._progress is not None:
            self._progress.write("\n")
            self._progress.flush()
        if self._lines is not None:
            self._lines.write(json.dumps(self.summary.to_json()) + "\n")
            self._lines.flush()


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = ["  ".join(c.ljust(widths[i]) for i, c in enumerate(r[:-1])) + "  " + r[-1] for r in [header, *rows]]
    return "\n".join(line.rstrip() for line in lines)


def summary_text(summary: Summary, verb: str = "migrated") -> str:
    """The end-of-run table: counts, then one row per failing or skipped-with-reason target."""
    total = summary.total if summary.total is not None else summary.done
    lines = [f"fleet: {summary.succeeded}/{total} {verb}, {summary.failed} failed, {summary.skipped} not run"
             + (f", {summary.applied} migration(s) applied" if summary.applied else "")]
    if summary.stopped:
        lines.append(f"stopped: {summary.stopped}")
    rows = [(r.target, r.schema or "-", r.error_kind or "-", (r.error or "")[:160]) for r in summary.failures]
    if rows:
        lines.append(table(("TARGET", "SCHEMA", "KIND", "ERROR"), rows))
    return "\n".join(lines)
