"""Transaction control at the top level of a transactional migration is refused before anything
runs (issue 10, item 5): exit 2, file:line of the statement, and the fix."""

from __future__ import annotations

from pathlib import Path

from helpers import history, run_migrate, scalar, tables, write_migrations


def _run(url: str, folder: Path, *args: str):
    return run_migrate("--database", url, "--migrations", str(folder), *args)


def _refused(result, where: str, words: str) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    last = result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr
    assert where in last and f"{words} at the top level of a transactional migration" in last, last
    assert "nothing was run" in last and "drop the BEGIN/COMMIT wrapper" in last, last
    return last


def test_commit_in_the_middle_is_refused_and_nothing_runs(pg_url: str, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", {"001_accounts.sql": "CREATE TABLE accounts (id int, balance int);\n"
                                                                   "INSERT INTO accounts VALUES (1, 100);"})
    assert _run(pg_url, folder, "up").returncode == 0
    write_migrations(folder, {
        "002_other.sql": "CREATE TABLE other (id int);",
        "003_pay.sql": "-- pay interest\nUPDATE accounts SET balance = balance + 10;\nCOMMIT;\n"
                       "UPDATE accounts SET balance = balance * 2;\nSELECT 1/0;\n",
    })
    last = _refused(_run(pg_url, folder, "up"), "003_pay.sql:3", "COMMIT")
    assert "`-- transactional: false`" in last
    _refused(_run(pg_url, folder, "up", "--dry-run"), "003_pay.sql:3", "COMMIT")
    # Nothing ran: not the update before the COMMIT, not even the migration before this one.
    assert scalar(pg_url, "SELECT balance FROM accounts") == 100
    assert history(pg_url) == ["001_accounts"] and "other" not in tables(pg_url)


def test_rollback_after_create_table_is_refused(pg_url: str, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", {
        "001_ledger.sql": "CREATE TABLE ledger (id int);\nROLLBACK;\nCREATE INDEX ledger_id ON ledger (id);\n"})
    _refused(_run(pg_url, folder, "up"), "001_ledger.sql:2", "ROLLBACK")
    assert history(pg_url) == [] and "ledger" not in tables(pg_url)


def test_a_psql_style_wrapper_is_refused_at_its_begin(pg_url: str, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", {
        "001_wrapped.sql": "-- a file written for psql -f\n\nBEGIN;\nCREATE TABLE wrapped (id int);\nCOMMIT;\n"})
    _refused(_run(pg_url, folder, "up"), "001_wrapped.sql:3", "BEGIN")
    assert history(pg_url) == [] and "wrapped" not in tables(pg_url)


def test_non_transactional_files_and_bodies_are_allowed(pg_url: str, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", {
        "001_own.sql": "-- transactional: false\nBEGIN;\nCREATE TABLE own (id int);\nCOMMIT;\n",
        "002_bodies.sql": "CREATE PROCEDURE batch_commit() LANGUAGE plpgsql AS $$ BEGIN COMMIT; END $$;\n"
                          "DO $$ BEGIN PERFORM 1; END $$;\n"
                          "CREATE FUNCTION rollback_word() RETURNS text LANGUAGE sql AS $f$ SELECT 'ROLLBACK; END;' $f$;\n"
                          "CREATE TABLE savepoint_log (\"begin\" int, \"commit\" text DEFAULT 'COMMIT');\n",
        "003_goose.sql": "-- +goose NO TRANSACTION\n-- +goose Up\nBEGIN;\nCREATE TABLE goose_own (id int);\nCOMMIT;\n",
    })
    result = _run(pg_url, folder, "up")
    assert result.returncode == 0, result.stderr
    assert history(pg_url) == ["001_own", "002_bodies", "003_goose"]
    assert {"own", "savepoint_log", "goose_own"} <= tables(pg_url)


def test_goose_files_and_rollback_files_are_checked(pg_url: str, tmp_path: Path) -> None:
    goose = write_migrations(tmp_path / "g", {
        "001_g.sql": "-- +goose Up\n-- +goose StatementBegin\nCREATE TABLE g (id int);\nSAVEPOINT s;\n"
                     "-- +goose StatementEnd\n-- +goose Down\nDROP TABLE g;\n"})
    last = _refused(_run(pg_url, goose, "up"), "001_g.sql:4", "SAVEPOINT")
    assert "`-- +goose NO TRANSACTION`" in last

    folder = write_migrations(tmp_path / "m", {"001_a.sql": "CREATE TABLE a (id int);",
                                              "001_a.rollback.sql": "BEGIN;\nDROP TABLE a;\nEND;\n"})
    assert _run(pg_url, folder, "up").returncode == 0
    _refused(_run(pg_url, folder, "down"), "001_a.rollback.sql:1", "BEGIN")
    assert history(pg_url) == ["001_a"] and "a" in tables(pg_url)


def test_sqlite_only_syntax_falls_back_to_the_lexer(sqlite_url: str, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", {
        "001_t.sql": "CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT);\nBEGIN IMMEDIATE;\n"
                     "INSERT INTO t VALUES (1);\nCOMMIT;\n"})
    _refused(_run(sqlite_url, folder, "up"), "001_t.sql:2", "BEGIN")


