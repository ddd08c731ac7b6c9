"""Shapes on PostgreSQL: every shape change presented to each pinned version (compat.shapes)."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from compat.declarations import DeclarationError, parse_shape
from compat.hook import CompatHook
from compat.shapes import touched_tables
from runner.config import CompatSettings, Settings
from runner.errors import MigrationFailed
from runner.hooks import MigrationContext
from runner.migration import Statement
from compat_support import migration, pg_runner, shims_of

AUTO = Settings(compat=CompatSettings(mode="auto"))


def cols(conn, schema, name):
    return [r[0] for r in conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped "
        "ORDER BY attnum", (sql.Identifier(schema, name).as_string(conn),)).fetchall()]


def types(conn, schema, name):
    return [r[0] for r in conn.execute(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
        "AND NOT attisdropped ORDER BY attnum", (sql.Identifier(schema, name).as_string(conn),)).fetchall()]


def consumer(url, version):
    return psycopg.connect(url, autocommit=True, options=f"-c search_path=compat_{version},public")


def base(r):
    r.apply(migration("001_orders", ["CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL, qty int DEFAULT 1, "
                                     "note text)", "CREATE TABLE users (id serial PRIMARY KEY, name text)"]))
    r.connection.execute("INSERT INTO orders (item, qty, note) VALUES ('apple', 2, 'n1')")
    r.connection.execute("INSERT INTO users (name) VALUES ('ann')")


def test_added_column_hidden_and_inserts_take_its_default(pg_conn, pg_url):
    r = pg_runner(pg_conn, AUTO)
    base(r)
    r.apply(migration("002_add", "ALTER TABLE orders ADD COLUMN status text NOT NULL DEFAULT 'new'"))
    assert cols(pg_conn, "compat_001", "orders") == ["id", "item", "qty", "note"]
    with consumer(pg_url, "001") as c:
        assert [d.name for d in c.execute("SELECT * FROM orders").description] == ["id", "item", "qty", "note"]
        c.execute("INSERT INTO orders (item) VALUES ('pear')")
    assert pg_conn.execute("SELECT qty, status FROM orders WHERE item = 'pear'").fetchone() == (1, "new")
    (shim,) = shims_of(pg_conn)
    assert shim.shape == {"hides": ["status"]} and shim.to_json()["shape"] == {"hides": ["status"]}


def test_pinned_version_protected_against_a_later_change_to_another_table(pg_conn, pg_url):
    r = pg_runner(pg_conn, AUTO)
    base(r)
    r.apply(migration("002_rename", "ALTER TABLE orders RENAME COLUMN note TO remark"))
    # compat_001 exists for orders only: users is unchanged and reached through public
    assert [s.name for s in shims_of(pg_conn)] == ["compat_001.orders"]
    r.apply(migration("003_users", "ALTER TABLE users ADD COLUMN email text"))
    names = sorted(s.name for s in shims_of(pg_conn))
    assert names == ["compat_001.orders", "compat_001.users", "compat_002.users"]
    with consumer(pg_url, "001") as c1, consumer(pg_url, "002") as c2:
        assert [d.name for d in c1.execute("SELECT * FROM users").description] == ["id", "name"]
        assert [d.name for d in c2.execute("SELECT * FROM users").description] == ["id", "name"]
        assert [d.name for d in c1.execute("SELECT * FROM orders").description] == ["id", "item", "qty", "note"]
        assert [d.name for d in c2.execute("SELECT * FROM orders").description] == ["id", "item", "qty", "remark"]
        c1.execute("UPDATE orders SET note = 'via 001'")
        c1.execute("INSERT INTO users (name) VALUES ('bob')")
    assert pg_conn.execute("SELECT remark FROM orders").fetchone() == ("via 001",)
    # the newer window shares the older schema's expiry, it does not extend it
    shims = {s.name: s for s in shims_of(pg_conn)}
    assert shims["compat_001.users"].expires_at == shims["compat_001.orders"].expires_at


def test_dropped_column_filled_and_retyped_column_cast_back(pg_conn, pg_url):
    r = pg_runner(pg_conn, AUTO)
    base(r)
    r.apply(migration("002_change", ["ALTER TABLE orders DROP COLUMN note",
                                     "ALTER TABLE orders ALTER COLUMN qty TYPE bigint"]))
    assert cols(pg_conn, "compat_001", "orders") == ["id", "item", "qty", "note"]
    assert types(pg_conn, "compat_001", "orders") == ["integer", "text", "integer", "text"]
    with consumer(pg_url, "001") as c:
        assert c.execute("SELECT qty, note FROM orders").fetchone() == (2, None)
        c.execute("INSERT INTO orders (item) VALUES ('fig')")  # neither column written: allowed
        c.execute("UPDATE orders SET item = 'figs' WHERE item = 'fig'")
        with pytest.raises(psycopg.errors.FeatureNotSupported, match='column "note" of view "orders"'):
            c.execute("UPDATE orders SET note = 'x'")
        with pytest.raises(psycopg.errors.FeatureNotSupported, match='column "qty" of view "orders"'):
            c.execute("INSERT INTO orders (item, qty) VALUES ('kiwi', 3)")
    (shim,) = shims_of(pg_conn)
    assert shim.shape == {"casts": ["qty::integer as qty"], "fills": ["note with NULL::text"]}


def test_declared_expressions_in_declared_mode(pg_conn, pg_url):
    r = pg_runner(pg_conn)
    base(r)
    r.apply(migration("002_change", ["ALTER TABLE orders DROP COLUMN note",
                                     "ALTER TABLE orders ALTER COLUMN qty TYPE numeric(10,2)"],
                      ["drop orders.note expr='(none)'", "retype orders.qty expr=round(qty)"]))
    with consumer(pg_url, "001") as c:
        assert c.execute("SELECT qty, note FROM orders").fetchone() == (2, "(none)")
    (shim,) = shims_of(pg_conn)
    assert shim.shape["fills"] == ["qty with (round(qty))::integer", "note with ('(none)')::text"]


def test_declared_mode_opens_no_window_for_undeclared_changes(pg_conn):
    r = pg_runner(pg_conn)
    base(r)
    r.apply(migration("002_add", "ALTER TABLE orders ADD COLUMN status text"))
    assert shims_of(pg_conn) == []


def test_earlier_shim_rebuilt_with_fill_when_a_later_migration_drops_its_column(pg_conn, pg_url):
    r = pg_runner(pg_conn, AUTO)
    base(r)
    r.apply(migration("002_add", "ALTER TABLE orders ADD COLUMN status text"))
    r.apply(migration("003_drop", "ALTER TABLE orders DROP COLUMN note"))
    assert cols(pg_conn, "compat_001", "orders") == ["id", "item", "qty", "note"]
    assert cols(pg_conn, "compat_002", "orders") == ["id", "item", "qty", "note", "status"]
    shims = {s.name: s for s in shims_of(pg_conn)}
    assert shims["compat_001.orders"].shape == {"fills": ["note with NULL::text"], "hides": ["status"]}
    assert shims["compat_001.orders"].migration_id == "002_add"


def test_rename_told_apart_from_drop_and_add_without_declaration(pg_conn):
    r = pg_runner(pg_conn, AUTO)
    base(r)
    r.apply(migration("002_rename", "ALTER TABLE orders RENAME COLUMN note TO remark"))
    r.apply(migration("003_swap", ["ALTER TABLE users DROP COLUMN name", "ALTER TABLE users ADD COLUMN name text"]))
    shims = {s.name: s for s in shims_of(pg_conn)}
    assert shims["compat_001.orders"].shape == {"renames": ["remark as note"]}
    # users.name was dropped and re-added: a new column (its data is gone), not a rename
    assert shims["compat_002.users"].shape == {"fills": ["name with NULL::text"], "hides": ["name"]}


def test_renamed_table_has_a_view_under_its_old_name(pg_conn, pg_url):
    r = pg_runner(pg_conn, AUTO)
    base(r)
    r.apply(migration("002_rename", "ALTER TABLE users RENAME TO accounts"))
    with consumer(pg_url, "001") as c:
        c.execute("INSERT INTO users (name) VALUES ('cid')")
        c.execute("UPDATE users SET name = 'ann2' WHERE name = 'ann'")
        assert sorted(c.execute("SELECT name FROM users").fetchall()) == [("ann2",), ("cid",)]
    assert pg_conn.execute("SELECT count(*) FROM accounts").fetchone() == (2,)


def test_dropped_table_with_a_shim_is_refused(pg_conn):
    r = pg_runner(pg_conn, AUTO)
    base(r)
    r.apply(migration("002_add", "ALTER TABLE users ADD COLUMN email text"))
    with pytest.raises(MigrationFailed, match="drops table public.users.*cannot be shimmed"):
        r.apply(migration("003_drop", "DROP TABLE users"))
    assert cols(pg_conn, "compat_001", "users") == ["id", "name"]


def test_partitioned_table(pg_conn, pg_url):
    r = pg_runner(pg_conn, AUTO)
    r.apply(migration("001_events", ["CREATE TABLE events (id int, at date NOT NULL, what text) PARTITION BY RANGE (at)",
                                     "CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') "
                                     "TO ('2027-01-01')"]))
    r.apply(migration("002_rename", "ALTER TABLE events RENAME COLUMN what TO kind"))
    with consumer(pg_url, "001") as c:
        c.execute("INSERT INTO events (id, at, what) VALUES (1, '2026-05-01', 'boot')")
    assert pg_conn.execute("SELECT kind FROM events_2026").fetchone() == ("boot",)


def test_grants_and_schema_usage_follow_the_table(pg_conn, pg_url, make_role):
    from helpers import url_as

    r = pg_runner(pg_conn, AUTO)
    base(r)
    reader = make_role()
    pg_conn.execute(sql.SQL("GRANT SELECT, UPDATE ON orders TO {}").format(sql.Identifier(reader)))
    r.apply(migration("002_retype", "ALTER TABLE orders ALTER COLUMN qty TYPE bigint"))
    with psycopg.connect(url_as(pg_url, reader), autocommit=True, options="-c search_path=compat_001,public") as c:
        assert c.execute("SELECT qty FROM orders").fetchone() == (2,)
        c.execute("UPDATE orders SET item = 'apples'")


def test_migration_touching_no_existing_table_is_idle(pg_conn):
    hook = CompatHook()
    r = pg_runner(pg_conn, AUTO, hook)
    r.apply(migration("001_t", "CREATE TABLE t (id int)"))
    ctx = MigrationContext(r.db, migration("002_u", ["CREATE TABLE u (id int)", "ALTER TABLE u ADD COLUMN x int"]),
                           r.previous, AUTO)
    assert hook.wants(ctx) is False
    ctx = MigrationContext(r.db, migration("002_t", "ALTER TABLE t ADD COLUMN x int"), r.previous, AUTO)
    assert hook.wants(ctx) is True


def test_rollback_rebuilds_older_shims_and_retires_its_own(pg_conn):
    r = pg_runner(pg_conn, AUTO)
    base(r)
    r.apply(migration("002_add", "ALTER TABLE orders ADD COLUMN status text"))
    m3 = migration("003_drop", "ALTER TABLE orders DROP COLUMN qty", down=["ALTER TABLE orders ADD COLUMN qty int"])
    r.apply(m3)
    r.apply(m3, direction="rollback")
    active = sorted(s.name for s in shims_of(pg_conn) if s.active)
    assert active == ["compat_001.orders"]
    assert cols(pg_conn, "compat_001", "orders") == ["id", "item", "qty", "note"]


def test_touched_tables_and_directive_grammar():
    stmts = [Statement("CREATE TABLE n (id int)", 1), Statement("ALTER TABLE n ADD COLUMN x int", 2),
             Statement("ALTER TABLE s.t RENAME COLUMN a TO b; ALTER TABLE u RENAME TO v", 3),
             Statement("DROP TABLE w", 4)]
    found = [(t.kind, t.schema, t.table) for t in touched_tables(stmts)]
    assert found == [("rename", "s", "t"), ("rename_table", None, "u"), ("drop_table", None, "w")]
    assert touched_tables([Statement("ALTER nonsense", 1)]) is None
    assert touched_tables([Statement("CREATE TABLE a (id int); INSERT INTO a VALUES (1)", 1)]) == []  # not parsed
    d = parse_shape("drop Orders.note window=3d expr=coalesce(a, 'x y')")
    assert (d.kind, d.table, d.column, d.expr, d.window.days) == ("drop", "orders", "note", "coalesce(a, 'x y')", 3)
    assert parse_shape("rename-table s.a -> b").text == "rename-table s.a -> b"
    with pytest.raises(DeclarationError, match="expr= is for drop and retype"):
        parse_shape("add t.c expr=1")
    with pytest.raises(DeclarationError, match="unexpected 'bogus'"):
        parse_shape("retype t.c bogus")


def test_touched_tables_details_order_and_relation_kinds():
    stmts = [Statement("ALTER TABLE o ADD COLUMN a int, DROP COLUMN b, ALTER COLUMN c TYPE bigint, "
                       "ALTER COLUMN d SET DEFAULT 1", 1),
             Statement("ALTER TABLE o RENAME COLUMN e TO f", 2)]
    found = [(t.kind, t.table, t.line, t.column, t.detail) for t in touched_tables(stmts)]
    assert found == [("alter", "o", 1, "a", "add"), ("alter", "o", 1, "b", "drop"), ("alter", "o", 1, "c", "retype"),
                     ("alter", "o", 1, "d", None), ("rename", "o", 2, "e", "f")]
    # a table created by the same statements is left out after its CREATE, not before it: dropping
    # or renaming the existing table and creating a new one under its name touches the existing one
    stmts = [Statement("DROP TABLE t", 1), Statement("ALTER TABLE u RENAME TO u_old", 2),
             Statement("CREATE TABLE t (id int); CREATE TABLE u (id int)", 3),
             Statement("ALTER TABLE t ADD COLUMN x int; DROP TABLE u", 4)]
    assert [(t.kind, t.table, t.line) for t in touched_tables(stmts)] == [("drop_table", "t", 1),
                                                                         ("rename_table", "u", 2)]
    # ALTER TABLE only: no shim is built over a foreign table, a view, an index or a sequence
    # (PostgreSQL refuses ALTER FOREIGN TABLE on an ordinary table, so it cannot reach one)
    others = ["ALTER FOREIGN TABLE f DROP COLUMN c", "ALTER FOREIGN TABLE f ALTER COLUMN c TYPE text",
              "ALTER VIEW v ALTER COLUMN c SET DEFAULT 1", "ALTER INDEX i SET TABLESPACE s",
              "ALTER SEQUENCE q RESTART", "DROP FOREIGN TABLE f", "DROP VIEW v"]
    assert touched_tables([Statement(sql, i) for i, sql in enumerate(others, 1)]) == []


def test_table_renamed_and_recreated_under_its_name_keeps_a_view_of_the_old_one(pg_conn, pg_url):
    r = pg_runner(pg_conn, AUTO)
    base(r)
    r.apply(migration("002_swap", ["ALTER TABLE orders RENAME TO orders_old",
                                   "CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL)"]))
    assert cols(pg_conn, "public", "orders") == ["id", "item"]
    assert cols(pg_conn, "compat_001", "orders") == ["id", "item", "qty", "note"]
    with consumer(pg_url, "001") as c:
        assert c.execute("SELECT item, qty, note FROM orders").fetchall() == [("apple", 2, "n1")]
    assert [s.name for s in shims_of(pg_conn) if s.active] == ["compat_001.orders"]


def test_table_swapped_then_changed_keeps_the_old_view_and_adds_one_for_the_new_table(pg_conn, pg_url):
    # compat_001.orders belongs to orders_old; changing the new orders used to try to open it again
    # ("cannot create shim compat_001.orders: ... already exists")
    r = pg_runner(pg_conn, AUTO)
    base(r)
    r.apply(migration("002_swap", ["ALTER TABLE orders RENAME TO orders_old",
                                   "CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL)"]))
    r.apply(migration("003_add", "ALTER TABLE orders ADD COLUMN w text"))
    assert cols(pg_conn, "compat_001", "orders") == ["id", "item", "qty", "note"]
    assert cols(pg_conn, "compat_002", "orders") == ["id", "item"]
    assert [(s.name, s.table_name) for s in shims_of(pg_conn) if s.active] == [
        ("compat_001.orders", "orders_old"), ("compat_002.orders", "orders")]
    with consumer(pg_url, "001") as c:
        assert c.execute("SELECT item, qty, note FROM orders").fetchall() == [("apple", 2, "n1")]


def test_declared_change_that_did_not_happen_rolls_back(pg_conn):
    r = pg_runner(pg_conn)
    base(r)
    m = migration("002_x", ["CREATE TABLE marker (x int)", "ALTER TABLE orders ALTER COLUMN qty SET DEFAULT 5"],
                  ["retype orders.qty"])
    with pytest.raises(MigrationFailed, match=r"migrations/002_x.sql:1: declared change `retype orders.qty` did not "
                                              r"happen: column qty is still integer"):
        r.apply(m)
    assert pg_conn.execute("SELECT to_regclass('marker')").fetchone()[0] is None
    with pytest.raises(MigrationFailed, match="declared change `rename-table users -> accounts` did not happen: "
                                              "the table is called people"):
        r.apply(migration("002_y", "ALTER TABLE users RENAME TO people", ["rename-table users -> accounts"]))
    with pytest.raises(MigrationFailed, match=r"compat drop: column nope does not exist in orders"):
        r.apply(migration("002_z", "SELECT 1", ["drop orders.nope"]))


def test_no_compat_and_disabled_turn_auto_mode_off_but_keep_existing_views(pg_conn):
    r = pg_runner(pg_conn, AUTO)
    base(r)
    r.apply(migration("002_add", "ALTER TABLE orders ADD COLUMN status text"))
    off = pg_runner(pg_conn, Settings(compat=CompatSettings(mode="auto", enabled=False)))
    off.previous = r.previous
    off.apply(migration("003_drop", ["ALTER TABLE orders DROP COLUMN note", "ALTER TABLE users ADD COLUMN x int"]))
    quiet = pg_runner(pg_conn, AUTO, CompatHook(create_shims=False))
    quiet.previous = off.previous
    quiet.apply(migration("004_more", "ALTER TABLE users ADD COLUMN y int"))
    (shim,) = shims_of(pg_conn)
    assert shim.name == "compat_001.orders"
    assert shim.shape == {"fills": ["note with NULL::text"], "hides": ["status"]}


def test_hidden_not_null_column_without_default_fails_old_writers(pg_conn, pg_url):
    r = pg_runner(pg_conn, AUTO)
    r.apply(migration("001_t", "CREATE TABLE t (id serial PRIMARY KEY, a text)"))
    r.apply(migration("002_add", "ALTER TABLE t ADD COLUMN b text NOT NULL"))  # an empty table allows it
    with consumer(pg_url, "001") as c:
        assert [d.name for d in c.execute("SELECT * FROM t").description] == ["id", "a"]
        with pytest.raises(psycopg.errors.NotNullViolation, match='column "b"'):
            c.execute("INSERT INTO t (a) VALUES ('x')")
