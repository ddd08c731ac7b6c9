"""yoyo's post-apply hooks (``post-apply*`` files): run after every `migrate up` that applied
something, each in its own transaction, never recorded as applied; a failed hook is run again by
the next `migrate up`, with no manual step."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from helpers import run_migrate
from helpers import history, scalar, write_migrations

HOOK = "-- rebuilt after every up\nCREATE OR REPLACE VIEW v_t1 AS SELECT id FROM t1;\nINSERT INTO hook_runs DEFAULT VALUES;\n"
BROKEN_HOOK = "INSERT INTO hook_runs DEFAULT VALUES;\nINSERT INTO nope VALUES (1);\n"
FILES = {"000_runs.sql": "CREATE TABLE hook_runs (n serial);", "001_t1.sql": "CREATE TABLE t1 (id int);",
         "post-apply.sql": HOOK}


def _up(url: str, folder: Path, *extra: str):
    return run_migrate("up", "--database", url, "--migrations", str(folder), "--format", "json", *extra)


def test_hook_runs_after_an_up_that_applies_and_not_after_a_no_op(pg_url: str, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", FILES)
    plan = _up(pg_url, folder, "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert [(p["id"], p["post_apply"]) for p in json.loads(plan.stdout)["plan"]] == [
        ("000_runs", False), ("001_t1", False), ("post-apply", True)]

    first = _up(pg_url, folder)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["post_apply"] == ["post-apply"]
    assert scalar(pg_url, "SELECT count(*) FROM hook_runs") == 1
    assert history(pg_url) == ["000_runs", "001_t1"]  # the hook is never recorded as applied
    status = run_migrate("status", "--database", pg_url, "--migrations", str(folder), "--format", "json")
    assert json.loads(status.stdout)["pending"] == [] and json.loads(status.stdout)["head"] == "001_t1"
    assert scalar(pg_url, "SELECT count(*) FROM _migrate_log WHERE operation = 'post-apply'") == 1

    again = _up(pg_url, folder)
    assert again.returncode == 0 and json.loads(again.stdout)["post_apply"] == []
    assert scalar(pg_url, "SELECT count(*) FROM hook_runs") == 1

    write_migrations(folder, {"002_t2.sql": "CREATE TABLE t2 (id int);"})
    assert json.loads(_up(pg_url, folder).stdout)["post_apply"] == ["post-apply"]
    assert scalar(pg_url, "SELECT count(*) FROM hook_runs") == 2
    # The snapshot is taken after the hook: the view it builds is expected, not drift.
    doctor = run_migrate("doctor", "--database", pg_url, "--migrations", str(folder))
    assert doctor.returncode == 0, doctor.stdout


def test_failed_hook_keeps_the_migrations_and_the_next_up_runs_it_again(pg_url: str, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", {**FILES, "post-apply.sql": BROKEN_HOOK})
    failed = _up(pg_url, folder)
    assert failed.returncode == 4 and "Traceback" not in failed.stderr
    last = failed.stderr.strip().splitlines()[-1]
    assert ("post-apply.sql:2: post-apply hook post-apply failed in statement `INSERT INTO nope VALUES (1);`"
            in last), last
    assert "the next `migrate up` runs the post-apply hooks again" in last
    assert history(pg_url) == ["000_runs", "001_t1"]
    assert scalar(pg_url, "SELECT count(*) FROM hook_runs") == 0  # the hook's transaction rolled back whole

    assert _up(pg_url, folder).returncode == 4  # nothing to apply, but the hook is still due
    write_migrations(folder, {"post-apply.sql": HOOK})
    fixed = _up(pg_url, folder)
    assert fixed.returncode == 0, fixed.stderr
    assert json.loads(fixed.stdout) | {"duration_s": 0} == {"database": pg_url, "applied": [], "pending_before": [],
                                                            "duration_s": 0, "shims": [], "post_apply": ["post-apply"]}
    assert scalar(pg_url, "SELECT count(*) FROM hook_runs") == 1
    assert json.loads(_up(pg_url, folder).stdout)["post_apply"] == []


def test_hooks_run_in_name_order_on_sqlite_too(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'hooks.db'}"
    folder = write_migrations(tmp_path / "m", {
        "001_log.sql": "CREATE TABLE hook_log (name TEXT);",
        "post-apply.sql": "INSERT INTO hook_log VALUES ('post-apply');",
        "post-apply2.py": "from yoyo import step\nstep(\"INSERT INTO hook_log VALUES ('post-apply2')\")\n",
    })
    result = _up(url, folder)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["post_apply"] == ["post-apply", "post-apply2"]
    with sqlite3.connect(tmp_path / "hooks.db") as conn:
        assert [r[0] for r in conn.execute("SELECT name FROM hook_log ORDER BY rowid")] == ["post-apply", "post-apply2"]
        assert [r[0] for r in conn.execute("SELECT migration_id FROM _migrate_history")] == ["001_log"]


def test_due_hook_runs_even_when_nothing_stays_applied(pg_url: str, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", {"001_t1.sql": "CREATE TABLE t1 (id int);",
                                               "001_t1.rollback.sql": "DROP TABLE t1;", "post-apply.sql": BROKEN_HOOK})
    assert _up(pg_url, folder).returncode == 4
    assert run_migrate("down", "--database", pg_url, "--migrations", str(folder)).returncode == 0
    for name in ("001_t1.sql", "001_t1.rollback.sql"):
        (folder / name).unlink()
    write_migrations(folder, {"post-apply.sql": "SELECT 1;"})
    result = _up(pg_url, folder)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert json.loads(result.stdout)["post_apply"] == ["post-apply"] and history(pg_url) == []
