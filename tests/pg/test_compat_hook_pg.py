"""CompatHook on PostgreSQL: shims created with the migration, their shape, privileges, upkeep."""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest
from psycopg import sql

from compat.hook import CompatHook
from helpers import url_as
from runner.config import CompatSettings, Settings
from runner.errors import MigrationFailed
from compat_support import (
    COLUMNS_017,
    DIRECTIVE_018,
    M018,
    TABLE,
    m018,
    migration,
    pg_runner,
    shims_of,
    story_to_017,
)


def columns_of(conn, schema, name):
    return [r[0] for r in conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped "
        "ORDER BY attnum", (sql.Identifier(schema, name).as_string(conn),)).fetchall()]


def consumer(url, search_path, **kwargs):
    return psycopg.connect(url, autocommit=True, options=f"-c search_path={search_path}", **kwargs)


def test_story_old_and_new_consumers(pg_conn, pg_url):
    r = pg_runner(pg_conn)
    story_to_017(r)
    r.apply(m018())
    # the view has exactly 017's columns in 017's order: container_digest (added by 018) is absent
    assert columns_of(pg_conn, "compat_017", TABLE) == COLUMNS_017
    with consumer(pg_url, "compat_017,public") as old, consumer(pg_url, "public") as new:
        cur = old.execute(f"SELECT * FROM {TABLE} ORDER BY workflow_id")
        assert [c.name for c in cur.description] == COLUMNS_017
        assert [row[-1] for row in cur.fetchall()] == ["quay.io/x/restart:1", "quay.io/x/scale:2"]
        # writes through the old name, omitting defaulted columns
        old.execute(f"INSERT INTO {TABLE} (workflow_name, execution_bundle) VALUES ('drain', 'quay.io/x/drain:1')")
        old.execute(f"UPDATE {TABLE} SET execution_bundle = 'quay.io/x/scale:3' WHERE workflow_name = 'scale-up'")
        rows = dict(new.execute(f"SELECT workflow_name, container_image FROM {TABLE}").fetchall())
        assert rows == {"restart-pod": "quay.io/x/restart:1", "scale-up": "quay.io/x/scale:3", "drain": "quay.io/x/drain:1"}
        status, version = new.execute(f"SELECT status, version FROM {TABLE} WHERE workflow_name = 'drain'").fetchone()
        assert (status, version) == ("draft", "1.0.0")
        old.execute(f"DELETE FROM {TABLE} WHERE workflow_name = 'drain'")
        assert new.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0] == 2
    (shim,) = shims_of(pg_conn)
    assert (shim.name, shim.table, shim.old, shim.new, shim.compat_schema, shim.status, shim.as_of) == (
        f"compat_017.{TABLE}", f"public.{TABLE}", "execution_bundle", "container_image", "compat_017", "active", "017")
    assert shim.expires_at - shim.created_at == timedelta(days=14)
    assert shim.created_by == "postgres" and shim.migration_id == "018_rename_execution_bundle_to_container_image"
    assert shim.created_client and "@" in shim.created_client


def test_consumer_configured_before_rollout_switches_without_reconnect(pg_conn, pg_url):
    r = pg_runner(pg_conn)
    story_to_017(r)
    with consumer(pg_url, "compat_017,public") as old:
        query = f"SELECT execution_bundle FROM {TABLE} WHERE workflow_name = %s"
        assert old.execute(query, ("restart-pod",), prepare=True).fetchone() == ("quay.io/x/restart:1",)
        r.apply(m018())
        assert old.execute(query, ("restart-pod",), prepare=True).fetchone() == ("quay.io/x/restart:1",)
        cur = old.execute(f"SELECT * FROM {TABLE}")
        assert [c.name for c in cur.description] == COLUMNS_017


