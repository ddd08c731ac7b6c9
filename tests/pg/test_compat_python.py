"""compat.python.rename_column in a .py yoyo migration."""

from __future__ import annotations

import shutil
from pathlib import Path

import psycopg
import pytest

from compat.declarations import parse_rename
from compat.python import rename_column
from helpers import ROOT, run_migrate
from runner.sources import load_migrations
from compat_support import COLUMNS_017, TABLE

PY_018 = f'''"""Rename the execution bundle (Python migration)."""
from yoyo import step
from compat.python import rename_column

rename_column("{TABLE}", "execution_bundle", "container_image", window="14d")
step("ALTER TABLE {TABLE} ADD COLUMN container_digest VARCHAR(80)",
     "ALTER TABLE {TABLE} DROP COLUMN container_digest")
'''


def python_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "migrations"
    folder.mkdir()
    for name in ("001_create_remediation_workflow_catalog", "017_add_execution_bundle"):
        for suffix in (".sql", ".rollback.sql"):
            shutil.copy(ROOT / "migrations" / f"{name}{suffix}", folder)
    (folder / "018_rename_bundle.py").write_text(PY_018)
    return folder


def test_declares_and_adds_the_step(tmp_path: Path):
    files = load_migrations(python_folder(tmp_path))
    m = files[-1]
    assert m.format == "python" and len(m.python_steps) == 2
    (directive,) = m.directives_named("compat")
    assert directive.value == f"rename {TABLE}.execution_bundle -> container_image window=14d"
    assert directive.line == 0
    d = parse_rename(directive.value)
    assert (d.table, d.old, d.new, d.window.days) == (TABLE, "execution_bundle", "container_image", 14)


def test_applies_with_a_shim_and_rolls_back(tmp_path: Path, pg_url: str):
    folder = python_folder(tmp_path)
    args = ("--database", pg_url, "--migrations", str(folder))
    result = run_migrate("up", *args)
    assert result.returncode == 0, result.stderr
    with psycopg.connect(pg_url, autocommit=True, options="-c search_path=compat_017,public") as old:
        assert [c.name for c in old.execute(f"SELECT * FROM {TABLE}").description] == COLUMNS_017
    assert run_migrate("down", *args).returncode == 0
    with psycopg.connect(pg_url) as conn:
        cols = [r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = %s AND table_schema = 'public'",
            (TABLE,)).fetchall()]
        assert "execution_bundle" in cols and "container_image" not in cols
        assert conn.execute("SELECT to_regnamespace('compat_017')").fetchone()[0] is None


def test_exotic_names_are_quoted_in_the_directive():
    module = {"__yoyo_collector__": _Collector(), "__directives__": []}
    exec(  # noqa: S102 - simulates yoyo loading a migration module
        "from compat.python import rename_column\n"
        "text = rename_column('App.Weird Table', 'Old\"Name', 'new', until='2027-01-31', expose='both')\n",
        module,
    )
    assert module["text"] == 'rename "App"."Weird Table"."Old""Name" -> new until=2027-02-01T00:00:00+00:00 expose=both'
    assert module["__directives__"] == [("compat", module["text"])]
    (apply, rollback) = module["__yoyo_collector__"].steps[0]
    assert apply == 'ALTER TABLE "App"."Weird Table" RENAME COLUMN "Old""Name" TO "new"'
    assert rollback == 'ALTER TABLE "App"."Weird Table" RENAME COLUMN "new" TO "Old""Name"'


class _Collector:
    """Records add_step calls like yoyo's StepCollector (only the arguments matter here)."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, str]] = []

    def add_step(self, apply: str, rollback: str) -> None:
        self.steps.append((apply, rollback))


def test_bad_arguments_and_outside_a_migration():
    with pytest.raises(RuntimeError, match="must be called at module level in a yoyo .py migration"):
        rename_column("t", "a", "b")
    with pytest.raises(ValueError, match="either window= or until="):
        rename_column("t", "a", "b", window="1d", until="2027-01-01")
    with pytest.raises(ValueError, match="expose"):
        rename_column("t", "a", "b", expose="new")
    with pytest.raises(ValueError, match="window"):
        rename_column("t", "a", "b", window="soon")
