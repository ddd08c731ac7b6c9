"""Racing commands (issue 10, items 7 and 8): the shim registry and the catalog stay in step.

Processes are ordered by what the server reports (pg_locks, pg_stat_activity) and by what the
runner logs, never by sleeping.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import psycopg
import pytest
from psycopg import sql

from reliability import harness
from reliability.harness import db_args
from reliability.issue10 import M001, M017, all_rows, cli, examples, history, ok, one, role_settings, safe

SHIM = "compat_017.remediation_workflow_catalog"
RETYPE_019 = ("-- A column the compat_017 shim exposes changes type: `up` rebuilds the shim around it.\n"
              "ALTER TABLE remediation_workflow_catalog ALTER COLUMN workflow_name TYPE text;\n")


@dataclass
class Background:
    """A `migrate` process whose stderr can be read while it runs."""

    proc: subprocess.Popen
    stdout: Path
    stderr: Path

    @classmethod
    def start(cls, tmp_path: Path, label: str, *args: str, env: dict[str, str] | None = None) -> "Background":
        out, err = tmp_path / f"{label}.out", tmp_path / f"{label}.err"
        full_env = harness._env(env)
        with open(out, "w") as o, open(err, "w") as e:
            proc = subprocess.Popen([sys.executable, "-m", "runner", *args], cwd=harness.ROOT, env=full_env,
                                    stdout=o, stderr=e)
        return cls(proc, out, err)

    def log(self) -> str:
        return self.stderr.read_text(encoding="utf-8", errors="replace")

    def finish(self, timeout: float = 90) -> tuple[int, str, str]:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"still running after {timeout}s:\n{self.log()}") from None
        return code, self.stdout.read_text(encoding="utf-8"), self.log()


def _with_app(url: str, name: str) -> str:
    return f"{url}?{urlencode({'application_name': name})}"


def _waiting_on_a_lock(url: str, application_name: str) -> bool:
    return bool(one(url, "SELECT count(*) FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a "
                         "ON a.pid = l.pid WHERE NOT l.granted AND a.application_name = %s "
                         "AND a.datname = pg_catalog.current_database()", (application_name,)))


def _registry_and_views(url: str) -> list[tuple[str, str, bool]]:
    """(shim name, registry status, whether its view exists) for every registry row."""
    return [(name, status, exists) for name, status, exists in all_rows(url, """
        SELECT s.name, s.status, EXISTS (
            SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = s.compat_schema AND c.relname = s.view_name AND c.relkind = 'v')
        FROM public._migrate_shims s ORDER BY s.id""")]


def test_shims_drop_racing_up_leaves_registry_and_views_in_step(pg_url, tmp_path):
    """Issue 10 item 7: `shims drop --force` waiting on a consumer's lock and an `up` that rebuilds the same
    view: afterwards every registry row says 'active' exactly when its view exists, and at least one of the
    two commands succeeded."""
    folder = examples(tmp_path / "migrations")
    ok(cli(pg_url, folder, "up"))
    assert _registry_and_views(pg_url) == [(SHIM, "active", True)]
    consumer = psycopg.connect(pg_url, application_name="consumer-017")
    drop = up = None
    try:
        consumer.execute(f"SELECT * FROM {SHIM}").fetchall()  # AccessShareLock on the view until rollback
        slow = {"MIGRATE_LOCK_TIMEOUT": "60s"}
        drop = Background.start(tmp_path, "drop", *db_args(_with_app(pg_url, "migrate-drop"), folder, "shims", "drop",
                                                           SHIM, "--force"), env=slow)
        harness.wait_until(lambda: _waiting_on_a_lock(pg_url, "migrate-drop") or drop.proc.poll() is not None,
                           timeout=30, what="`shims drop` waiting for the consumer's lock on the view")
        assert drop.proc.poll() is None, drop.finish()
        harness.write(folder, {"019_retype_workflow_name.sql": RETYPE_019})
        up = Background.start(tmp_path, "up", *db_args(_with_app(pg_url, "migrate-up"), folder, "up",
                                                       "--lock-timeout", "60s"), env=slow)
        # `up` is either queued on a lock in the server or polling the runner's lock (it logs that it waits).
        harness.wait_until(lambda: _waiting_on_a_lock(pg_url, "migrate-up")
                           or "waiting" in up.log() or up.proc.poll() is not None,
                           timeout=30, what="`up` waiting behind the drop")
    finally:
        consumer.rollback()
        consumer.close()
        results = {label: p.finish() for label, p in (("drop", drop), ("up", up)) if p is not None}
    for label, (code, _, err) in results.items():
        assert "Traceback" not in err, f"{label}: {err}"
    assert any(code == 0 for code, _, _ in results.values()), results
    rows = _registry_and_views(pg_url)
    inconsistent = [r for r in rows if (r[1] == "active") != r[2]]
    assert not inconsistent, f"registry and catalog disagree (name, status, view exists): {rows}; " \
                             f"drop -> {results['drop'][0]}, up -> {results['up'][0]}"


# ----------------------------------------------------------------------------- item 8
def _set_empty_search_path(url: str, role: str) -> None:
    with safe(url) as conn:
        database = conn.execute("SELECT pg_catalog.current_database()").fetchone()[0]
        conn.execute(sql.SQL("ALTER ROLE {} IN DATABASE {} SET search_path = ''").format(
            sql.Identifier(role), sql.Identifier(database)))


@pytest.mark.parametrize("undo", ["route --reset", "shims drop --force", "down"])
def test_undoing_a_route_restores_an_empty_search_path(pg_url, make_role, tmp_path, undo):
    """Issue 10 item 8: a role whose database setting was `search_path = ''` is routed, then the route is
    undone (route --reset, shims drop --force, or down of 018): exit 0 and the setting is '' again."""
    folder = examples(tmp_path / "migrations")
    ok(cli(pg_url, folder, "up"))
    role = make_role()
    _set_empty_search_path(pg_url, role)
    before = role_settings(pg_url, role)
    assert before == ['search_path=""'], before
    ok(cli(pg_url, folder, "shims", "route", role, "--as-of", "017"))
    routed = role_settings(pg_url, role)
    assert routed != before and any("compat_017" in s for s in routed or []), routed
    if undo == "route --reset":
        result = cli(pg_url, folder, "shims", "route", role, "--reset")
    elif undo == "shims drop --force":
        result = cli(pg_url, folder, "shims", "drop", SHIM, "--force")
    else:
        result = cli(pg_url, folder, "down")
    assert result.returncode == 0, result.describe()
    assert role_settings(pg_url, role) == before
    if undo == "down":
        assert history(pg_url) == [M001, M017]
