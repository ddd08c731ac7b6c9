"""A migration no hook wants goes to PostgreSQL as ONE query (statements, bookkeeping, COMMIT).

Each test ends its folder with a plain ``tail`` migration: the run's last migration is the one the
snapshot hook wants (it goes the classic way, in three round trips), so the migration under test
must not be the last.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg
import pytest

from helpers import run_migrate
from helpers import history, scalar, tables, write_migrations
from runner.db import connect
from runner.dialects import ScriptFailed

TAIL = {"099_tail.sql": "CREATE TABLE tail (id int);"}


def _up(url: str, folder: Path, *extra: str):
    return run_migrate("up", "--database", url, "--migrations", str(folder), *extra)


def _failure(url: str, folder: Path) -> str:
    """`up` fails with exit 4, no traceback; its last stderr line (the error)."""
    result = _up(url, folder)
    assert result.returncode == 4, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr.strip().splitlines()[-1]


def test_the_server_receives_migration_bookkeeping_and_commit_in_one_query(pg_url: str, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", {"001_slow.sql": "SELECT pg_sleep(1.5);\nCREATE TABLE slow (id int);",
                                               **TAIL})
    seen: list[str] = []

    def watch() -> None:
        deadline = time.monotonic() + 20
        with psycopg.connect(pg_url, autocommit=True) as conn:
            while time.monotonic() < deadline and not seen:
                row = conn.execute("SELECT query FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'migrate' "
                                   "AND query LIKE '%pg_sleep(1.5)%'").fetchone()
                if row:
                    seen.append(row[0])
                time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    result = _up(pg_url, folder)
    watcher.join()
    assert result.returncode == 0, result.stderr
    assert seen, "the runner's query was never seen"
    query = seen[0]  # the first track_activity_query_size (1 kB) characters of it
    assert query.startswith("BEGIN") and "_migrate_history" in query, query
    assert query.index("pg_sleep") < query.index("CREATE TABLE slow") < query.index("_migrate_history"), query
    assert history(pg_url) == ["001_slow", "099_tail"]
    assert scalar(pg_url, "SELECT duration_ms FROM _migrate_history WHERE migration_id = '001_slow'") >= 1500


def test_a_runtime_error_names_its_statement(pg_url: str, tmp_path: Path) -> None:
    """No error position from the server: the statement is found from the results before the error."""
    folder = write_migrations(tmp_path / "m", {
        "001_dup.sql": "CREATE TABLE a (id int PRIMARY KEY);\nINSERT INTO a VALUES (1);\n"
                       "INSERT INTO a VALUES (1);\nCREATE TABLE never (id int);",
        **TAIL,
    })
    last = _failure(pg_url, folder)
    assert "001_dup.sql:3" in last and "INSERT INTO a VALUES (1)" in last and "duplicate key" in last, last
    assert "rolled back" in last
    assert not {"a", "never", "tail"} & tables(pg_url) and history(pg_url) == []


def test_a_syntax_error_names_its_statement_and_runs_nothing(pg_url: str, tmp_path: Path) -> None:
    """The server parses the whole query first; its error position points into the failing statement."""
    folder = write_migrations(tmp_path / "m", {
        "001_ok.sql": "CREATE TABLE ok (id int);",
        "002_bad.sql": "-- header\nCREATE TABLE partial (id int);\nINSERT INTO partial VALUES (1);\n"
                       "SELEC broken FROM nowhere;\nCREATE TABLE never (id int);",
        **TAIL,
    })
    last = _failure(pg_url, folder)
    assert "002_bad.sql:4" in last and "SELEC broken" in last and "rolled back" in last, last
    assert "LINE " not in last  # the server's excerpt counts lines of the query as sent, not of the file
    assert "partial" not in tables(pg_url) and history(pg_url) == ["001_ok"]


def test_a_goose_block_of_several_statements_goes_the_classic_way(pg_url: str, tmp_path: Path) -> None:
    """A StatementBegin/End block may hold several statements: counting results would blame the wrong one."""
    folder = write_migrations(tmp_path / "m", {
        "001_goose.sql": "-- +goose Up\n-- +goose StatementBegin\nCREATE TABLE g1 (id int);\nSELECT 1 / 0;\n"
                         "-- +goose StatementEnd\nCREATE TABLE g2 (id int);\n",
        **TAIL,
    })
    last = _failure(pg_url, folder)
    assert "001_goose.sql:3" in last and "division by zero" in last, last
    assert "g1" not in tables(pg_url)


def test_session_settings_do_not_leak_from_one_query_into_the_next(pg_url: str, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", {
        "001_settings.sql": "CREATE SCHEMA elsewhere;\nSET search_path TO elsewhere;\nSET statement_timeout = 50;\n"
                            "PREPARE p AS SELECT 1;\nCREATE TEMP TABLE scratch (id int);\nCREATE TABLE in_elsewhere (id int);",
        "002_check.sql": "SELECT pg_sleep(0.2);\nPREPARE p AS SELECT 2;\nCREATE TEMP TABLE scratch (id int);\n"
                         "CREATE TABLE public.seen AS SELECT current_setting('search_path') AS p;",
        **TAIL,
    })
    result = _up(pg_url, folder)
    assert result.returncode == 0, result.stderr
    assert scalar(pg_url, "SELECT p FROM public.seen") == '"$user", public'
    assert history(pg_url) == ["001_settings", "002_check", "099_tail"]


def test_run_script_names_the_failing_statement(pg_url: str) -> None:
    with connect(pg_url) as db:
        run = db.dialect.run_script
        db.execute("CREATE TABLE public.t (id int PRIMARY KEY)")
        with pytest.raises(ScriptFailed) as failed:
            run(db, ["BEGIN", "INSERT INTO public.t VALUES (1)", "INSERT INTO public.t VALUES (1)", "COMMIT"])
        assert failed.value.index == 2 and failed.value.error.sqlstate == "23505"
        db.execute("ROLLBACK")
        with pytest.raises(ScriptFailed) as failed:  # a trailing comment cannot swallow the next statement
            run(db, ["INSERT INTO public.t VALUES (2) -- two", "SELEC 3", "INSERT INTO public.t VALUES (4)"])
        assert failed.value.index == 1 and failed.value.error.sqlstate == "42601"
        assert db.scalar("SELECT count(*) FROM public.t") == 0  # parsed first: nothing ran
        run(db, ["INSERT INTO public.t VALUES (5) -- five", "INSERT INTO public.t VALUES (6)"])
        assert db.scalar("SELECT array_agg(id ORDER BY id) FROM public.t") == [5, 6]


# ----------------------------------------------------------------------------- batches on a fresh database

def _events(stderr: str) -> list[dict]:
    import json

    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def _batches(stderr: str) -> dict[str, int]:
    return {e["migration"]: e["batch"] for e in _events(stderr) if e["event"] == "applying" and "batch" in e}


def test_a_fresh_database_gets_its_schema_migrations_in_batches(pg_url: str, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", {
        **{f"00{i}_t{i}.sql": f"-- table {i}\nCREATE TABLE t{i} (id int PRIMARY KEY);\nCOMMENT ON TABLE t{i} IS 't';"
           for i in range(1, 5)},
        "005_seed.sql": "INSERT INTO t1 VALUES (1);",
        "006_idx.sql": "CREATE INDEX t2_id ON t2 (id);",
        "007_fk.sql": "ALTER TABLE t3 ADD COLUMN t1_id int REFERENCES t1 (id);",
        **TAIL,
    })
    result = _up(pg_url, folder)
    assert result.returncode == 0, result.stderr
    assert _batches(result.stderr) == {"001_t1": 4, "002_t2": 4, "003_t3": 4, "004_t4": 4, "006_idx": 2, "007_fk": 2}
    applied = [e["migration"] for e in _events(result.stderr) if e["event"] == "applied"]
    ids = ["001_t1", "002_t2", "003_t3", "004_t4", "005_seed", "006_idx", "007_fk", "099_tail"]
    assert applied == ids and history(pg_url) == ids
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM _migrate_log WHERE operation = 'apply'").fetchone()[0] == 8
        assert conn.execute("SELECT count(*) FROM _yoyo_migration").fetchone()[0] == 8
        durations = conn.execute("SELECT array_agg(duration_ms) FROM _migrate_history").fetchone()[0]
        assert all(d is not None and 0 <= d < 10_000 for d in durations)
    assert run_migrate("verify", "--database", pg_url, "--migrations", str(folder)).returncode == 0


def test_a_failure_in_a_batch_applies_its_migrations_one_by_one(pg_url: str, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", {
        "001_a.sql": "CREATE TABLE a (id int);",
        "002_b.sql": "CREATE TABLE b (id int);",
        "003_again.sql": "-- oops\nCREATE TABLE c (id int);\nCREATE TABLE a (id int);",
        "004_d.sql": "CREATE TABLE d (id int);",
        **TAIL,
    })
    result = _up(pg_url, folder)
    assert result.returncode == 4
    assert _batches(result.stderr) == {"001_a": 4, "002_b": 4, "003_again": 4, "004_d": 4}
    assert any(e["event"].startswith("batch rolled back") for e in _events(result.stderr))
    last = result.stderr.strip().splitlines()[-1]
    assert "003_again.sql:3" in last and "already exists" in last and "rolled back" in last, last
    assert history(pg_url) == ["001_a", "002_b"] and {"a", "b"} <= tables(pg_url)
    assert not {"c", "d"} & tables(pg_url)


def test_a_rolled_back_batch_leaves_no_prepared_bookkeeping_behind(pg_url: str, tmp_path: Path) -> None:
    """A batch's bookkeeping is a prepared statement, which a ROLLBACK does not drop: the next batch
    on the same connection prepares it again."""
    from runner import history as runner_history
    from runner.config import Settings
    from runner.engine import BatchFailed, Engine
    from runner.sources import load_folder

    folder = write_migrations(tmp_path / "m", {
        "001_a.sql": "CREATE TABLE a (id int);", "002_a_again.sql": "CREATE TABLE a (id int);",
        "003_b.sql": "CREATE TABLE b (id int);", "004_c.sql": "CREATE TABLE c (id int);",
    })
    migrations, _ = load_folder(folder)
    with connect(pg_url) as db:
        runner_history.ensure_tables(db)
        engine = Engine(db, Settings(database=pg_url, migrations=folder))
        with pytest.raises(BatchFailed, match="already exists"):
            engine.apply_batch(migrations[:2])
        assert db.scalar("SELECT count(*) FROM pg_catalog.pg_prepared_statements "
                         "WHERE name = 'migrate_bookkeeping'") == 0
        engine.apply_batch(migrations[2:])
        engine.make_durable()
        assert db.scalar("SELECT count(*) FROM pg_catalog.pg_prepared_statements "
                         "WHERE name = 'migrate_bookkeeping'") == 0
    assert history(pg_url) == ["003_b", "004_c"]
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT migration_id, operation, checksum, by FROM _migrate_log ORDER BY id").fetchall()
        assert [r[:2] for r in rows] == [("003_b", "apply"), ("004_c", "apply")]
        assert [r[2] for r in rows] == [m.checksum for m in migrations[2:]] and all(r[3] for r in rows)
        assert conn.execute("SELECT array_agg(migration_id ORDER BY migration_id) FROM _yoyo_migration"
                            ).fetchone()[0] == ["003_b", "004_c"]


SETS_DATESTYLE = """CREATE FUNCTION public.{name}({arg}) RETURNS {returns} LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_catalog.set_config('DateStyle', 'ISO, DMY', false);
  RETURN {value};
