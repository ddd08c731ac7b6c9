"""The yoyo seam (runner.yoyo_adapter), against real databases.

.ci/run also runs this file with the lowest yoyo the project claims (pyproject.toml), so what the
runner takes from yoyo is checked at both ends of the range.
"""

from __future__ import annotations

import importlib.metadata
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import run_migrate
from helpers import write_migrations
from runner import history, yoyo_adapter
from runner.db import connect, transaction
from runner.errors import MigrationFileError
from runner.sources import load_migrations, read_migration

PY_MIGRATION = '''\
from yoyo import step

__depends__ = {"001_base"}

step("CREATE TABLE py_made (id int)", "DROP TABLE py_made")
step(
    "INSERT INTO py_made VALUES (1)",
    "DELETE FROM py_made",
)
'''


def test_claimed_range_holds_the_installed_yoyo() -> None:
    requirement = next(r for r in importlib.metadata.requires("migrate-runner") if r.startswith("yoyo-migrations"))
    version = tuple(int(p) for p in importlib.metadata.version("yoyo-migrations").split(".")[:2])
    assert ">=8.2" in requirement and "<10" in requirement
    assert (8, 2) <= version < (10, 0)


def test_only_the_adapter_imports_yoyo() -> None:
    root = Path(__file__).resolve().parents[2]
    importers = sorted(str(p.relative_to(root)) for folder in ("runner", "compat") for p in (root / folder).rglob("*.py")
                       if any(line.lstrip().startswith(("import yoyo", "from yoyo"))
                              for line in p.read_text(encoding="utf-8").splitlines()))
    assert importers == ["runner/yoyo_adapter.py"]


def test_hash_and_topological_order() -> None:
    assert yoyo_adapter.migration_hash("017_x") == yoyo_adapter.migration_hash("017_x") != yoyo_adapter.migration_hash("018_x")
    assert len(yoyo_adapter.migration_hash("017_x")) == 64
    assert yoyo_adapter.topological_order(["a", "b", "c"], {"a": {"c"}, "b": set(), "c": set()}) == ["b", "c", "a"]
    with pytest.raises(ValueError, match="a"):
        yoyo_adapter.topological_order(["a", "b"], {"a": {"b"}, "b": {"a"}})


def test_python_steps_load_with_lines_and_rollback(tmp_path: Path) -> None:
    path = tmp_path / "002_py.py"
    path.write_text(PY_MIGRATION, encoding="utf-8")
    migration = read_migration(path)
    assert migration.format == "python" and migration.depends == ("001_base",)
    assert [s.step.line for s in migration.python_steps] == [5, 6] and migration.has_down
    bad = tmp_path / "003_bad.py"
    bad.write_text("from yoyo import step\nstep(\n", encoding="utf-8")
    with pytest.raises(MigrationFileError, match="syntax error"):
        read_migration(bad)


@pytest.mark.parametrize("kind", ["postgresql", "sqlite"])
def test_steps_run_in_the_runners_transaction_and_tables_match_yoyo(kind: str, pg_url: str, tmp_path: Path) -> None:
    url = pg_url if kind == "postgresql" else f"sqlite:///{tmp_path / 'seam.db'}"
    folder = write_migrations(tmp_path / "m", {"001_base.sql": "CREATE TABLE base (id int);", "002_py.py": PY_MIGRATION})
    migrations = load_migrations(folder)
    with connect(url) as db:
        history.ensure_tables(db)
        assert all(db.table_exists(t) for t in (yoyo_adapter.MIGRATION_TABLE, yoyo_adapter.LOG_TABLE,
                                                yoyo_adapter.VERSION_TABLE))
        assert db.scalar(f"SELECT max(version) FROM {db.qualify(yoyo_adapter.VERSION_TABLE)}") == 2
        with pytest.raises(RuntimeError), transaction(db):  # the steps roll back with the runner's transaction
            db.dialect.execute_all(db, db.dialect.migration_search_path(db, local=True))  # as the engine does
            db.execute("CREATE TABLE base (id int)")
            yoyo_adapter.run_python_steps(db, migrations[1], "apply")
            raise RuntimeError("the runner's transaction fails after the steps")
        relation = "public.py_made" if kind == "postgresql" else "py_made"
        assert not db.dialect.plain_table_exists(db, "py_made") and not db.in_transaction
    # the real thing: up, then yoyo's own CLI reads what the runner wrote
    assert run_migrate("up", "--database", url, "--migrations", str(folder)).returncode == 0
    yoyo_url = url.replace("postgresql://", "postgresql+psycopg://")
    listed = subprocess.run([sys.executable, "-m", "yoyo", "list", "--batch", "--no-config-file", "--database",
                             yoyo_url, str(folder)], capture_output=True, text=True)
    if listed.returncode != 0:  # yoyo has no __main__ in some versions: use its console script
        listed = subprocess.run([str(Path(sys.executable).parent / "yoyo"), "list", "--batch", "--no-config-file",
                                 "--database", yoyo_url, str(folder)], capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[0] for line in listed.stdout.splitlines() if line.strip()[:1] in ("A", "U")] == ["A", "A"]
    with connect(url) as db:
        assert yoyo_adapter.applied_ids(db) == ["001_base", "002_py"]
        assert db.scalar(f"SELECT count(*) FROM {relation}") == 1


def test_a_failing_python_step_is_located(tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", {"001_py.py": "from yoyo import step\n\nstep('CREATE TABLE t (id int)')\n"
                                                            "step('INSERT INTO nope VALUES (1)')\n"})
    result = run_migrate("up", "--database", f"sqlite:///{tmp_path / 'x.db'}", "--migrations", str(folder))
    assert result.returncode == 4
    assert "001_py.py:4: migration 001_py failed in step `INSERT INTO nope VALUES (1)`" in result.stderr
    assert "Traceback" not in result.stderr
    assert sqlite3.connect(tmp_path / "x.db").execute(
        "SELECT count(*) FROM sqlite_master WHERE name = 't'").fetchone() == (0,)
