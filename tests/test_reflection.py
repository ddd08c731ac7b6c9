"""runner.reflection: the snapshot read through SQLAlchemy's Inspector, against real PostgreSQL and SQLite.

It must give what runner.snapshot.take_snapshot gives (same keys, same spelling of types and
index definitions), except for the differences its docstring lists, each pinned here; and it
must borrow the runner's connection without ending its transaction or opening another one.
"""

from __future__ import annotations

import re
import sqlite3
import psycopg
import pytest
import sqlalchemy
from psycopg.pq import TransactionStatus

from runner.db import connect, transaction
from runner.reflection import UNKNOWN_TYPE, BorrowedConnectionError, borrowed_engine, reflect_snapshot
from runner.snapshot import diff_snapshots, take_snapshot
from conftest import ROOT, run_migrate

_SA = tuple(int(p) for p in re.findall(r"\d+", sqlalchemy.__version__)[:3])
REFLECTS_DOMAINS = _SA >= (2, 0, 29)  # before: a domain column reflects as its base type
REFLECTS_OPCLASSES = _SA >= (2, 1)  # before: an index column's operator class is not reflected

# Types whose spelling survives the round trip through SQLAlchemy's type objects.
PG_SCHEMA = """
CREATE TYPE "Mood" AS ENUM ('ok', 'sad');
CREATE TABLE a (
  id bigint PRIMARY KEY, name varchar(20) NOT NULL, note text, code char(3), flag char, price numeric(10,2),
  ratio numeric, whole numeric(10), at timestamptz, at3 timestamp(3), t time, tz timetz, d date, b boolean,
  r real, dp double precision, s smallint, i int, ints int[], texts text[][], j json, jb jsonb, u uuid,
  raw bytea, span interval, span2 interval day to second(3), bits bit(3), vbits varbit(5), mood "Mood",
  addr inet, cash money, serial_id serial, doc tsvector, rng int4range, "Mixed Case" text, "select" int);
CREATE INDEX a_name ON a (name);
CREATE UNIQUE INDEX a_partial ON a (i) WHERE note IS NOT NULL;
CREATE INDEX a_multi ON a USING btree (name DESC NULLS LAST, i) INCLUDE (note) WITH (fillfactor=70);
CREATE INDEX a_asc_nulls_first ON a (d NULLS FIRST);
CREATE INDEX a_gin ON a USING gin (jb);
CREATE TABLE "Other T" (id int, "Odd Col" int NOT NULL, CONSTRAINT "Other uq" UNIQUE (id));
CREATE INDEX "Other idx" ON "Other T" ("Odd Col");
CREATE VIEW a_names AS SELECT name, price FROM a;
CREATE MATERIALIZED VIEW a_mat AS SELECT id, at FROM a;
CREATE TABLE _migrate_history (x int);
CREATE SCHEMA compat_017;
CREATE VIEW compat_017.a AS SELECT id FROM public.a;
"""


def test_postgres_reflection_equals_the_catalog_queries(pg_conn):
    pg_conn.execute(PG_SCHEMA)
    expected = take_snapshot(pg_conn, "postgresql", "public")
    assert len(expected["tables"]["a"]["columns"]) == 36 and len(expected["indexes"]) == 8
    assert reflect_snapshot(pg_conn, "postgresql", "public") == expected


