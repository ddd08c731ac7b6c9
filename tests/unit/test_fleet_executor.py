"""The fleet executor and reporter without a database: bounded parallelism over a lazily read
stream, waves, stopping rules, results as they come, the summary and the progress line."""

from __future__ import annotations

import io
import json
import threading

import pytest

from runner.errors import LockTimeout, UsageError
from runner.fleet_executor import FleetOptions, run_waves, with_canary
from runner.fleet_report import FAILED, Reporter, TargetResult, summary_text
from runner.fleet_targets import Target, Wave


class Probe:
    """An action recording how many targets run at once; fails the targets named in ``fail``."""

    def __init__(self, fail: set[str] = frozenset()) -> None:
        self.fail = fail
        self.running = 0
        self.most = 0
        self.lock = threading.Lock()

    def __call__(self, target: Target) -> TargetResult:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            if target.name in self.fail:
                raise LockTimeout(f"{target.name}: the migration lock is held by pid 42")
            return TargetResult(target.name, target.redacted, None, applied=["001"])
        finally:
            with self.lock:
                self.running -= 1


def targets(n: int) -> list[Target]:
    return [Target(f"t{i}", f"postgresql://u:pw@h/db{i}") for i in range(n)]


def test_streamed_targets_are_read_only_when_a_worker_is_free():
    probe = Probe()
    read = []
    reporter = Reporter()

    def stream():
        for target in targets(40):
            # The next target is read only when fewer than `parallel` are in flight.
            assert len(read) - reporter.summary.done < 3
            read.append(target.name)
            yield target

    run_waves([Wave("all", stream())], probe, FleetOptions(parallel=3), reporter)
    assert probe.most <= 3
    assert reporter.summary.done == 40 and reporter.summary.succeeded == 40 and reporter.summary.ok


def test_results_are_json_lines_as_they_come_with_passwords_redacted():
    out, results = io.StringIO(), io.StringIO()
    reporter = Reporter(lines=out, results_file=results)
    run_waves([Wave("all", targets(3))], Probe(fail={"t1"}), FleetOptions(parallel=2), reporter)
    reporter.finish()
    found = [json.loads(line) for line in out.getvalue().splitlines()]
    assert results.getvalue() == "".join(line + "\n" for line in out.getvalue().splitlines()[:-1])
    by_name = {f["target"]: f for f in found[:-1]}
    assert by_name["t1"]["outcome"] == FAILED and by_name["t1"]["error_kind"] == "lock"
    assert by_name["t1"]["exit_code"] == 3 and "pid 42" in by_name["t1"]["error"]
    assert by_name["t0"]["url"] == "postgresql://u:***@h/db0"
    assert "pw" not in out.getvalue().replace("***", "")
    assert found[-1]["summary"]["failing"] == ["t1"] and reporter.summary.exit_code == 1
    assert found[-1]["summary"]["stopped"] is None  # one wave: nothing was stopped


def test_a_failing_wave_stops_the_next_and_skipped_targets_are_reported():
    reporter = Reporter()
    waves = with_canary(iter(targets(5)), 2)
    run_waves(waves, Probe(fail={"t1"}), FleetOptions(parallel=4), reporter)
    s = reporter.summary
    assert (s.succeeded, s.failed, s.skipped) == (1, 1, 3)
    assert s.stopped == "wave 'canary' had 1 failed target(s)"
    text = summary_text(s)
    assert "fleet: 1/5 at head" not in text and "1 failed, 3 not run" in text and "t1" in text


@pytest.mark.parametrize("options, started", [
    (FleetOptions(parallel=1, on_error="stop"), 2),
    (FleetOptions(parallel=1, max_failures=2), 4),
    (FleetOptions(parallel=1), 6),
])
def test_stopping_rules(options, started):
    reporter = Reporter(keep=True)
    run_waves([Wave("all", targets(6))], Probe(fail={"t1", "t3"}), options, reporter)
    assert [r.target for r in reporter.kept if r.outcome != "skipped"] == [f"t{i}" for i in range(started)]
    assert all(r.error.startswith("not run: ") for r in reporter.kept if r.outcome == "skipped")


def test_progress_line_names_failing_targets():
    progress = io.StringIO()
    reporter = Reporter(progress=progress)
    reporter.summary.total = 3
    run_waves([Wave("all", targets(3))], Probe(fail={"t2"}), FleetOptions(parallel=1), reporter)
    assert "fleet: 3/3 done, 1 failed: t2" in progress.getvalue()


def test_options_are_checked():
    for kwargs, message in [({"parallel": 0}, "--parallel"), ({"canary": -1}, "--canary"),
                            ({"max_failures": 0}, "--max-failures"), ({"on_error": "panic"}, "--on-error")]:
        with pytest.raises(UsageError, match=message):
            FleetOptions(**kwargs)


def test_an_unexpected_error_becomes_a_failed_result():
    def broken(target: Target) -> TargetResult:
        raise RuntimeError("postgresql://u:secret@h/db exploded")

    reporter = Reporter(keep=True)
    run_waves([Wave("all", targets(1))], broken, FleetOptions(), reporter)
    result = reporter.kept[0]
    assert result.error_kind == "internal" and "secret" not in result.error and "RuntimeError" in result.error
