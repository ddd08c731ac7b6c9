"""Migration files: goose format, yoyo format, and refusing bad files before anything runs."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest

from helpers import run_migrate
from helpers import history, tables, write_migrations
from runner.errors import MigrationFileError
from runner.goose import parse_goose
from runner.sources import load_migrations, read_migration

GOOSE_FUNCTION = """-- +goose Up
CREATE TABLE accounts (id serial PRIMARY KEY, balance int NOT NULL DEFAULT 0);

-- +goose StatementBegin
CREATE FUNCTION bump(a int) RETURNS int AS $$
BEGIN
    -- a semicolon inside the body;
    RETURN a + 1;
END;
$$ LANGUAGE plpgsql;
-- +goose StatementEnd

DO $body$ BEGIN INSERT INTO accounts (balance) VALUES (bump(41)); END $body$;

-- +goose Down
DROP FUNCTION bump(int);
DROP TABLE accounts;
"""


def test_goose_parse_sections_and_lines(tmp_path: Path) -> None:
    parsed = parse_goose(GOOSE_FUNCTION, "x.sql")
    assert [s.line for s in parsed.up] == [2, 5, 13]
    assert parsed.up[1].sql.startswith("CREATE FUNCTION bump") and parsed.up[1].sql.endswith("plpgsql;")
    assert [s.sql for s in parsed.down] == ["DROP FUNCTION bump(int);", "DROP TABLE accounts;"]
    assert parsed.transactional


def test_goose_file_applies_and_rolls_back(pg_url: str, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", {
        "00001_accounts.sql": GOOSE_FUNCTION,
        "00002_index.sql": "-- +goose NO TRANSACTION\n-- +goose Up\n"
                           "CREATE INDEX CONCURRENTLY accounts_balance_idx ON accounts (balance);\n"
                           "-- +goose Down\nDROP INDEX CONCURRENTLY accounts_balance_idx;\n",
    })
    args = ("--database", pg_url, "--migrations", str(folder))
    result = run_migrate("up", *args)
    assert result.returncode == 0, result.stderr
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT balance FROM accounts").fetchone()[0] == 42
        assert conn.execute("SELECT to_regclass('accounts_balance_idx')").fetchone()[0] is not None
    assert history(pg_url) == ["00001_accounts", "00002_index"]
    down = run_migrate("down", "--steps", "2", *args)
    assert down.returncode == 0, down.stderr
    assert "accounts" not in tables(pg_url) and history(pg_url) == []


@pytest.mark.parametrize("files, fragment, line", [
    ({"1_a.sql": "SELECT 1;", "01_b.sql": "SELECT 2;"}, "duplicate version 1", None),
    ({"1_a.sql": "-- +goose Up\n-- +goose StatementBegin\nSELECT 1;\n"}, "no matching StatementEnd", 2),
    ({"1_a.sql": "-- +goose Up\nSELECT 1;\n-- +goose StatementEnd\n"}, "StatementEnd without a StatementBegin", 3),
    ({"1_a.sql": "-- +goose Down\nDROP TABLE x;\n"}, "no '-- +goose Up' section", 1),
    ({"1_a.sql": "SELECT 1;\n-- +goose Up\nSELECT 2;\n"}, "SQL before '-- +goose Up'", 1),
    ({"1_a.py": "from yoyo import step\nstep('SELECT 1'\n"}, "syntax error", 2),
    ({"1_a.sql": "-- transactional: maybe\nSELECT 1;"}, "transactional: expected true or false", 1),
])
def test_bad_files_refused_before_anything_runs(pg_url: str, tmp_path: Path, files: dict[str, str],
                                                fragment: str, line: int | None) -> None:
    folder = write_migrations(tmp_path / "m", {"0_first.sql": "CREATE TABLE first_table (id int);", **files})
    result = run_migrate("up", "--database", pg_url, "--migrations", str(folder))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert fragment in lines[0]
    bad = next(iter(files))
    assert bad in lines[0] or "1_a" in lines[0]
    if line:
        assert f":{line}:" in lines[0]
    assert tables(pg_url) == set()  # nothing ran, not even the valid first migration


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", {"1_ok.sql": "SELECT 1;"})
    os.symlink(tmp_path / "nowhere.sql", folder / "2_broken.sql")
    with pytest.raises(MigrationFileError, match="2_broken.sql: cannot read file"):
        load_migrations(folder)
    (folder / "2_broken.sql").unlink()
    (folder / "2_latin1.sql").write_bytes(b"SELECT 1;\n-- caf\xe9\n")
    with pytest.raises(MigrationFileError, match=r"2_latin1.sql:2: not valid UTF-8"):
        load_migrations(folder)


def test_bom_crlf_and_checksum_normalisation(tmp_path: Path) -> None:
    plain = write_migrations(tmp_path / "a", {"1_x.sql": "-- depends:\nCREATE TABLE x (id int);\nSELECT 1;\n"})
    windows = tmp_path / "b"
    windows.mkdir()
    (windows / "1_x.sql").write_bytes(b"\xef\xbb\xbf-- depends:\r\nCREATE TABLE x (id int);\r\nSELECT 1;\r\n")
    a, b = read_migration(plain / "1_x.sql"), read_migration(windows / "1_x.sql")
    assert a.checksum == b.checksum
    assert [s.line for s in b.up] == [2, 3]


def test_directives_collected_from_header_only(tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", {
        "1_x.sql": "-- compat: rename t.a -> b window=1d\n-- Depends: 0_base\n-- note: not a directive\n"
                   "ALTER TABLE t RENAME a TO b;\n-- compat: ignored after the first statement\n",
        "0_base.sql": "CREATE TABLE t (a int);",
    })
    migration = read_migration(folder / "1_x.sql")
    assert [(d.name, d.line) for d in migration.directives] == [("compat", 1), ("depends", 2)]
    assert migration.depends == ("0_base",)


PY_STRING_STEPS = """from yoyo import group, step

