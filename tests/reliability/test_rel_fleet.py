"""Faults in a fleet run (`migrate fleet up`): a target that is unreachable, one that fails at its
third migration, one locked by another runner, and a SIGKILL of the fleet runner halfway.

The other targets finish (or stop per --on-error), each failure is reported on its target's JSON
line with its kind and reason, nothing leaks the runner's password, and a re-run applies exactly
what is missing: every migration ends up applied once per target (`_migrate_log`).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import psycopg
from psycopg import sql

from reliability import harness
from reliability.harness import FIGURES, Spawned, run
from runner.dialects.postgresql import schema_lock_key

IDS = [f"00{i}_step" for i in range(1, 6)]


def _migrations(folder: Path, sleep: float = 0.0) -> None:
    files = {f"{mid}.sql": f"CREATE TABLE fleet_{mid} (id int);\n" + (f"SELECT pg_sleep({sleep});\n" if sleep else "")
             for mid in IDS}
    harness.write(folder, files)


def _fleet(path: Path, targets: dict[str, str]) -> Path:
    path.write_text("".join(f'[targets.{name}]\nurl = "{url}"\n' for name, url in targets.items()), encoding="utf-8")
    return path


def _up(fleet: Path, folder: Path, *extra: str) -> list[str]:
    return ["--migrations", str(folder), "--format", "json", "--log-format", "json", "fleet", "up", "--fleet",
            str(fleet), "--lock-wait", "1s", "--no-compat", *extra]


def _lines(stdout: str) -> tuple[dict[str, dict], dict]:
    found = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    return {f["target"]: f for f in found if "target" in f}, next((f["summary"] for f in found if "summary" in f), {})


def _history(admin: str) -> list[str]:
    with harness.connect(admin) as conn:
        return harness.history_ids(conn)


def _applied_once(admin: str) -> None:
    with harness.connect(admin) as conn:
        assert harness.history_ids(conn) == IDS
        assert harness.log_counts(conn) == {mid: 1 for mid in IDS}, "a migration was applied twice"


def test_unreachable_failing_and_locked_targets(target, more_targets, tmp_path, folder):
    _migrations(folder)
    others = more_targets(4)
    fails_third, locked, fine = others[0], others[1], others[2:]
    missing_db = f"{target.name}_later"
    gone_url = harness.with_database(target.url, missing_db)  # created before the re-run
    with harness.connect(fails_third.admin) as conn:
        conn.execute("CREATE TABLE fleet_003_step (x int)")  # its third migration will fail
    fleet = _fleet(tmp_path / "fleet.toml", {"a-first": target.url, "b-third": fails_third.url,
                                             "c-locked": locked.url, "d-gone": gone_url,
                                             **{f"e-fine-{i}": t.url for i, t in enumerate(fine)}})
    held, release = threading.Event(), threading.Event()

    def other_runner() -> None:
        with psycopg.connect(locked.admin, autocommit=True, application_name="other-runner") as conn:
            conn.execute("SELECT pg_advisory_lock(%s, %s)", schema_lock_key("public"))
            held.set()
            release.wait(120)

    holder = threading.Thread(target=other_runner)
    holder.start()
    try:
        assert held.wait(10)
        first = run(*_up(fleet, folder, "--parallel", "3"))
    finally:
        release.set()
        holder.join()
    assert first.returncode == 1, first.describe()
    by_target, summary = _lines(first.stdout)
    assert len(by_target) == 6 and summary["failed"] == 3 and summary["succeeded"] == 3
    third = by_target["b-third"]
    assert (third["error_kind"], third["exit_code"]) == ("migration", 4) and "fleet_003_step" in third["error"]
    assert third["pending"] == IDS[2:]
    lock = by_target["c-locked"]
    assert (lock["error_kind"], lock["exit_code"]) == ("lock", 3) and "other-runner" in lock["error"]
    gone = by_target["d-gone"]
    assert (gone["error_kind"], gone["exit_code"]) == ("unreachable", 5) and missing_db in gone["error"]
    assert sorted(summary["failing"]) == ["b-third", "c-locked", "d-gone"]
    assert _history(fails_third.admin) == IDS[:2] and _history(locked.admin) == []
    for t in [target, *fine]:
        _applied_once(t.admin)
    FIGURES.add("fleet", targets=6, injected_faults=3, reported_faults=3)

    # Fix what was wrong; the re-run completes exactly what is missing.
    with harness.connect(fails_third.admin) as conn:
        conn.execute("DROP TABLE fleet_003_step")
    with harness.connect(target.admin) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(missing_db)))
    try:
        later_admin = harness.with_database(target.admin, missing_db)
        with harness.connect(later_admin) as conn:
            conn.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA public TO {}").format(sql.Identifier(target.role)))
        again = run(*_up(fleet, folder, "--parallel", "3"))
        assert again.returncode == 0, again.describe()
        by_target, summary = _lines(again.stdout)
        assert by_target["b-third"]["applied"] == IDS[2:]
        assert by_target["c-locked"]["applied"] == IDS and by_target["d-gone"]["applied"] == IDS
        assert all(by_target[n]["applied"] == [] for n in ("a-first", "e-fine-0", "e-fine-1"))
        for admin in (target.admin, fails_third.admin, locked.admin, later_admin, *(t.admin for t in fine)):
            _applied_once(admin)
    finally:
        with harness.connect(target.admin) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(missing_db)))


def test_on_error_stop_leaves_the_rest_for_the_rerun(target, more_targets, tmp_path, folder):
    _migrations(folder)
    others = more_targets(3)
    with harness.connect(others[0].admin) as conn:
        conn.execute("CREATE TABLE fleet_003_step (x int)")
    fleet = _fleet(tmp_path / "fleet.toml", {"a": target.url, "b": others[0].url, "c": others[1].url,
                                             "d": others[2].url})
    first = run(*_up(fleet, folder, "--parallel", "1", "--on-error", "stop"))
    assert first.returncode == 1
    by_target, summary = _lines(first.stdout)
    assert [by_target[n]["outcome"] for n in "abcd"] == ["ok", "failed", "skipped", "skipped"]
    assert "--on-error stop" in summary["stopped"] and "--on-error stop" in by_target["c"]["error"]
    assert _history(others[1].admin) == [] and _history(others[2].admin) == []
    with harness.connect(others[0].admin) as conn:
        conn.execute("DROP TABLE fleet_003_step")
    again = run(*_up(fleet, folder, "--parallel", "1", "--on-error", "stop"))
    assert again.returncode == 0, again.describe()
    assert [_lines(again.stdout)[0][n]["applied"] for n in "abcd"] == [[], IDS[2:], IDS, IDS]
    for t in [target, *others]:
        _applied_once(t.admin)


def test_sigkill_of_the_fleet_runner_halfway(target, more_targets, tmp_path, folder):
    _migrations(folder, sleep=0.15)
    all_targets = [target, *more_targets(7)]
    fleet = _fleet(tmp_path / "fleet.toml", {f"t{i}": t.url for i, t in enumerate(all_targets)})
    proc = Spawned(*_up(fleet, folder, "--parallel", "2"))

    def halfway() -> bool:
        states = [len(_history(t.admin)) for t in all_targets]
        return sum(1 for s in states if s == len(IDS)) >= 2 and any(0 < s < len(IDS) for s in states)

    harness.wait_until(halfway, timeout=60, interval=0.02, what="some targets done, one in progress")
    assert proc.kill(), "the fleet run finished before the kill"
    before = {}
    for t in all_targets:
        harness.wait_for_sessions_gone(t.admin, t.name)
        assert harness.advisory_locks(t.admin, t.name) == [], "a lock outlived the killed runner"
        before[t.name] = _history(t.admin)
        assert before[t.name] == IDS[:len(before[t.name])], "not a prefix: half a migration?"
    assert any(len(h) < len(IDS) for h in before.values())
    again = run(*_up(fleet, folder, "--parallel", "2"))
    assert again.returncode == 0, again.describe()
    by_target, _ = _lines(again.stdout)
    for i, t in enumerate(all_targets):
        missing = IDS[len(before[t.name]):]
        assert by_target[f"t{i}"]["applied"] == missing, "the re-run must apply exactly what is missing"
        _applied_once(t.admin)
    FIGURES.add("fleet", kills=1, targets_after_kill=len(all_targets))