def test_view_options_defaults_and_comment(pg_conn):
    pg_conn.execute("CREATE TABLE pct (id serial PRIMARY KEY, a text DEFAULT '50%', b int GENERATED ALWAYS AS (1) STORED)")
    r = pg_runner(pg_conn)
    r.previous = migration("004_x", "SELECT 1")
    r.apply(migration("005_rename", "ALTER TABLE pct RENAME a TO aa", ["rename pct.a -> aa window=1d"]))
    options = pg_conn.execute("SELECT reloptions FROM pg_class WHERE oid = 'compat_004.pct'::regclass").fetchone()[0]
    assert options == ["security_invoker=true"]
    defaults = dict(pg_conn.execute(
        "SELECT column_name, column_default FROM information_schema.columns "
        "WHERE table_schema = 'compat_004' AND table_name = 'pct'").fetchall())
    assert defaults == {"id": "nextval('pct_id_seq'::regclass)", "a": "'50%'::text", "b": None}
    pg_conn.execute("INSERT INTO compat_004.pct (a) VALUES (DEFAULT)")
    assert pg_conn.execute("SELECT id, aa, b FROM pct").fetchall() == [(1, "50%", 1)]
    comment = pg_conn.execute("SELECT obj_description('compat_004.pct'::regclass)").fetchone()[0]
    assert "migrate compat shim compat_004.pct" in comment


def test_expose_both(pg_conn, pg_url):
    r = pg_runner(pg_conn)
    story_to_017(r)
    r.apply(m018(DIRECTIVE_018 + " expose=both"))
    cols = columns_of(pg_conn, "compat_017", TABLE)
    assert cols == COLUMNS_017 + ["container_image"]  # new name right after the old one
    with consumer(pg_url, "compat_017,public") as c:
        assert c.execute(f"SELECT execution_bundle, container_image FROM {TABLE} WHERE workflow_id = 1").fetchone() == (
            "quay.io/x/restart:1", "quay.io/x/restart:1")
        c.execute(f"UPDATE {TABLE} SET container_image = 'v2' WHERE workflow_id = 1")
        assert c.execute(f"SELECT execution_bundle FROM {TABLE} WHERE workflow_id = 1").fetchone() == ("v2",)
        with pytest.raises(psycopg.errors.SyntaxError, match="multiple assignments to same column"):
            c.execute(f"UPDATE {TABLE} SET container_image = 'a', execution_bundle = 'b'")


def test_rename_that_did_not_happen_rolls_back(pg_conn):
    r = pg_runner(pg_conn)
    story_to_017(r)
    bad = migration("018_rename", f"ALTER TABLE {TABLE} ADD COLUMN container_digest text", [DIRECTIVE_018])
    with pytest.raises(MigrationFailed) as err:
        r.apply(bad)
    assert str(err.value) == (f"migrations/018_rename.sql:1: declared rename {TABLE}.execution_bundle -> container_image "
                              "did not happen: column execution_bundle still exists")
    assert err.value.exit_code == 4
    assert "container_digest" not in columns_of(pg_conn, "public", TABLE)  # the migration was rolled back
    assert pg_conn.execute("SELECT to_regnamespace('compat_017')").fetchone()[0] is None


def test_drop_and_add_is_not_a_rename(pg_conn):
    r = pg_runner(pg_conn)
    story_to_017(r)
    bad = migration("018_rename", [f"ALTER TABLE {TABLE} DROP COLUMN execution_bundle",
                                   f"ALTER TABLE {TABLE} ADD COLUMN container_image text"], [DIRECTIVE_018])
    with pytest.raises(MigrationFailed, match="was dropped and container_image added .its data is lost"):
        r.apply(bad)
    assert "execution_bundle" in columns_of(pg_conn, "public", TABLE)


def test_rename_to_another_name(pg_conn):
    r = pg_runner(pg_conn)
    story_to_017(r)
    bad = migration("018_rename", f"ALTER TABLE {TABLE} RENAME execution_bundle TO image", [DIRECTIVE_018])
    with pytest.raises(MigrationFailed, match="was renamed to image, not container_image"):
        r.apply(bad)


