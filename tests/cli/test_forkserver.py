"""The suite's fast CLI runs (tests/forkserver.py) give what a real `python -m runner` gives."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import forkserver
from helpers import ROOT, migrate_env, write_migrations


def _real(args: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    proc = subprocess.run([sys.executable, "-m", "runner", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60)
    return proc.returncode, proc.stdout, proc.stderr


def _untimed(run: tuple[int, str, str]) -> tuple[int, str, str]:
    code, stdout, stderr = run
    return code, stdout, re.sub(r"\d{4}-\d\d-\d\dT[\d:.]+Z", "<time>", stderr)


@pytest.fixture
def forks():
    client = forkserver.Client()
    yield client
    client.stop()


def test_exit_status_stdout_and_stderr_match_a_real_interpreter(tmp_path: Path, forks) -> None:
    write_migrations(tmp_path / "migrations", {"001_t.sql": "CREATE TABLE t (id int);"})
    (tmp_path / "migrate.toml").write_text('format = "json"\n', encoding="utf-8")
    cases = [
        ["--version"],
        [],  # the help, and exit 2
        ["status"],  # relative paths: the working directory's migrate.toml, migrations/ and migrate.db
        ["up", "--to", "nope"],  # a usage error: one line on stderr
        ["--database", "sqlite:///missing/x.db", "verify"],
        ["status", "--no-such-option"],
    ]
    env = migrate_env({"MIGRATE_LOG_FORMAT": "console"})
    for args in cases:
        fork = _untimed(forks.run(args, env, tmp_path, 60))
        assert fork == _untimed(_real(args, env, tmp_path)), args
    assert fork[0] == 2 and "--no-such-option" in fork[2]


def test_each_run_has_its_own_environment_and_directory(tmp_path: Path, forks) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = forks.run(["--database", "sqlite:///a.db", "up"], migrate_env({"MIGRATE_MIGRATIONS": str(tmp_path)}),
                      tmp_path / "a", 60)
    assert first[0] == 0, first
    assert (tmp_path / "a" / "a.db").exists()
    # The variable set for the first run is not seen by the second, nor its directory.
    second = forks.run(["--database", "sqlite:///b.db", "status"], migrate_env(), tmp_path / "b", 60)
    assert second[0] == 2 and "b/migrations" in second[2], second
    assert not (tmp_path / "b" / "b.db").exists()


def test_a_run_past_its_timeout_is_killed(tmp_path: Path, forks) -> None:
    # `wait` retries an unreachable server until its own timeout: far longer than the test's.
    args = ["--database", "postgresql://nobody@127.0.0.1:1/none", "wait", "--timeout", "60"]
    with pytest.raises(subprocess.TimeoutExpired):
        forks.run(args, migrate_env(), ROOT, 1.5)


def test_a_startup_environment_runs_a_real_interpreter() -> None:
    assert forkserver.needs_own_interpreter(migrate_env({"PYTHONPATH": "/elsewhere"}))
    assert forkserver.needs_own_interpreter(migrate_env({"LC_ALL": "C"}))
    assert not forkserver.needs_own_interpreter(migrate_env({"DATABASE_URL": "sqlite:///x.db"}))