END $$;"""


@pytest.mark.parametrize("migrations", [
    {  # a cast to a domain in an ADD COLUMN default: evaluated once, with the domain's CHECK
        "001_fn.sql": SETS_DATESTYLE.format(name="note", arg="v text", returns="boolean", value="true"),
        "002_dom.sql": "CREATE DOMAIN public.checked AS text CHECK (public.note(VALUE));",
        "003_tab.sql": "CREATE TABLE public.t (id int);",
        "004_col.sql": "ALTER TABLE public.t ADD COLUMN c text DEFAULT 'x'::public.checked;",
    },
    {  # a trigger on the runner's own table: it fires on the bookkeeping of the batch
        "001_fn.sql": SETS_DATESTYLE.format(name="audit", arg="", returns="trigger", value="NULL"),
        "002_trg.sql": "CREATE TRIGGER audit AFTER INSERT ON public._migrate_log FOR EACH ROW "
                       "EXECUTE FUNCTION public.audit();",
    },
], ids=["domain-cast", "trigger-on-bookkeeping"])
def test_code_a_migration_runs_keeps_it_out_of_batches(pg_url: str, tmp_path: Path, migrations: dict) -> None:
    """Review of the batches (helper session): a migration whose statements make the server run a
    function is not batched, so what the function changes in the session (here DateStyle) is reset
    before the next migration, as one by one. Found as a hole in the whitelist: such a function
    could also change the bookkeeping or repeat a nextval() when a batch is applied again."""
    folder = write_migrations(tmp_path / "m", {
        **migrations, "005_ev.sql": "CREATE TABLE public.ev (d date DEFAULT '01/02/2024');", **TAIL})
    result = _up(pg_url, folder)
    assert result.returncode == 0, result.stderr
    default = scalar(pg_url, "SELECT pg_get_expr(adbin, adrelid) FROM pg_attrdef WHERE adrelid = 'public.ev'::regclass")
    assert default == "'2024-01-02'::date", (default, _batches(result.stderr))
    assert history(pg_url) == [name[:-len(".sql")] for name in sorted([*migrations, "005_ev.sql", "099_tail.sql"])]


def test_a_batch_commits_only_with_all_of_its_bookkeeping(pg_url: str, tmp_path: Path) -> None:
    """Whatever a batched migration does to the history (here: what only code running in the batch
    could do), the batch is rolled back rather than committed with migrations not recorded."""
    from runner import history as runner_history
    from runner.config import Settings
    from runner.engine import BatchFailed, Engine
    from runner.sources import load_folder

    folder = write_migrations(tmp_path / "m", {
        "001_a.sql": "CREATE TABLE a (id int);", "002_forget.sql": "DELETE FROM public._migrate_history;",
        "003_b.sql": "CREATE TABLE b (id int);",
    })
    migrations, _ = load_folder(folder)
    with connect(pg_url) as db:
        runner_history.ensure_tables(db)
        engine = Engine(db, Settings(database=pg_url, migrations=folder))
        with pytest.raises(BatchFailed, match="history rows of this batch are not all there"):
            engine.apply_batch(migrations)
        assert not db.scalar("SELECT count(*) FROM public._migrate_history")
        assert db.scalar("SELECT to_regclass('public.a')") is None


def test_a_schema_name_with_a_dollar_tag_in_it(pg_url: str, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", {"001_a.sql": "CREATE TABLE public.a (id int);",
                                               "002_b.sql": "CREATE TABLE public.b (id int);", **TAIL})
    refused = run_migrate("up", "--database", pg_url, "--migrations", str(folder), env={"MIGRATE_SCHEMA": "a%s"})
    assert refused.returncode == 2 and refused.stderr.strip().splitlines()[-1] == (
        "migrate: error: MIGRATE_SCHEMA (environment): schema a%s: a '%' in the runner's schema name is not supported")
    assert not tables(pg_url)
    refused = run_migrate("up", "--database", f"{pg_url}?schema=a%25s", "--migrations", str(folder))
    assert refused.returncode == 2 and refused.stderr.strip().splitlines()[-1].endswith(
        "schema=a%s: a '%' in it is not supported") and not tables(pg_url)
    schema = "odd$migrate_batch$ 100"
    result = run_migrate("up", "--database", pg_url, "--migrations", str(folder), env={"MIGRATE_SCHEMA": schema})
    assert result.returncode == 0, result.stderr
    assert _batches(result.stderr) == {"001_a": 2, "002_b": 2}
    with psycopg.connect(pg_url) as conn:
        assert conn.execute(f'SELECT count(*) FROM "{schema}"._migrate_history').fetchone()[0] == 3


def test_no_batches_where_a_search_path_puts_pg_catalog_after_another_schema(pg_url: str, tmp_path: Path) -> None:
    """There, an unqualified ``text`` may be a domain of the other schema's (statement_kinds.builtins_first)."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA app")
        conn.execute(f"ALTER DATABASE {conn.info.dbname} SET search_path = app, pg_catalog, public")
    folder = write_migrations(tmp_path / "m", {"001_a.sql": "CREATE TABLE public.a (id int);",
                                               "002_b.sql": "CREATE TABLE public.b (id int);", **TAIL})
    result = _up(pg_url, folder)
    assert result.returncode == 0, result.stderr
    assert _batches(result.stderr) == {}