def test_declaration_for_missing_table_or_column_stops_before_statements(pg_conn):
    r = pg_runner(pg_conn)
    story_to_017(r)
    m = migration("018_rename", "CREATE TABLE marker (x int)", ["rename nope.a -> b window=1d"])
    with pytest.raises(MigrationFailed, match=r"^migrations/018_rename.sql:1: compat rename: table nope does not exist"):
        r.apply(m)
    m = migration("018_rename", "CREATE TABLE marker (x int)", [f"rename {TABLE}.nope -> b window=1d"])
    with pytest.raises(MigrationFailed, match="column nope does not exist in remediation_workflow_catalog before"):
        r.apply(m)
    m = migration("018_rename", "CREATE TABLE marker (x int)", [f"rename {TABLE}.content -> status"])
    with pytest.raises(MigrationFailed, match="column status already exists"):
        r.apply(m)
    assert pg_conn.execute("SELECT to_regclass('marker')").fetchone()[0] is None


def test_column_dropped_in_the_renaming_migration_is_filled(pg_conn):
    r = pg_runner(pg_conn)
    story_to_017(r)
    r.apply(migration("018_rename", M018_AND_DROP, [DIRECTIVE_018]))
    assert columns_of(pg_conn, "compat_017", TABLE) == COLUMNS_017
    assert pg_conn.execute(f"SELECT DISTINCT content FROM compat_017.{TABLE}").fetchall() == [(None,)]


M018_AND_DROP = [f"ALTER TABLE {TABLE} RENAME COLUMN execution_bundle TO container_image",
                 f"ALTER TABLE {TABLE} DROP COLUMN content"]


def test_no_compat_verifies_but_creates_nothing(pg_conn):
    r = pg_runner(pg_conn, hook=CompatHook(create_shims=False))
    story_to_017(r)
    r.apply(m018())
    assert pg_conn.execute("SELECT to_regnamespace('compat_017')").fetchone()[0] is None
    assert shims_of(pg_conn) == []
    with pytest.raises(MigrationFailed, match="still exists"):
        r.apply(migration("019_x", "SELECT 1", [f"rename {TABLE}.content -> body"]))
    r2 = pg_runner(pg_conn, settings=Settings(compat=CompatSettings(enabled=False)))
    r2.previous = r.previous
    r2.apply(migration("019_x", f"ALTER TABLE {TABLE} RENAME content TO body", [f"rename {TABLE}.content -> body"]))
    assert pg_conn.execute("SELECT to_regnamespace('compat_018')").fetchone()[0] is None


def test_config_declared_rename_and_custom_template(pg_conn):
    settings = Settings(
        compat=CompatSettings(schema_template="v{version}_compat"),
        renames=[{"migration": "018_rename.sql", "table": f"public.{TABLE}", "old": "execution_bundle",
                  "new": "container_image", "window": "36h"}],
    )
    r = pg_runner(pg_conn, settings=settings)
    story_to_017(r)
    r.apply(migration("018_rename", M018, fmt="goose"))
    (shim,) = shims_of(pg_conn)
    assert shim.compat_schema == "v017_compat" and shim.expires_at - shim.created_at == timedelta(hours=36)
    assert columns_of(pg_conn, "v017_compat", TABLE) == COLUMNS_017


