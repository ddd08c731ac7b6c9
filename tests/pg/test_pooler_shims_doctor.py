"""Shims, the registry, `shims drop`'s in-use check and `doctor` through a real PgBouncer, in
transaction and session pool modes (issue 13, part 1)."""

from __future__ import annotations

import json

import psycopg
import pytest
from psycopg import sql

import pooler_pgbouncer
from compat_support import TABLE
from helpers import run_migrate, url_as


def shims_cli(*args: str):
    return run_migrate("shims", *args)


SHIM = f"compat_017.{TABLE}"


@pytest.fixture(scope="module", params=["transaction", "session"])
def bouncer(request):
    running = pooler_pgbouncer.start(request.param)
    yield running
    running.stop()


def up(url: str, folder) -> None:
    result = run_migrate("up", "--database", url, "--migrations", str(folder))
    assert result.returncode == 0, result.stderr


def test_shims_and_registry_through_the_pooler_and_what_drop_can_see(bouncer, pg_url, example_migrations, make_role):
    url = bouncer.url(pg_url)
    up(url, example_migrations)
    listed = shims_cli("list", "--format", "json", "--database", url)
    assert listed.returncode == 0, listed.stderr
    (entry,) = json.loads(listed.stdout)
    assert entry["name"] == SHIM and entry["status"] == "active"
    with psycopg.connect(pg_url) as direct:
        assert direct.execute(f"SELECT count(*) FROM {SHIM}").fetchone()[0] == 0  # the view is there

    # A client of the pooler in the middle of a transaction on the shim: it holds a server
    # connection, so its lock on the view is visible.
    with psycopg.connect(url, application_name="billing-v017") as reader:
        reader.execute(f"SELECT * FROM {SHIM}").fetchall()
        refused = shims_cli("drop", SHIM, "--database", url)
        assert refused.returncode == 3, refused.stderr
        assert "billing-v017" in refused.stderr and "AccessShareLock" in refused.stderr
        reader.rollback()

    # A role routed to the shims, connected to the pooler and idle: in transaction mode it has no
    # server connection; the pooler's admin console (SHOW CLIENTS) still shows it.
    role = make_role()
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(sql.SQL("GRANT USAGE ON SCHEMA compat_017 TO {}").format(sql.Identifier(role)))
    bouncer.allow(role)
    routed = shims_cli("route", role, "--as-of", "017", "--database", url)
    assert routed.returncode == 0, routed.stderr
    with psycopg.connect(url_as(url, role), autocommit=True, application_name="billing-idle") as idle:
        idle.execute("SELECT 1")
        refused = shims_cli("drop", SHIM, "--database", url)
        assert refused.returncode == 3, refused.stderr
        assert f"connected to the pooler as role {role}" in refused.stderr and "SHOW CLIENTS" in refused.stderr

    # Gone from the pooler, but the server connection the pool keeps for that role still counts.
    kept = shims_cli("drop", SHIM, "--database", url)
    assert kept.returncode == 3 and f"role {role} is routed" in kept.stderr and "server_idle_timeout" in kept.stderr
    with bouncer.admin() as console:  # the pooler closes its server connections of this database
        dbname = pg_url.rsplit("/", 1)[1]
        console.execute(f"KILL {dbname}")
        console.execute(f"RESUME {dbname}")
    dropped = shims_cli("drop", SHIM, "--database", url, "--reason", "retired")
    assert dropped.returncode == 0, dropped.stderr
    assert f"pooler detected: {bouncer.mode}" in dropped.stdout
    assert "idle pooled clients reading the shims cannot be seen in the database" in dropped.stdout
    assert "PgBouncer's SHOW CLIENTS checked" in dropped.stdout
    (entry,) = json.loads(shims_cli("list", "--format", "json", "--database", url).stdout)
    assert entry["status"] == "dropped"


def test_drop_says_the_pooler_clients_were_not_checked_without_the_admin_console(bouncer, pg_url, example_migrations,
                                                                                   make_role):
    up(bouncer.url(pg_url), example_migrations)
    role = make_role()
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(sql.SQL("GRANT postgres TO {}").format(sql.Identifier(role)))  # trusted, not a pooler admin
    bouncer.allow(role)
    dropped = shims_cli("drop", SHIM, "--database", url_as(bouncer.url(pg_url), role), "--reason", "retired")
    assert dropped.returncode == 0, dropped.stderr
    assert "pooler detected: transaction (assumed)" in dropped.stdout
    assert "clients connected to the pooler were not checked" in dropped.stdout


def test_doctor_reports_the_pooler_and_its_mode(bouncer, pg_url, example_migrations, make_role):
    url = bouncer.url(pg_url)
    up(url, example_migrations)
    found = run_migrate("doctor", "--database", url, "--migrations", str(example_migrations), "--format", "json")
    assert found.returncode == 0, found.stderr
    (finding,) = [f for f in json.loads(found.stdout) if f["kind"] == "pooler"]
    assert finding["object"] == bouncer.mode and finding["severity"] == "info"
    assert f"pooler detected: {bouncer.mode} (" in finding["detail"]
    assert f"pool_mode = {bouncer.mode} from PgBouncer's SHOW DATABASES" in finding["detail"]
    assert "lease in _migrate_lock" in finding["detail"]
    assert ("no session SET" in finding["detail"]) == (bouncer.mode == "transaction")
    text = run_migrate("doctor", "--database", url, "--migrations", str(example_migrations))
    assert text.returncode == 0 and f"pooler (info): pooler detected: {bouncer.mode}" in text.stdout

    direct = run_migrate("doctor", "--database", pg_url, "--migrations", str(example_migrations), "--format", "json")
    assert direct.returncode == 0 and not [f for f in json.loads(direct.stdout) if f["kind"] == "pooler"]

    role = make_role()  # not a pooler admin: the mode cannot be read, transaction mode is assumed
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(sql.SQL("GRANT postgres TO {}").format(sql.Identifier(role)))
    bouncer.allow(role)
    assumed = run_migrate("doctor", "--database", url_as(url, role), "--migrations", str(example_migrations),
                          "--format", "json")
    (finding,) = [f for f in json.loads(assumed.stdout) if f["kind"] == "pooler"]
    assert "pooler detected: transaction (assumed)" in finding["detail"] and "not readable" in finding["detail"]
    configured = run_migrate("doctor", "--database", url_as(url, role), "--migrations", str(example_migrations),
                             "--format", "json", env={"MIGRATE_POOLER": bouncer.mode})
    (finding,) = [f for f in json.loads(configured.stdout) if f["kind"] == "pooler"]
    assert f"pooler detected: {bouncer.mode} (setting pooler = {bouncer.mode})" in finding["detail"]