def test_temporary_objects_do_not_outlive_their_migration_in_a_batch(pg_url: str, tmp_path: Path) -> None:
    # One by one, 002's view reads its own table; were 001's temporary table still there, the
    # name would resolve to it (pg_temp comes first) and the view would be temporary too.
    folder = write_migrations(tmp_path / "m", {
        "001_scratch.sql": "CREATE TEMP TABLE scratch (id int);",
        "002_view.sql": "CREATE TABLE scratch (id int, name text);\nCREATE VIEW named AS SELECT * FROM scratch;",
        **TAIL,
    })
    result = _up(pg_url, folder)
    assert result.returncode == 0, result.stderr
    assert _batches(result.stderr) == {"001_scratch": 2, "002_view": 2}
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT relnamespace::regnamespace::text FROM pg_class WHERE relname = 'named'"
                            ).fetchall() == [("public",)]
        assert [r[0] for r in conn.execute("SELECT column_name FROM information_schema.columns "
                                           "WHERE table_name = 'named' ORDER BY ordinal_position")] == ["id", "name"]


def test_a_literal_is_what_libpq_would_quote(pg_url: str) -> None:
    from psycopg.sql import Literal

    values = [None, "", "plain", "0101_create_t101", "über ✓ 日本", "a'b", "back\\slash", "'; DROP TABLE t; --",
              "tab\tnew\nline", "$$dollar$$", "x" * 10_000]
    with connect(pg_url) as db:
        for standard in ("on", "off"):
            db.execute(f"SET standard_conforming_strings = {standard}")
            for value in values:
                quoted = db.dialect.literal(db, value)
                assert quoted == Literal(value).as_string(db.connection), (standard, value)
                assert db.scalar(f"SELECT {quoted}::text") == value, (standard, value)
        with pytest.raises(psycopg.DataError):
            db.dialect.literal(db, "nul\x00byte")  # refused, as libpq refuses it