def test_privileges_follow_the_table(pg_conn, pg_url, make_role):
    r = pg_runner(pg_conn)
    story_to_017(r)
    writer, limited, columns_only, nobody = make_role(), make_role(), make_role(), make_role()

    def grant(text, role):
        pg_conn.execute(sql.SQL(text).format(t=sql.Identifier(TABLE), r=sql.Identifier(role)))

    grant("GRANT SELECT, INSERT, UPDATE ON {t} TO {r}", writer)
    grant("GRANT SELECT ON {t} TO {r}", limited)
    grant("GRANT SELECT (workflow_id, workflow_name, execution_bundle) ON {t} TO {r}", columns_only)
    pg_conn.execute(f"ALTER TABLE {TABLE} ENABLE ROW LEVEL SECURITY")
    grant("CREATE POLICY all_rows ON {t} TO {r} USING (true)", writer)
    grant("CREATE POLICY only_restart ON {t} TO {r} USING (workflow_name = 'restart-pod')", limited)
    grant("CREATE POLICY cols ON {t} TO {r} USING (true)", columns_only)
    r.apply(m018())
    # nothing was granted on compat_017 by hand: the shim mirrors the table's grants
    with consumer(url_as(pg_url, writer), "compat_017,public") as w:
        assert [c.name for c in w.execute(f"SELECT * FROM {TABLE}").description] == COLUMNS_017
        w.execute(f"INSERT INTO {TABLE} (workflow_name, execution_bundle) VALUES ('w', 'img')")
        w.execute(f"UPDATE {TABLE} SET execution_bundle = 'img2' WHERE workflow_name = 'w'")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            w.execute(f"DELETE FROM {TABLE}")  # no DELETE on the table, so none on the view
    with consumer(url_as(pg_url, limited), "compat_017,public") as lim:
        # row-level security of the table applies through the view (security_invoker)
        assert lim.execute(f"SELECT workflow_name, execution_bundle FROM {TABLE}").fetchall() == [
            ("restart-pod", "quay.io/x/restart:1")]
    with consumer(url_as(pg_url, columns_only), "compat_017,public") as col:
        assert col.execute(f"SELECT workflow_id FROM public.{TABLE} WHERE workflow_id = 1").fetchall() == [(1,)]
        # PostgreSQL checks every column the view references: column-only grants fail closed
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            col.execute(f"SELECT workflow_id FROM {TABLE}")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            col.execute(f"SELECT content FROM {TABLE}")
    with consumer(url_as(pg_url, nobody), "compat_017,public") as nb:
        # no USAGE on compat_017: PostgreSQL skips it in search_path and the table has no such column
        with pytest.raises(psycopg.errors.UndefinedColumn):
            nb.execute(f"SELECT execution_bundle FROM {TABLE}")
    # a grant on the view alone does not open the table: the view runs with the caller's rights
    pg_conn.execute(sql.SQL("GRANT USAGE ON SCHEMA compat_017 TO {r}; GRANT SELECT ON compat_017.{t} TO {r}").format(
        t=sql.Identifier(TABLE), r=sql.Identifier(nobody)))
    with consumer(url_as(pg_url, nobody), "compat_017,public") as nb:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match=f"permission denied for table {TABLE}"):
            nb.execute(f"SELECT execution_bundle FROM {TABLE}")
    grants = pg_conn.execute(
        "SELECT grantee, string_agg(privilege_type, ',' ORDER BY privilege_type) FROM information_schema.role_table_grants "
        "WHERE table_schema = 'compat_017' GROUP BY grantee").fetchall()
    assert dict(grants)[writer] == "INSERT,SELECT,UPDATE" and dict(grants)[limited] == "SELECT"
    column_grants = pg_conn.execute(
        "SELECT column_name FROM information_schema.column_privileges WHERE table_schema = 'compat_017' "
        "AND grantee = %s ORDER BY 1", (columns_only,)).fetchall()
    assert [c for (c,) in column_grants] == ["execution_bundle", "workflow_id", "workflow_name"]


def test_partitioned_table(pg_conn, pg_url):
    pg_conn.execute("CREATE TABLE events (id int, region text, payload text) PARTITION BY LIST (region)")
    pg_conn.execute("CREATE TABLE events_eu PARTITION OF events FOR VALUES IN ('eu')")
    pg_conn.execute("CREATE TABLE events_us PARTITION OF events FOR VALUES IN ('us')")
    pg_conn.execute("INSERT INTO events VALUES (1, 'eu', 'a')")
    r = pg_runner(pg_conn)
    r.previous = migration("003_x", "SELECT 1")
    r.apply(migration("004_rename", "ALTER TABLE events RENAME payload TO body", ["rename events.payload -> body window=1d"]))
    with consumer(pg_url, "compat_003,public") as old:
        old.execute("INSERT INTO events (id, region, payload) VALUES (2, 'us', 'b')")
        assert old.execute("SELECT id, payload FROM events ORDER BY id").fetchall() == [(1, "a"), (2, "b")]
    assert pg_conn.execute("SELECT body FROM events_us").fetchall() == [("b",)]


