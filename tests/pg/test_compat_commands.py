"""compat.lifecycle and compat.routes: list, audit, drop (refusing while in use), extend, connect_info, route."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from psycopg import sql

from compat import lifecycle, registry, routes
from runner.config import Settings
from helpers import expire_shims, url_as
from runner.db import connect
from runner.errors import UsageError
from compat_support import COLUMNS_017, DIRECTIVE_018, TABLE, m018, pg_runner, sqlite_runner, story_to_017

SHIM = f"compat_017.{TABLE}"


@pytest.fixture
def shimmed(pg_conn, pg_url):
    """A database at 018 with the compat_017 shim, and a runner Database on it."""
    r = pg_runner(pg_conn)
    story_to_017(r)
    r.apply(m018())
    with connect(pg_url) as db:
        yield db


def role_path(conn, role):
    row = conn.execute(
        "SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole "
        "WHERE r.rolname = %s AND s.setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())",
        (role,)).fetchone()
    return row[0] if row else None


def test_list_and_summary(shimmed):
    (shim,) = lifecycle.list_shims(shimmed)
    data = shim.to_json()
    assert {k: data[k] for k in ("name", "table", "old", "new", "schema", "status")} == {
        "name": SHIM, "table": f"public.{TABLE}", "old": "execution_bundle", "new": "container_image",
        "schema": "compat_017", "status": "active"}
    assert datetime.fromisoformat(data["expires_at"]) > datetime.now(timezone.utc) + timedelta(days=13)
    (summary,) = registry.active_summary(shimmed)
    assert summary["name"] == SHIM and summary["expires_at"] == data["expires_at"]
    assert lifecycle.list_shims(shimmed, "dropped") == []


def test_audit_expiry(pg_conn, pg_url):
    r = pg_runner(pg_conn)
    story_to_017(r)
    r.apply(m018(DIRECTIVE_018))
    assert expire_shims(pg_url) == 1
    with connect(pg_url) as db:
        report = lifecycle.audit(db, timedelta(days=7))
        assert not report.ok and [s.name for s in report.expired] == [SHIM] and report.expiring == []
        with pytest.raises(lifecycle.ShimsExpired) as err:
            lifecycle.check_not_expired(db)
        assert err.value.exit_code == 1 and SHIM in str(err.value)


def test_audit_warns_about_soon_expiring(shimmed):
    assert lifecycle.audit(shimmed, timedelta(days=7)).expiring == []
    report = lifecycle.audit(shimmed, timedelta(days=15))
    assert report.ok and [s.name for s in report.expiring] == [SHIM]
    lifecycle.check_not_expired(shimmed)


def test_audit_without_registry(pg_url):
    with connect(pg_url) as db:
        report = lifecycle.audit(db)
        assert report.ok and report.active == [] and lifecycle.list_shims(db) == []


def test_drop_refuses_while_a_session_holds_the_view_then_drops(shimmed, pg_url, pg_conn):
    with psycopg.connect(pg_url, autocommit=True, application_name="billing-v017",
                         options="-c search_path=compat_017,public") as old:
        old.execute("BEGIN")
        old.execute(f"SELECT execution_bundle FROM {TABLE} LIMIT 1").fetchall()
        pid = old.info.backend_pid
        with pytest.raises(lifecycle.ShimInUse) as err:
            lifecycle.drop(shimmed, [SHIM])
        message = str(err.value)
        assert f"pid {pid} (postgres, billing-v017@" in message and "AccessShareLock" in message
        assert "column execution_bundle does not exist" in message and "--force" in message
        assert err.value.exit_code == 3
        old.execute("COMMIT")
        report = lifecycle.drop(shimmed, [SHIM], reason="all consumers on 018")
        assert [s.status for s in report.dropped] == ["dropped"] and report.schemas_dropped == ["compat_017"]
        # the old consumer now falls through to the table and gets a clear error
        with pytest.raises(psycopg.errors.UndefinedColumn, match='column "execution_bundle" does not exist'):
            old.execute(f"SELECT execution_bundle FROM {TABLE}")
    (shim,) = lifecycle.list_shims(shimmed)
    assert (shim.status, shim.reason) == ("dropped", "all consumers on 018")
    assert shim.dropped_by.startswith("postgres (") and shim.dropped_at is not None
    assert pg_conn.execute("SELECT to_regnamespace('compat_017')").fetchone()[0] is None
    with pytest.raises(UsageError, match="already dropped"):
        lifecycle.drop(shimmed, [SHIM])


def test_drop_force_and_lock_timeout(shimmed, pg_url):
    with psycopg.connect(pg_url, autocommit=True, options="-c search_path=compat_017,public") as old:
        old.execute("BEGIN")
        old.execute(f"SELECT * FROM {TABLE}").fetchall()
        started = time.monotonic()
        with pytest.raises(lifecycle.ShimInUse, match="still in use"):
            lifecycle.drop(shimmed, [SHIM], force=True, lock_timeout=timedelta(milliseconds=300))
        assert time.monotonic() - started < 5
        old.execute("ROLLBACK")
    report = lifecycle.drop(shimmed, ["compat_017"], force=True)  # a compat schema names all its shims
    assert [s.name for s in report.dropped] == [SHIM]


def test_drop_expired_and_unknown(pg_conn, pg_url):
    r = pg_runner(pg_conn)
    story_to_017(r)
    r.apply(m018(DIRECTIVE_018))
    with connect(pg_url) as db:
        with pytest.raises(UsageError, match=rf"no active shim named nope \(active shims: {SHIM}\)"):
            lifecycle.drop(db, ["nope"])
        with pytest.raises(UsageError, match="--expired"):
            lifecycle.drop(db)
        assert lifecycle.drop(db, expired=True).dropped == []  # not expired yet
        assert expire_shims(pg_url) == 1
        report = lifecycle.drop(db, expired=True)
        assert [s.reason for s in report.dropped] == ["expired"]
        assert lifecycle.drop(db, expired=True).dropped == []


def test_extend(shimmed):
    (before,) = lifecycle.list_shims(shimmed)
    with pytest.raises(UsageError, match="--reason"):
        lifecycle.extend(shimmed, SHIM, by=timedelta(days=7), reason=" ")
    with pytest.raises(UsageError, match="exactly one"):
        lifecycle.extend(shimmed, SHIM, reason="x")
    with pytest.raises(UsageError, match="in the past"):
        lifecycle.extend(shimmed, SHIM, until=datetime(2020, 1, 1, tzinfo=timezone.utc), reason="x")
    (after,) = lifecycle.extend(shimmed, SHIM, by=timedelta(days=7), reason="billing still on 017")
    assert after.expires_at == before.expires_at + timedelta(days=7)
    until = datetime(2099, 1, 1, tzinfo=timezone.utc)
    (after2,) = lifecycle.extend(shimmed, SHIM, until=until, reason="freeze")
    assert after2.expires_at == until
    history = after2.extensions
    assert [(h["reason"], h["to"]) for h in history] == [
        ("billing still on 017", after.expires_at.isoformat()), ("freeze", until.isoformat())]
    assert history[0]["from"] == before.expires_at.isoformat() and history[0]["by"].startswith("postgres")


def test_connect_info(shimmed, pg_url, make_role):
    role = make_role(password="s3cret-pw")
    url = url_as(pg_url, role, "s3cret-pw")
    info = routes.connect_info(shimmed, "017", Settings(database=url))
    assert info.search_path == "compat_017,public" and info.schema == "compat_017" and info.shims == [SHIM]
    assert "s3cret-pw" not in info.url and ":***@" in info.url
    assert info.url.endswith("options=-c%20search_path%3Dcompat_017%2Cpublic")
    # the URL works once the password is put back (libpq parses options=)
    with psycopg.connect(info.url.replace("***", "s3cret-pw"), autocommit=True) as c:
        assert c.execute("SHOW search_path").fetchone()[0] == "compat_017,public"
    ahead = routes.connect_info(shimmed, "019", Settings(database=pg_url))
    assert ahead.schema == "compat_019" and ahead.shims == [] and "safe to deploy before the rename" in ahead.note


def test_route_and_undo_on_drop(shimmed, pg_url, pg_conn, make_role):
    role = make_role()
    pg_conn.execute(sql.SQL("GRANT SELECT, UPDATE ON {} TO {}").format(sql.Identifier(TABLE), sql.Identifier(role)))
    pg_conn.execute(sql.SQL("GRANT SELECT, UPDATE ON compat_017.{} TO {}").format(sql.Identifier(TABLE), sql.Identifier(role)))
    pg_conn.execute(sql.SQL("GRANT USAGE ON SCHEMA compat_017 TO {}").format(sql.Identifier(role)))
    route = routes.route(shimmed, role, "017")
    assert route.search_path == 'compat_017, "$user", public' and route.previous_setting is None
    assert role_path(pg_conn, role) == ['search_path=compat_017, "$user", public']
    # a lagging service connecting as that role needs no change at all
    with psycopg.connect(url_as(pg_url, role), autocommit=True) as svc:
        cur = svc.execute(f"SELECT * FROM {TABLE}")
        assert [d.name for d in cur.description] == COLUMNS_017
        with pytest.raises(lifecycle.ShimInUse, match=f"role {role} is routed to compat_017"):
            lifecycle.drop(shimmed, [SHIM])
    report = lifecycle.drop(shimmed, [SHIM])
    assert [r.role for r in report.routes_undone] == [role]
    assert role_path(pg_conn, role) is None
    (undone,) = shimmed_routes(shimmed)
    assert undone.status == "undone" and "dropped" in undone.reason


def shimmed_routes(db):
    return routes.routes(db)


def test_route_restores_a_previous_setting_and_unroute(shimmed, pg_conn, make_role):
    role = make_role()
    pg_conn.execute(sql.SQL("ALTER ROLE {} IN DATABASE {} SET search_path TO app, public").format(
        sql.Identifier(role), sql.Identifier(pg_conn.info.dbname)))
    route = routes.route(shimmed, role, "017")
    assert route.previous_setting == "app, public" and route.search_path == "compat_017, app, public"
    routes.unroute(shimmed, role)
    assert role_path(pg_conn, role) == ["search_path=app, public"]
    with pytest.raises(UsageError, match="no active route"):
        routes.unroute(shimmed, role)
    with pytest.raises(UsageError, match="role nobody_here does not exist"):
        routes.route(shimmed, "nobody_here", "017")


def test_sqlite_commands(tmp_path):
    path = tmp_path / "db.sqlite"
    r = sqlite_runner(str(path))
    story_to_017(r)
    r.apply(m018())
    with connect(f"sqlite:///{path}") as db:
        (shim,) = lifecycle.list_shims(db)
        assert shim.name == f"{TABLE}__v017"
        lifecycle.extend(db, shim.name, by=timedelta(days=1), reason="r")
        with pytest.raises(UsageError, match="SQLite has no schemas"):
            routes.connect_info(db, "017", f"sqlite:///{path}")
        report = lifecycle.drop(db, [shim.name])
        assert report.dropped[0].status == "dropped"
        assert not db.connection.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (shim.name,)).fetchone()
        assert lifecycle.audit(db).ok


def test_pg_stat_statements_evidence_is_reported_not_fatal(shimmed, pg_conn):
    """Installed but not preloaded here: the drop still works and says why it could not look."""
    pg_conn.execute("CREATE EXTENSION pg_stat_statements")
    preloaded = "pg_stat_statements" in pg_conn.execute("SHOW shared_preload_libraries").fetchone()[0]
    report = lifecycle.drop(shimmed, [SHIM])
    assert [s.name for s in report.dropped] == [SHIM]
    if preloaded:
        assert all(n.startswith("pg_stat_statements: ") for n in report.notes)
    else:
        assert report.notes == [report.notes[0]] and "pg_stat_statements not readable" in report.notes[0]
