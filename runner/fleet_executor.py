"""Running one action over a fleet: bounded parallelism, waves, and when to stop.

Threads (the work is I/O: waiting on the servers), at most ``parallel`` targets in flight: a
target is submitted only when a worker is free, so a stream of targets is read as the run goes
and never queued whole. Each result goes to the reporter the moment it is known.

Stopping: ``on_error='stop'`` stops submitting after the first failure, ``max_failures`` after
that many; targets already running finish. A wave with a failure stops the waves after it.
Targets not started are reported as ``skipped`` (a re-run picks them up).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice

from runner.errors import UsageError
from runner.fleet_report import FAILED, SKIPPED, Reporter, TargetResult, error_fields
from runner.fleet_targets import Target, Wave


@dataclass(frozen=True)
class FleetOptions:
    parallel: int = 4
    canary: int = 0  # run this many targets first, as a wave of their own
    max_failures: int | None = None  # stop after this many failed targets
    on_error: str = "continue"  # "stop": stop after the first failure

    def __post_init__(self) -> None:
        if self.parallel < 1:
            raise UsageError(f"--parallel: expected a number >= 1, got {self.parallel}")
        if self.canary < 0:
            raise UsageError(f"--canary: expected a number >= 0, got {self.canary}")
        if self.max_failures is not None and self.max_failures < 1:
            raise UsageError(f"--max-failures: expected a number >= 1, got {self.max_failures}")
        if self.on_error not in ("stop", "continue"):
            raise UsageError(f"--on-error: expected stop or continue, got {self.on_error!r}")

    @property
    def failure_limit(self) -> int | None:
        if self.on_error == "stop":
            return 1
        return self.max_failures


Action = Callable[[Target], TargetResult]


def with_canary(targets: Iterable[Target], canary: int) -> list[Wave]:
    """The first ``canary`` targets as a wave, then the rest (still streamed)."""
    if canary <= 0:
        return [Wave("all", targets)]
    stream = iter(targets)
    return [Wave("canary", list(islice(stream, canary))), Wave("rest", stream)]


def guarded(action: Action, target: Target) -> TargetResult:
    """``action(target)``; an exception becomes a failed result naming its kind (never raised)."""
    started = time.perf_counter()
    try:
        result = action(target)
    except Exception as err:  # noqa: BLE001 - one target's failure must not stop the others
        kind, message, code = error_fields(err)
        result = TargetResult(target.name, target.redacted, target.schema, outcome=FAILED, error_kind=kind,
                              error=message, exit_code=code)
    result.duration_s = time.perf_counter() - started
    return result


def run_waves(waves: Iterable[Wave], action: Action, options: FleetOptions, reporter: Reporter) -> None:
    """Run ``action`` on every target of every wave; results go to ``reporter``."""
    limit = options.failure_limit
    state = threading.Condition()
    running = 0
    failures = 0
    stop_reason: str | None = None
    failed_wave: str | None = None  # a wave with failures stops the waves after it

    def finished(future: Future, wave: str) -> None:
        nonlocal running, failures
        result = future.result()
        result.wave = wave
        try:
            reporter.add(result)
        finally:
            with state:
                running -= 1
                failures += result.outcome == FAILED
                state.notify_all()

    with ThreadPoolExecutor(max_workers=options.parallel, thread_name_prefix="fleet") as pool:
        for wave in waves:
            with state:
                failures_before = failures
                if failed_wave is not None and stop_reason is None:
                    stop_reason = failed_wave
            stream = iter(wave.targets)
            while True:
                with state:
                    while running >= options.parallel:  # bounded: a target is read only when a worker is free
                        state.wait()
                target = next(stream, None)
                if target is None:
                    break
                with state:
                    if stop_reason is None and limit is not None and failures >= limit:
                        stop_reason = (f"{failures} target(s) failed (--on-error stop)" if options.on_error == "stop"
                                       else f"{failures} target(s) failed (--max-failures {options.max_failures})")
                    if stop_reason is None:
                        running += 1
                if stop_reason is not None:
                    reporter.add(_skipped(target, wave.name, stop_reason))
                    continue
                future = pool.submit(guarded, action, target)
                future.add_done_callback(lambda f, w=wave.name: finished(f, w))
            with state:
                while running:  # the wave ends when its last target has reported
                    state.wait()
                if failed_wave is None and failures > failures_before:
                    failed_wave = f"wave {wave.name!r} had {failures - failures_before} failed target(s)"
    reporter.summary.stopped = stop_reason


def _skipped(target: Target, wave: str, reason: str) -> TargetResult:
    return TargetResult(target.name, target.redacted, target.schema, outcome=SKIPPED, error_kind="not-run",
                        error=f"not run: {reason}", wave=wave)