def test_quoted_and_long_names(pg_conn, pg_url):
    long_table = "T" * 63
    pg_conn.execute(sql.SQL('CREATE TABLE {} ("Exec.Bundle" text, other int)').format(sql.Identifier(long_table)))
    pg_conn.execute(sql.SQL("INSERT INTO {} VALUES ('x', 1)").format(sql.Identifier(long_table)))
    settings = Settings(compat=CompatSettings(schema_template="compat_for_consumers_still_running_release_{version}"))
    r = pg_runner(pg_conn, settings=settings)
    r.previous = migration("2026_01_01_first_release_of_the_application_with_long_label", "SELECT 1")
    r.previous.version_label = "2026_01_01_first_release_of_the_application_with_long_label"
    r.apply(migration("2027_rename", sql.SQL('ALTER TABLE {} RENAME "Exec.Bundle" TO "container Image"').format(
        sql.Identifier(long_table)).as_string(pg_conn), [f'rename "{long_table}"."Exec.Bundle" -> "container Image"']))
    (shim,) = shims_of(pg_conn)
    assert len(shim.compat_schema.encode()) == 63 and shim.compat_schema.startswith("compat_for_consumers")
    assert shim.view_name == long_table
    with consumer(pg_url, f'"{shim.compat_schema}",public') as old:
        assert old.execute(sql.SQL('SELECT "Exec.Bundle" FROM {}').format(sql.Identifier(long_table))).fetchall() == [("x",)]


def test_each_compat_schema_keeps_its_own_shape(pg_conn, pg_url):
    r = pg_runner(pg_conn)
    story_to_017(r)
    r.apply(m018())
    m019 = migration("019_add_owner", f"ALTER TABLE {TABLE} ADD COLUMN owner text")
    r.apply(m019)
    r.apply(migration("020_rename_image", f"ALTER TABLE {TABLE} RENAME container_image TO image_ref",
                      [f"rename {TABLE}.container_image -> image_ref window=14d"]))
    cols_019 = [c for c in COLUMNS_017 if c != "execution_bundle"] + ["container_image", "container_digest", "owner"]
    assert columns_of(pg_conn, "compat_017", TABLE) == COLUMNS_017
    assert columns_of(pg_conn, "compat_019", TABLE) == cols_019
    with consumer(pg_url, "compat_017,public") as c17, consumer(pg_url, "compat_019,public") as c19:
        assert [d.name for d in c17.execute(f"SELECT * FROM {TABLE}").description] == COLUMNS_017
        assert [d.name for d in c19.execute(f"SELECT * FROM {TABLE}").description] == cols_019
        c17.execute(f"UPDATE {TABLE} SET execution_bundle = 'from-017' WHERE workflow_id = 1")
        assert c19.execute(f"SELECT container_image FROM {TABLE} WHERE workflow_id = 1").fetchone() == ("from-017",)
        c19.execute(f"UPDATE {TABLE} SET container_image = 'from-019' WHERE workflow_id = 2")
        assert c17.execute(f"SELECT execution_bundle FROM {TABLE} WHERE workflow_id = 2").fetchone() == ("from-019",)
    assert pg_conn.execute(f"SELECT image_ref FROM {TABLE} ORDER BY workflow_id").fetchall() == [("from-017",), ("from-019",)]