def test_sqlite_reflection_equals_the_catalog_queries(tmp_path):
    conn = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    conn.executescript("""
        CREATE TABLE a (id INTEGER PRIMARY KEY, name TEXT NOT NULL, v VARCHAR(20), b BOOLEAN, ts TIMESTAMP,
                        big BIGINT, raw BLOB, r REAL, untyped, "Odd Col" TEXT UNIQUE);
        CREATE INDEX a_name ON a (name);
        CREATE UNIQUE INDEX "a odd" ON a ("Odd Col", v);
        CREATE VIEW a__v017 AS SELECT id FROM a;
        CREATE VIEW report AS SELECT name, v FROM a;
        CREATE TABLE _migrate_history (x);
    """)
    expected = take_snapshot(conn, "sqlite", None)
    assert list(expected["tables"]) == ["a"] and list(expected["views"]) == ["report"]
    assert sorted(expected["indexes"]) == ["a odd", "a_name"]
    assert reflect_snapshot(conn, "sqlite", None) == expected


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_example_migrations_at_head_reflect_identically(dialect, pg_url, sqlite_url, example_migrations):
    url = pg_url if dialect == "postgresql" else sqlite_url
    result = run_migrate("up", "--database", url, "--migrations", str(example_migrations))
    assert result.returncode == 0, result
    with connect(url) as db:
        expected = take_snapshot(db.connection, db.dialect, db.schema)
        assert "container_image" in [c["name"] for c in expected["tables"]["remediation_workflow_catalog"]["columns"]]
        assert reflect_snapshot(db.connection, db.dialect, db.schema) == expected
        # Stored by `up` (runner.snapshot): a live reflection finds no drift against it.
        from runner.snapshot import latest_snapshot

        stored = latest_snapshot(db.connection, db.dialect, db.schema)
        assert stored is not None
        assert diff_snapshots(stored.snapshot, reflect_snapshot(db.connection, db.dialect, db.schema)) == []


# ----------------------------------------------------------------------------- the documented differences

def test_postgres_differences_are_the_documented_ones(pg_conn):
    pg_conn.execute("""
        CREATE DOMAIN positive AS integer NOT NULL CHECK (VALUE > 0);
        CREATE TABLE t (id int, gone int, doc xml, spot point, who name, kind "char", qty positive, tail int,
                        note text);
        ALTER TABLE t DROP COLUMN gone;
        CREATE INDEX t_lower ON t (lower(who::text));
        CREATE INDEX t_ops ON t (note text_pattern_ops);
        CREATE TABLE parted (id int, k int) PARTITION BY RANGE (k);
    """)
    queries = take_snapshot(pg_conn, "postgresql", "public")
    inspector = reflect_snapshot(pg_conn, "postgresql", "public")
    q = {c["name"]: c for c in queries["tables"]["t"]["columns"]}
    i = {c["name"]: c for c in inspector["tables"]["t"]["columns"]}
    assert (q["tail"]["num"], i["tail"]["num"]) == (8, 7)  # attnum keeps the dropped column's gap
    assert (q["doc"]["type"], i["doc"]["type"]) == ("xml", UNKNOWN_TYPE)
    assert (q["spot"]["type"], i["spot"]["type"]) == ("point", UNKNOWN_TYPE)
    assert (q["who"]["type"], i["who"]["type"]) == ("name", "character varying")
    assert (q["kind"]["type"], i["kind"]["type"]) == ('"char"', "character varying")
    assert (q["qty"]["type"], q["qty"]["nullable"]) == ("positive", True)
    assert (i["qty"]["type"], i["qty"]["nullable"]) == ("positive" if REFLECTS_DOMAINS else "integer", False)
    assert (queries["tables"]["parted"]["kind"], inspector["tables"]["parted"]["kind"]) == ("partitioned table",
                                                                                           "table")
    assert queries["indexes"]["t_lower"]["definition"].endswith("(lower((who)::text))")
    assert inspector["indexes"]["t_lower"]["definition"].endswith("(lower(who::text))")
    assert queries["indexes"]["t_ops"]["definition"].endswith("(note text_pattern_ops)")
    assert inspector["indexes"]["t_ops"]["definition"].endswith("(note text_pattern_ops)" if REFLECTS_OPCLASSES
                                                                else "(note)")
    # Nothing else differs: the same column names, in the same order, and the same relations.
    assert [c["name"] for c in queries["tables"]["t"]["columns"]] == [c["name"] for c in
                                                                     inspector["tables"]["t"]["columns"]]
    expected = {("column-retyped", "t.doc"), ("column-retyped", "t.spot"), ("column-retyped", "t.who"),
                ("column-retyped", "t.kind"), ("nullability-changed", "t.qty"), ("index-changed", "t_lower")}
    expected |= {("column-retyped", "t.qty")} if not REFLECTS_DOMAINS else set()
    expected |= {("index-changed", "t_ops")} if not REFLECTS_OPCLASSES else set()
    assert {(c.change, c.object) for c in diff_snapshots(queries, inspector)} == expected


