"""Batches on a fresh database hold only statements without effects outside the transaction,
decided from the parse tree (issue 10, item 6): a batch rolled back and applied again one by one
repeats nothing."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import history, run_migrate, scalar, write_migrations


def _up(url: str, folder: Path):
    return run_migrate("--database", url, "--migrations", str(folder), "--log-format", "json", "up")


def _batches(stderr: str) -> dict[str, int]:
    events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    return {e["migration"]: e["batch"] for e in events if e["event"] == "applying" and "batch" in e}


FAILING = {"009_fails.sql": "CREATE TABLE twice (id int);\nCREATE TABLE twice (id int);"}


def test_create_table_as_calling_nextval_is_not_batched_and_runs_once(pg_url: str, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", {
        # Not batchable (a data change): applied alone, committed; the sequence is then outside any batch.
        "001_seq.sql": "CREATE SEQUENCE tickets;\nCREATE TABLE issued (n bigint);\nINSERT INTO issued VALUES (0);",
        "002_ctas.sql": "CREATE TABLE first_ticket AS SELECT nextval('tickets') AS n;",
        "003_a.sql": "CREATE TABLE a (id int);",
        **FAILING,
    })
    result = _up(pg_url, folder)
    assert result.returncode == 4, result.stderr
    assert "002_ctas" not in _batches(result.stderr), result.stderr
    # nextval is not transactional: a batch rolled back and re-run would have taken two numbers.
    assert scalar(pg_url, "SELECT n FROM first_ticket") == 1, result.stderr
    assert scalar(pg_url, "SELECT last_value FROM tickets") == 1, result.stderr
    assert history(pg_url) == ["001_seq", "002_ctas", "003_a"]


def test_no_batch_once_an_event_trigger_exists(pg_url: str, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", {
        "001_audit.sql": "CREATE SEQUENCE ddl_count;\n"
                         "CREATE FUNCTION count_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$ BEGIN "
                         "PERFORM nextval('ddl_count'); END $$;\n"
                         "CREATE EVENT TRIGGER count_ddl ON ddl_command_end EXECUTE FUNCTION count_ddl();",
        "002_a.sql": "CREATE TABLE a (id int);",
        "003_b.sql": "CREATE TABLE b (id int);",
        **FAILING,
    })
    result = _up(pg_url, folder)
    assert result.returncode == 4, result.stderr
    assert _batches(result.stderr) == {}, result.stderr
    # 002 and 003 once each, and the first statement of 009 (the second failed): no DDL ran twice.
    assert scalar(pg_url, "SELECT last_value FROM ddl_count") == 3, result.stderr
    assert history(pg_url) == ["001_audit", "002_a", "003_b"], result.stderr


def test_schema_migrations_after_a_data_migration_still_batch(pg_url: str, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", {
        "001_t.sql": "CREATE TABLE t (id int PRIMARY KEY, created timestamptz DEFAULT now(), "
                     "state text CHECK (state <> ''));",
        "002_u.sql": "CREATE TABLE u (id int);",
        "003_seed.sql": "INSERT INTO t (id) VALUES (1);",
        "004_idx.sql": "CREATE INDEX u_id ON u (id);",
        "005_col.sql": "ALTER TABLE u ADD COLUMN note text DEFAULT 'none' NOT NULL;",
        "006_view.sql": "CREATE VIEW recent AS SELECT * FROM t WHERE created > now() - interval '1 day';",
        "099_tail.sql": "CREATE TABLE tail (id int);",  # the last migration stores the snapshot: alone
    })
    result = _up(pg_url, folder)
    assert result.returncode == 0, result.stderr
    assert _batches(result.stderr) == {"001_t": 2, "002_u": 2, "004_idx": 3, "005_col": 3, "006_view": 3}