def test_dropping_an_exposed_column_declared_refuse_is_stopped_before_anything_runs(pg_conn):
    r = pg_runner(pg_conn)
    story_to_017(r)
    r.apply(m018())
    m = migration("019_drop", ["CREATE TABLE marker (x int)", f"ALTER TABLE {TABLE} DROP COLUMN content"],
                  [f"drop {TABLE}.content refuse"])
    with pytest.raises(MigrationFailed) as err:
        r.apply(m)
    message = str(err.value)
    assert message.startswith("migrations/019_drop.sql:1: the migration drops column remediation_workflow_catalog.content")
    assert f"active shim compat_017.{TABLE} (version 017" in message
    assert f"migrate shims drop compat_017.{TABLE}" in message
    assert pg_conn.execute("SELECT to_regclass('marker')").fetchone()[0] is None
    # a column the shim does not expose (added by 018) can go
    r.apply(migration("019_drop_digest", f"ALTER TABLE {TABLE} DROP COLUMN container_digest"))
    with pytest.raises(MigrationFailed, match=r"drops table public.remediation_workflow_catalog"):
        r.apply(migration("020_drop_table", f"DROP TABLE {TABLE} CASCADE"))


def test_non_transactional_migration_destroying_what_a_shim_exposes_is_refused_before_anything_runs(pg_conn):
    """The older path (prepare_refresh, reading compat.shapes.touched_tables): no view can be
    dropped and rebuilt around a migration that commits statement by statement."""
    r = pg_runner(pg_conn)
    story_to_017(r)
    r.apply(m018())

    def loose(mid, statements):
        m = migration(mid, statements)
        m.transactional = False
        return m

    with pytest.raises(MigrationFailed) as err:
        r.apply(loose("019_drop", ["CREATE TABLE marker (x int)", f"ALTER TABLE {TABLE} DROP COLUMN content"]))
    message = str(err.value)
    assert message.startswith(f"migrations/019_drop.sql:2: the migration drops column {TABLE}.content, which "
                              f"active shim compat_017.{TABLE} (version 017")
    assert f"migrate shims drop compat_017.{TABLE}" in message
    with pytest.raises(MigrationFailed, match=rf"019_retype.sql:1: the migration changes the type of column "
                                              rf"{TABLE}.container_image outside a transaction"):
        r.apply(loose("019_retype", f"ALTER TABLE {TABLE} ALTER COLUMN container_image TYPE varchar(200)"))
    # a table dropped and created again under its name is still the shim's table being dropped
    with pytest.raises(MigrationFailed, match=rf"019_recreate.sql:1: the migration drops table public.{TABLE}, "):
        r.apply(loose("019_recreate", [f"DROP TABLE {TABLE} CASCADE", f"CREATE TABLE {TABLE} (workflow_id bigint)"]))
    assert pg_conn.execute("SELECT to_regclass('marker')").fetchone()[0] is None
    assert "content" in columns_of(pg_conn, "public", TABLE)
    assert columns_of(pg_conn, "compat_017", TABLE) == COLUMNS_017
    # what the shim does not expose (container_digest, added by 018) can go; a new table's columns too
    r.apply(loose("019_drop_digest", ["CREATE TABLE scratch (a int, b int)", "ALTER TABLE scratch DROP COLUMN b",
                                      f"ALTER TABLE {TABLE} DROP COLUMN container_digest"]))
    assert "container_digest" not in columns_of(pg_conn, "public", TABLE)
    assert columns_of(pg_conn, "compat_017", TABLE) == COLUMNS_017