def test_sqlite_differences_are_the_documented_ones(tmp_path):
    conn = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    conn.executescript("""
        CREATE TABLE t (id int, price numeric(10,2), cash money, name TEXT);
        create index  t_name on t(name);
        CREATE INDEX t_desc ON t (id DESC);
        CREATE INDEX t_lower ON t (lower(name));
    """)
    queries = take_snapshot(conn, "sqlite", None)
    inspector = reflect_snapshot(conn, "sqlite", None)
    types = [(q["type"], i["type"]) for q, i in zip(queries["tables"]["t"]["columns"],
                                                     inspector["tables"]["t"]["columns"])]
    assert types == [("int", "integer"), ("numeric(10,2)", "numeric(10, 2)"), ("money", "numeric"), ("text", "text")]
    assert queries["indexes"]["t_name"]["definition"] == "CREATE INDEX t_name on t(name)"
    assert inspector["indexes"]["t_name"]["definition"] == "CREATE INDEX t_name ON t (name)"
    assert inspector["indexes"]["t_desc"]["definition"] == "CREATE INDEX t_desc ON t (id)"
    assert "t_lower" in queries["indexes"] and "t_lower" not in inspector["indexes"]


# ----------------------------------------------------------------------------- borrowing the connection

def test_postgres_reflection_stays_inside_the_callers_transaction(pg_url):
    with connect(pg_url) as db:
        with pytest.raises(RuntimeError, match="keep nothing"):
            with transaction(db):
                db.connection.execute("CREATE TABLE uncommitted (id int)")
                snap = reflect_snapshot(db.connection, db.dialect, db.schema)
                # It saw the caller's uncommitted table, so it read on the caller's connection and
                # transaction; and it left that transaction open (no COMMIT, no ROLLBACK).
                assert "uncommitted" in snap["tables"]
                assert db.connection.info.transaction_status == TransactionStatus.INTRANS
                raise RuntimeError("keep nothing")
        assert not db.connection.closed
        assert "uncommitted" not in take_snapshot(db.connection, db.dialect, db.schema)["tables"]


def test_postgres_reflection_opens_no_second_session(pg_url):
    with psycopg.connect(pg_url, autocommit=True) as conn:
        count = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        before = conn.execute(count).fetchone()[0]
        with borrowed_engine(conn, "postgresql") as engine, engine.connect() as one, engine.connect() as two:
            assert one.connection.dbapi_connection is two.connection.dbapi_connection
            assert one.exec_driver_sql("SELECT pg_backend_pid()").scalar() == conn.info.backend_pid
            assert one.exec_driver_sql(count).scalar() == before
            with pytest.raises(BorrowedConnectionError):  # what a second connection would need
                engine.pool._creator()  # type: ignore[attr-defined]
        assert not conn.closed and conn.execute("SELECT 1").fetchone() == (1,)


def test_sqlite_reflection_stays_inside_the_callers_transaction_and_installs_nothing(tmp_path):
    conn = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    conn.execute("CREATE TABLE kept (id INTEGER)")
    conn.execute("BEGIN")
    conn.execute("CREATE TABLE uncommitted (id INTEGER)")
    snap = reflect_snapshot(conn, "sqlite", None)
    assert set(snap["tables"]) == {"kept", "uncommitted"} and conn.in_transaction
    conn.execute("ROLLBACK")
    assert set(take_snapshot(conn, "sqlite", None)["tables"]) == {"kept"}
    with pytest.raises(sqlite3.OperationalError, match="REGEXP"):  # SQLAlchemy's function stayed off it
        conn.execute("SELECT 'a' REGEXP 'a'")


def test_reflection_does_not_import_sqlalchemy_for_take_snapshot():
    """The snapshot hook (on the `up` path) uses runner.snapshot, which must not pull SQLAlchemy in."""
    import subprocess
    import sys

    code = "import sys, runner.snapshot, runner.doctor; print('sqlalchemy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"