@pytest.mark.parametrize("encoding", ["UTF8", "LATIN1", "WIN1252", "SJIS", "BIG5", "GBK", "GB18030", "UHC", "EUC_JP"])
def test_a_literal_is_what_libpq_would_quote_in_other_client_encodings(pg_url: str, encoding: str) -> None:
    from psycopg.sql import Literal

    values = ["plain", "café", "ソ表", "€", "ΣΑΣ", "𝔘nicode", "a\"b;--", "x" * 50_000, "\t\n\r\x7f"]
    with connect(pg_url) as db:
        db.execute(f"SET client_encoding = '{encoding}'")
        for standard in ("on", "off"):
            db.execute(f"SET standard_conforming_strings = {standard}")
            for value in values:
                try:
                    slow = Literal(value).as_string(db.connection)
                except UnicodeError:
                    continue  # not representable: the fast path fails too, when the query is sent
                assert db.dialect.literal(db, value) == slow, (encoding, standard, value[:10])
                assert db.scalar(f"SELECT {slow}::text") == value


def test_no_batches_once_the_database_is_not_fresh(pg_url: str, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", {"001_a.sql": "CREATE TABLE a (id int);"})
    assert _up(pg_url, folder).returncode == 0
    write_migrations(folder, {"002_b.sql": "CREATE TABLE b (id int);", "003_c.sql": "CREATE TABLE c (id int);", **TAIL})
    later = _up(pg_url, folder)
    assert later.returncode == 0 and _batches(later.stderr) == {}

    other = tmp_path / "other"
    with psycopg.connect(other_url := pg_url, autocommit=True) as conn:  # a table nobody recorded
        conn.execute("CREATE SCHEMA app; CREATE TABLE app.users (id int)")
        conn.execute("DROP TABLE _migrate_history, _migrate_log, a, b, c, tail; DELETE FROM _yoyo_migration")
    write_migrations(other, {"001_x.sql": "CREATE TABLE x (id int);", "002_y.sql": "CREATE TABLE y (id int);", **TAIL})
    result = _up(other_url, other)
    assert result.returncode == 0, result.stderr
    assert _batches(result.stderr) == {}