def test_retyping_an_exposed_column_refreshes_the_shim(pg_conn, pg_url, make_role):
    r = pg_runner(pg_conn)
    story_to_017(r)
    reader = make_role()
    pg_conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(sql.Identifier(TABLE), sql.Identifier(reader)))
    r.apply(m018())
    r.apply(migration("019_retype", [f"ALTER TABLE {TABLE} ALTER COLUMN container_image TYPE varchar(200)",
                                     f"ALTER TABLE {TABLE} ALTER COLUMN version TYPE varchar(20)"]))
    assert columns_of(pg_conn, "compat_017", TABLE) == COLUMNS_017
    types = dict(pg_conn.execute(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = 'compat_017'").fetchall())
    # version 017 saw text: the view casts the new varchar columns back
    assert types["execution_bundle"] == "text" and types["version"] == "text"
    with consumer(url_as(pg_url, reader), "compat_017,public") as c:
        assert c.execute(f"SELECT execution_bundle FROM {TABLE} WHERE workflow_id = 1").fetchone() == ("quay.io/x/restart:1",)


def test_python_migration_is_handled_after_the_fact(pg_conn):
    r = pg_runner(pg_conn)
    story_to_017(r)
    r.apply(m018())
    r.apply(migration("019_retype", f"ALTER TABLE {TABLE} ALTER COLUMN container_image TYPE varchar(300)", fmt="python"))
    assert columns_of(pg_conn, "compat_017", TABLE) == COLUMNS_017
    # a dropped column the shim shows is filled with NULL of its old type
    r.apply(migration("020_drop", f"ALTER TABLE {TABLE} DROP COLUMN content CASCADE", fmt="python"))
    assert "content" not in columns_of(pg_conn, "public", TABLE)
    assert columns_of(pg_conn, "compat_017", TABLE) == COLUMNS_017
    # a non-transactional Python migration is left alone (dropping views would commit on its own)
    loose = migration("020_add", f"ALTER TABLE {TABLE} ADD COLUMN note text", fmt="python")
    loose.transactional = False
    r.apply(loose)
    assert columns_of(pg_conn, "compat_017", TABLE) == COLUMNS_017


def test_cascade_hidden_in_a_do_block_is_caught(pg_conn):
    r = pg_runner(pg_conn)
    story_to_017(r)
    r.apply(m018())
    sneaky = f"DO $$ BEGIN EXECUTE 'ALTER TABLE {TABLE} DROP COLUMN content CASCADE'; END $$"
    with pytest.raises(MigrationFailed, match=rf"removed the view of active shim compat_017.{TABLE} .DROP ... CASCADE"):
        r.apply(migration("019_sneaky", sneaky))
    assert "content" in columns_of(pg_conn, "compat_017", TABLE)


def test_rollback_drops_the_migrations_shims(pg_conn):
    r = pg_runner(pg_conn)
    _, m017 = story_to_017(r)
    m = migration("018_rename", M018, [DIRECTIVE_018],
                  down=[f"ALTER TABLE {TABLE} DROP COLUMN container_digest",
                        f"ALTER TABLE {TABLE} RENAME container_image TO execution_bundle"])
    r.apply(m)
    r.apply(m, direction="rollback", previous=m017)
    (shim,) = shims_of(pg_conn)
    assert shim.status == "dropped" and shim.reason == "migration 018_rename rolled back"
    assert pg_conn.execute("SELECT to_regnamespace('compat_017')").fetchone()[0] is None
    r.apply(m, previous=m017)  # and it can be applied again
    assert [s.status for s in shims_of(pg_conn)] == ["dropped", "active"]


def test_two_tables_and_two_columns_in_one_migration(pg_conn):
    pg_conn.execute("CREATE TABLE a (x int, y int, z int)")
    pg_conn.execute("CREATE TABLE b (p int)")
    r = pg_runner(pg_conn)
    r.previous = migration("009_x", "SELECT 1")
    r.apply(migration("010_renames", ["ALTER TABLE a RENAME x TO x2", "ALTER TABLE a RENAME y TO y2",
                                      "ALTER TABLE b RENAME p TO p2"],
                      ["rename a.x -> x2 window=1d", "rename a.y -> y2 window=3d", "rename b.p -> p2 window=2d"]))
    shims = shims_of(pg_conn)
    assert [(s.name, s.old, s.new) for s in shims] == [("compat_009.a", "x, y", "x2, y2"), ("compat_009.b", "p", "p2")]
    assert shims[0].expires_at - shims[0].created_at == timedelta(days=3)  # the longest window of the view
    assert columns_of(pg_conn, "compat_009", "a") == ["x", "y", "z"]