step("CREATE TABLE a (id int)", "DROP TABLE a")
group(
    step("CREATE TABLE b (id int)",
         "DROP TABLE nope_b"),
    step("INSERT INTO nope VALUES (1)"),
)
"""
PY_FUNCTION_STEP = """
def fill(conn):
    cur = conn.cursor()
    cur.execute("CREATE TABLE c (id int)")
    cur.execute("INSERT INTO missing VALUES (1)")


step(fill)
"""


@pytest.mark.parametrize("source, expected", [
    (PY_STRING_STEPS, ":7: migration 1_steps failed in step `INSERT INTO nope VALUES (1)`: relation \"nope\""),
    (PY_FUNCTION_STEP, ":5: migration 1_steps failed in step fill(): relation \"missing\""),
])
def test_failing_python_step_names_its_line_and_step(pg_url: str, tmp_path: Path, source: str, expected: str) -> None:
    folder = write_migrations(tmp_path / "m", {"1_steps.py": source})
    result = run_migrate("up", "--database", pg_url, "--migrations", str(folder))
    assert result.returncode == 4 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert f"1_steps.py{expected}" in last and last.endswith("rolled back"), last
    assert tables(pg_url) & {"a", "b", "c"} == set() and history(pg_url) == []


def test_failing_python_rollback_step_names_its_line(pg_url: str, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", {"1_steps.py": PY_STRING_STEPS.replace('step("INSERT INTO nope VALUES (1)")', 'step("SELECT 1")')})
    assert run_migrate("up", "--database", pg_url, "--migrations", str(folder)).returncode == 0
    result = run_migrate("down", "--database", pg_url, "--migrations", str(folder))
    assert result.returncode == 4 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "1_steps.py:5: migration 1_steps failed in step `DROP TABLE nope_b`" in last, last
    assert {"a", "b"} <= tables(pg_url) and history(pg_url) == ["1_steps"]
