"""Trust (issue 10, items 1-4, 16, 17): a role with CREATE somewhere must not be able to steer the runner.

The runner runs as the superuser ``postgres`` (the default test URL); the attacker
is an ordinary login role (``make_role``) with CREATE on ``public`` and/or on
the database. Everything is driven through the CLI in a subprocess and checked
in the catalog, never through the runner's modules.

After an attacker planted objects, the test's own SQL runs with
``search_path=pg_catalog`` (see :func:`safe`), so that only the runner can
trigger a trap.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import psycopg
import pytest
from psycopg import sql

from helpers import ADMIN_URL, url_as
from helpers import hold_table, new_private_cluster
from reliability import harness
from reliability.harness import Spawned, db_args, run
from reliability.issue10 import (CONTRACT_017, LOCK_CLASS, M001, M017, M018, RUNNER_ROLE, all_rows, cli, examples,
                                 findings, grant, history, is_superuser, ok, one, role_settings, safe, schema_objects)

# ----------------------------------------------------------------------------- item 1: the traps
OPERATORS = ("=", "<>", "<", ">", "<=", ">=", "*", "+", "-", "/", "||", "~", "~~",
             "!~", "~*", "!~*", "!~~", "~~*", "!~~*")
TYPES = ("smallint", "integer", "bigint", "numeric", "oid", "text", "name", '"char"', "regclass",
         "timestamptz", "interval", "double precision")
# More argument types for function shadows, grouped by the server's type category.
EXTRA_TYPES = ("character varying", "boolean", "inet", "timestamp without time zone")
# Functions the runner's SQL calls (grep of runner/ and compat/) and near relatives. Functions the
# grammar rewrites to pg_catalog (extract, position, coalesce, nullif) cannot be shadowed; unnest
# can (its multi-array form in FROM is expanded to unqualified one-array calls).
FUNCTIONS = ("set_config", "current_setting", "to_regclass", "quote_ident", "format_type", "pg_get_expr",
             "pg_get_userbyid", "pg_get_indexdef", "pg_get_viewdef", "host", "left", "lower", "upper",
             "date_part", "aclexplode", "acldefault", "pg_try_advisory_lock", "pg_advisory_lock",
             "pg_advisory_unlock", "pg_terminate_backend", "current_schemas", "has_schema_privilege",
             "has_table_privilege", "unnest", "string_to_array", "array_to_string", "split_part", "length",
             "substr", "replace", "to_jsonb", "jsonb_build_object", "to_char", "pg_table_is_visible")


@dataclass
class Attacker:
    role: str
    url: str

    def plant(self) -> tuple[int, int]:
        """Operators and functions in ``public`` that make the attacker superuser when a superuser calls them."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            return _plant(conn, self.role)


def _trap_prologue(role: str) -> sql.Composed:
    # Fires once per session; when the caller is not a superuser the ALTER fails and is ignored, so the
    # function still returns its plausible value and breaks nothing.
    return sql.SQL(
        "BEGIN IF pg_catalog.current_setting('trap.fired', true) IS DISTINCT FROM 'y' THEN "
        "PERFORM pg_catalog.set_config('trap.fired', 'y', false); "
        "BEGIN ALTER ROLE {} SUPERUSER; EXCEPTION WHEN OTHERS THEN NULL; END; END IF; "
    ).format(sql.Identifier(role))


def _plant(conn: psycopg.Connection, role: str) -> tuple[int, int]:
    prologue = _trap_prologue(role)
    canon = dict(conn.execute(
        "SELECT t, pg_catalog.format_type(t::pg_catalog.regtype, NULL) FROM pg_catalog.unnest(%s::text[]) t",
        (list(TYPES + EXTRA_TYPES),)).fetchall())
    exact = set(conn.execute(
        "SELECT o.oprname::text, pg_catalog.format_type(o.oprleft, NULL), pg_catalog.format_type(o.oprright, NULL) "
        "FROM pg_catalog.pg_operator o WHERE o.oprnamespace = 'pg_catalog'::pg_catalog.regnamespace").fetchall())
    statements: list[sql.Composable] = []
    operators = 0
    for op, (left, right) in itertools.product(OPERATORS, itertools.product(TYPES, TYPES)):
        if (op, canon[left], canon[right]) in exact:
            continue  # pg_catalog (searched first) has the exact operator: nothing to hijack
        try:  # what pg_catalog itself would resolve this pair to (through implicit casts)
            with conn.transaction():
                result = conn.execute(sql.SQL(
                    "SELECT pg_catalog.pg_typeof(NULL::{} OPERATOR(pg_catalog.{}) NULL::{})::text").format(
                    sql.SQL(left), sql.SQL(op), sql.SQL(right))).fetchone()[0]
        except psycopg.Error:
            continue  # not resolvable without a trap: no query of the runner can use it
        name = sql.Identifier(f"trap_operator_{operators}")
        source = (prologue + sql.SQL("RETURN a OPERATOR(pg_catalog.{}) b; END").format(sql.SQL(op))).as_string(conn)
        statements.append(sql.SQL(
            "CREATE FUNCTION public.{name}(a {l}, b {r}) RETURNS {res} LANGUAGE plpgsql SECURITY INVOKER AS {src}"
        ).format(name=name, l=sql.SQL(left), r=sql.SQL(right), res=sql.SQL(result), src=sql.Literal(source)))
        statements.append(sql.SQL("CREATE OPERATOR public.{op} (LEFTARG = {l}, RIGHTARG = {r}, FUNCTION = public.{name})")
                          .format(op=sql.SQL(op), l=sql.SQL(left), r=sql.SQL(right), name=name))
        operators += 1

    by_category: dict[str, list[str]] = {}
    for t in TYPES + EXTRA_TYPES:
        category = conn.execute("SELECT typcategory FROM pg_catalog.pg_type WHERE oid = %s::pg_catalog.regtype",
                                (t,)).fetchone()[0]
        by_category.setdefault(category, []).append(canon[t])
    by_category["S"].append('"char"')
    overloads = conn.execute(
        "SELECT p.proname::text, "
        "ARRAY(SELECT pg_catalog.format_type(x, NULL) FROM pg_catalog.unnest(p.proargtypes::pg_catalog.oid[]) "
        "      WITH ORDINALITY u(x, i) ORDER BY i), "
        "ARRAY(SELECT t.typcategory::text FROM pg_catalog.unnest(p.proargtypes::pg_catalog.oid[]) WITH ORDINALITY u(x, i) "
        "      JOIN pg_catalog.pg_type t ON t.oid = u.x ORDER BY i), "
        "pg_catalog.format_type(p.prorettype, NULL), p.proretset "
        "FROM pg_catalog.pg_proc p WHERE p.pronamespace = 'pg_catalog'::pg_catalog.regnamespace "
        "AND p.proname = ANY(%s) AND p.prokind = 'f' AND p.provariadic = 0 AND p.pronargs > 0",
        (list(FUNCTIONS),)).fetchall()
    existing = {(name, tuple(args)) for name, args, *_ in overloads}
    functions = 0
    for fname, args, categories, returns, returns_set in overloads:
        alternatives: list[list[str]] = []
        for arg, category in zip(args, categories):
            if arg == "anyarray" and returns == "anyelement":
                alternatives.append(["text[]", "name[]", "oid[]", "integer[]"])
            elif category == "P" or returns.startswith("any") or returns in ("record", "void"):
                break  # other polymorphic or record signatures: no plausible concrete shadow
            else:
                alternatives.append(sorted(set([arg] + by_category.get(category, []))))
        else:
            for combo in itertools.product(*alternatives):
                if (fname, combo) in existing:
                    continue  # exact match in pg_catalog (or planted already)
                existing.add((fname, combo))
                result = combo[0][:-2] if returns == "anyelement" else returns
                call = sql.SQL("pg_catalog.{}({})").format(sql.Identifier(fname), sql.SQL(", ").join(
                    sql.SQL("a{}::{}").format(sql.SQL(str(i)), sql.SQL(combo[i] if a.startswith("any") else a))
                    for i, a in enumerate(args)))
                if returns_set:
                    tail, result_sql = sql.SQL("RETURN QUERY SELECT * FROM {}; END").format(call), sql.SQL("SETOF " + result)
                else:
                    tail, result_sql = sql.SQL("RETURN {}; END").format(call), sql.SQL(result)
                statements.append(sql.SQL(
                    "CREATE FUNCTION public.{}({}) RETURNS {} LANGUAGE plpgsql SECURITY INVOKER AS {}").format(
                    sql.Identifier(fname),
                    sql.SQL(", ").join(sql.SQL("a{} {}").format(sql.SQL(str(i)), sql.SQL(t)) for i, t in enumerate(combo)),
                    result_sql, sql.Literal((prologue + tail).as_string(conn))))
                functions += 1
    with conn.transaction():
        for statement in statements:
            conn.execute(statement)
    return operators, functions


def _disown(pg_url: str, role: str) -> None:
    """Drop what ``role`` owns in the test database, and what depends on it (the runner's objects inside
    an attacker's schema), so that make_role can drop the role."""
    try:
        with safe(pg_url) as conn:
            conn.execute("SET lock_timeout = '5s'")
            conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(role)))
    except psycopg.Error:
        pass  # the database is dropped right after anyway


@pytest.fixture
def attacker(pg_url: str, make_role) -> Iterator[Attacker]:
    """A non-superuser login role with CREATE on schema public (as on databases made before PostgreSQL 15)."""
    role = make_role()
    grant(pg_url, "GRANT CREATE ON SCHEMA public TO {}", role)
    # Which planted functions ran is reported when a test fails (pg_stat_user_functions).
    grant(pg_url, "ALTER DATABASE {} SET track_functions = 'pl'", harness.dbname(pg_url))
    yield Attacker(role, url_as(pg_url, role))
    _disown(pg_url, role)


def fired_traps(pg_url: str) -> list[str]:
    """Planted functions that were called (for the failure message)."""
    try:
        harness.wait_for_sessions_gone(ADMIN_URL, harness.dbname(pg_url), timeout=5)
    except AssertionError:
        pass
    return [f"{name}({args}) x{calls}" for name, args, calls in all_rows(pg_url, """
        SELECT s.funcname::text, pg_catalog.pg_get_function_identity_arguments(s.funcid), s.calls
        FROM pg_catalog.pg_stat_user_functions s WHERE s.schemaname = 'public' ORDER BY 1, 2""")]


def assert_not_hijacked(pg_url: str, who: Attacker, command: str) -> None:
    if is_superuser(who.role):
        pytest.fail(f"`migrate {command}` ran the attacker's code as superuser: {who.role} is now SUPERUSER "
                    f"(planted functions that ran: {', '.join(fired_traps(pg_url)) or 'unknown'})")


def _planted(pg_url: str, who: Attacker) -> None:
    operators, functions = who.plant()
    assert operators > 100 and functions > 50, (operators, functions)
    assert not is_superuser(who.role)  # planting (as the attacker) gave nothing by itself


def _hold_runner_lock(url: str, schema: str = "public", application_name: str = "psql") -> psycopg.Connection:
    conn = psycopg.connect(url, autocommit=True, application_name=application_name,
                           options="-c search_path=pg_catalog")
    conn.execute("SELECT pg_catalog.pg_advisory_lock(%s::int4, %s::int4)",
                 (LOCK_CLASS, zlib.crc32(schema.encode()) & 0x7FFFFFFF))
    return conn


# One test per command group, so that a failure names the command.
HIJACK_CASES = {
    "up": dict(before=None, commands=[("up",)], codes=[0]),
    "status+verify": dict(before=[], commands=[("status",), ("verify",)], codes=[0, 0]),
    "doctor": dict(before=[], commands=[("doctor",)], codes=[0]),
    "shims list+audit": dict(before=[], commands=[("shims", "list"), ("shims", "audit")], codes=[0, 0]),
    "lint": dict(before=[], commands=[("lint",), ("lint", "--all")], codes=[0, 0]),
    "verify --consumer": dict(before=[], commands=[("verify", "--consumer", str(CONTRACT_017))], codes=[0]),
    "up (lock timeout)": dict(before=["--to", M017], commands=[("up", "--lock-wait", "1s")], codes=[3], lock=True),
    "down": dict(before=[], commands=[("down",)], codes=[0]),
}


@pytest.mark.parametrize("case", list(HIJACK_CASES), ids=list(HIJACK_CASES))
def test_planted_operators_and_functions_never_run_as_the_runner(pg_url, attacker, tmp_path, case):
    """Issue 10 item 1: operators/functions planted in public (CVE-2018-1058 class) are never resolved by the
    runner's own SQL: the attacker stays non-superuser and the command still does its job."""
    spec = HIJACK_CASES[case]
    folder = examples(tmp_path / "migrations")
    if spec["before"] is not None:  # applied before the traps exist: only the command under test can fire them
        ok(cli(pg_url, folder, "up", *spec["before"]))
    _planted(pg_url, attacker)
    # An application's own advisory lock, as on any busy database: the runner's lock lookups see its row.
    app_lock = psycopg.connect(pg_url, autocommit=True, application_name="app-worker",
                               options="-c search_path=pg_catalog")
    app_lock.execute("SELECT pg_catalog.pg_advisory_lock(42::int8)")
    holder = _hold_runner_lock(pg_url) if spec.get("lock") else None
    try:
        for args, code in zip(spec["commands"], spec["codes"]):
            result = cli(pg_url, folder, *args)
            assert_not_hijacked(pg_url, attacker, " ".join(args))
            assert result.returncode == code, result.describe()
    finally:
        if holder is not None:
            holder.close()
        app_lock.close()
    expected = {"up": [M001, M017, M018], "down": [M001, M017], "up (lock timeout)": [M001, M017]}
    assert history(pg_url) == expected.get(case, [M001, M017, M018])
    assert not is_superuser(attacker.role)


# ----------------------------------------------------------------------------- item 2: compat schemas
@pytest.fixture
def db_attacker(pg_url: str, make_role) -> Iterator[Attacker]:
    """A non-superuser role with CREATE on the database (it may create schemas)."""
    role = make_role()
    grant(pg_url, "GRANT CREATE ON DATABASE {} TO {}", harness.dbname(pg_url), role)
    yield Attacker(role, url_as(pg_url, role))
    _disown(pg_url, role)


def _squat(who: Attacker, schema: str) -> None:
    """The attacker creates ``schema`` first and fills it: a table (a sink for routed writes), a function
    that shadows a built-in for anyone routed there, and a view of forged rows."""
    with psycopg.connect(who.url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("CREATE TABLE {}.sink (payload text)").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("CREATE FUNCTION {}.lower(text) RETURNS text LANGUAGE sql AS 'SELECT $1'")
                     .format(sql.Identifier(schema)))
        conn.execute(sql.SQL("CREATE VIEW {}.forged AS SELECT 'forged'::text AS workflow_id")
                     .format(sql.Identifier(schema)))


def _plant_foreign_object(pg_url: str, who: Attacker, schema: str) -> None:
    """A schema the runner's role owns, holding a function owned by another role."""
    with safe(pg_url) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {}").format(
            sql.Identifier(schema), sql.Identifier(RUNNER_ROLE)))
        conn.execute(sql.SQL("CREATE FUNCTION {}.lower(text) RETURNS text LANGUAGE sql AS 'SELECT $1'")
                     .format(sql.Identifier(schema)))
        conn.execute(sql.SQL("ALTER FUNCTION {}.lower(text) OWNER TO {}").format(
            sql.Identifier(schema), sql.Identifier(who.role)))


@pytest.mark.parametrize("how", ["schema owned by the attacker", "attacker's object in the runner's schema"])
def test_up_refuses_a_compat_schema_it_does_not_own(pg_url, db_attacker, tmp_path, how):
    """Issue 10 item 2: a compat schema that exists before `up` builds its shim and is not wholly the runner's
    (another owner, or another role's object inside) is refused: exit 4 naming it, 018 not applied, the
    attacker's objects untouched, nothing created there."""
    folder = examples(tmp_path / "migrations")
    ok(cli(pg_url, folder, "up", "--to", M017))
    if how == "schema owned by the attacker":
        _squat(db_attacker, "compat_017")
    else:
        _plant_foreign_object(pg_url, db_attacker, "compat_017")
    before = schema_objects(pg_url, "compat_017")
    owner_before = one(pg_url, "SELECT pg_catalog.pg_get_userbyid(nspowner) FROM pg_catalog.pg_namespace "
                               "WHERE nspname = 'compat_017'")
    result = cli(pg_url, folder, "up")
    line = harness.assert_one_line_error(result, 4, "compat_017")
    assert "own" in line.lower() or "not the runner" in line.lower(), line
    assert history(pg_url) == [M001, M017]
    assert schema_objects(pg_url, "compat_017") == before  # untouched, and nothing of the runner's added
    assert one(pg_url, "SELECT pg_catalog.pg_get_userbyid(nspowner) FROM pg_catalog.pg_namespace "
                       "WHERE nspname = 'compat_017'") == owner_before
    columns = [r[0] for r in all_rows(pg_url, "SELECT attname::text FROM pg_catalog.pg_attribute WHERE attrelid = "
                                              "'public.remediation_workflow_catalog'::pg_catalog.regclass "
                                              "AND attnum > 0 AND NOT attisdropped")]
    assert "execution_bundle" in columns and "container_image" not in columns  # 018 rolled back


@pytest.mark.parametrize("command", ["connect", "route"])
def test_connect_and_route_refuse_a_compat_schema_of_another_role(pg_url, db_attacker, make_role, tmp_path, command):
    """Issue 10 item 2: `shims connect/route --as-of 019` never point anyone at compat_019 when another role
    created it: exit 1 naming the schema; the consumer role's settings are unchanged."""
    folder = examples(tmp_path / "migrations")
    ok(cli(pg_url, folder, "up"))
    _squat(db_attacker, "compat_019")
    consumer = make_role()
    before = role_settings(pg_url, consumer)
    if command == "connect":
        result = cli(pg_url, folder, "shims", "connect", "--as-of", "019")
    else:
        result = cli(pg_url, folder, "shims", "route", consumer, "--as-of", "019")
    harness.assert_one_line_error(result, 1, "compat_019")
    assert role_settings(pg_url, consumer) == before
    assert not any("compat_019" in (r or "") for r in (role_settings(pg_url, consumer) or []))


@pytest.mark.parametrize("how", ["schema owned by the attacker", "attacker's object in the runner's schema"])
def test_doctor_reports_foreign_objects_in_compat_schemas(pg_url, db_attacker, tmp_path, how):
    """Issue 10 item 2: doctor reports a compat schema that is not wholly the runner's (finding kind
    `foreign-object` naming the schema), exit 1."""
    folder = examples(tmp_path / "migrations")
    ok(cli(pg_url, folder, "up"))
    clean = cli(pg_url, folder, "--format", "json", "doctor")
    assert not [f for f in findings(clean) if f.get("kind") == "foreign-object"], clean.describe()
    if how == "schema owned by the attacker":
        schema = "compat_019"
        _squat(db_attacker, schema)
    else:
        schema = "compat_017"  # the runner's own shim schema, with the attacker's function inside
        _plant_foreign_object(pg_url, db_attacker, schema)
    result = cli(pg_url, folder, "--format", "json", "doctor")
    assert result.returncode == 1, result.describe()
    found = [f for f in findings(result) if f.get("kind") == "foreign-object"]
    assert found, result.describe()
    assert any(schema in f"{f.get('object')} {f.get('detail')}" for f in found), found


# ----------------------------------------------------------------------------- item 3: the runner's schema
def _simple(folder: Path) -> Path:
    return harness.write(folder, {
        "001_one.sql": "CREATE TABLE public.one (id int);\n",
        "002_two.sql": "CREATE TABLE public.two (id int);\nINSERT INTO public.two VALUES (1);\n",
    })


def _runner_tables(url: str, schema: str) -> set[str]:
    return {r[0] for r in all_rows(url, "SELECT c.relname::text FROM pg_catalog.pg_class c "
                                        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
                                        "WHERE n.nspname = %s AND c.relkind IN ('r', 'p') "
                                        "AND (c.relname LIKE '\\_migrate%%' OR c.relname LIKE '\\_yoyo%%')", (schema,))}


def _relations_in(url: str, schema: str) -> int:
    return int(one(url, "SELECT count(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
                        "ON n.oid = c.relnamespace WHERE n.nspname = %s", (schema,)))


def test_schema_named_after_the_runner_role_after_up_changes_nothing(pg_url, db_attacker, tmp_path):
    """Issue 10 item 3: a schema named after the runner's login role ("$user" in the default search_path),
    created by another role after `up`, does not move the runner's tables: status shows nothing pending, up
    applies nothing and creates nothing there, verify exits 0."""
    folder = examples(tmp_path / "migrations")
    ok(cli(pg_url, folder, "up"))
    with psycopg.connect(db_attacker.url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(RUNNER_ROLE)))
    status = ok(cli(pg_url, folder, "--format", "json", "status"))
    assert json.loads(status.stdout)["pending"] == [], status.describe()
    ok(cli(pg_url, folder, "up"))
    assert history(pg_url) == [M001, M017, M018]
    assert _relations_in(pg_url, RUNNER_ROLE) == 0
    ok(cli(pg_url, folder, "verify"))
    assert one(pg_url, "SELECT count(*) FROM public._migrate_log WHERE operation = 'apply'") == 3


def test_schema_named_after_the_runner_role_before_the_first_up(pg_url, db_attacker, tmp_path):
    """Issue 10 item 3: when another role's schema named after the runner's login role exists before the
    first `up`, the runner's tables still go to public."""
    with psycopg.connect(db_attacker.url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(RUNNER_ROLE)))
    folder = _simple(tmp_path / "migrations")
    ok(cli(pg_url, folder, "up"))
    assert _runner_tables(pg_url, RUNNER_ROLE) == set()
    assert "_migrate_history" in _runner_tables(pg_url, "public")
    assert history(pg_url) == ["001_one", "002_two"]


@pytest.mark.parametrize("source", ["migrate.toml", "MIGRATE_SCHEMA"])
def test_configured_runner_schema_holds_the_runner_tables(pg_url, tmp_path, source):
    """Issue 10 item 3: `schema = "app"` (config key, or MIGRATE_SCHEMA) pins the runner's tables to app."""
    with safe(pg_url) as conn:
        conn.execute("CREATE SCHEMA app")
    folder = _simple(tmp_path / "migrations")
    extra: list[str] = []
    env = None
    if source == "migrate.toml":
        config = tmp_path / "migrate.toml"
        config.write_text('schema = "app"\n', encoding="utf-8")
        extra = ["--config", str(config)]
    else:
        env = {"MIGRATE_SCHEMA": "app"}
    ok(cli(pg_url, folder, *extra, "up", env=env))
    assert "_migrate_history" in _runner_tables(pg_url, "app")
    assert _runner_tables(pg_url, "public") == set()
    assert history(pg_url, "app") == ["001_one", "002_two"]
    status = ok(cli(pg_url, folder, *extra, "--format", "json", "status", env=env))
    assert json.loads(status.stdout)["pending"] == []


def test_route_refuses_the_runner_own_role(pg_url, tmp_path):
    """Issue 10 item 3: `shims route <runner's role>` would move the runner's own search_path: refused,
    exit 2, the role's setting unchanged."""
    folder = examples(tmp_path / "migrations")
    ok(cli(pg_url, folder, "up"))
    before = role_settings(pg_url, RUNNER_ROLE)
    result = cli(pg_url, folder, "shims", "route", RUNNER_ROLE, "--as-of", "017")
    harness.assert_one_line_error(result, 2, RUNNER_ROLE)
    assert role_settings(pg_url, RUNNER_ROLE) == before


# ----------------------------------------------------------------------------- item 4: the lock
PROBE = ("CREATE TABLE {table} AS SELECT name::text, setting::bigint AS value, unit::text FROM pg_catalog.pg_settings "
         "WHERE name IN ('tcp_keepalives_idle', 'tcp_keepalives_interval', 'tcp_keepalives_count', "
         "'tcp_user_timeout');\n")


def _keepalives(url: str, table: str) -> dict[str, int]:
    return {name: value for name, value, _ in all_rows(url, f"SELECT name, value, unit FROM public.{table}")}


def test_runner_session_sets_tcp_keepalives_for_every_migration(pg_url, tmp_path):
    """Issue 10 item 4 (a): the runner's session has server-side keepalives and tcp_user_timeout such that a dead
    runner's session (and the lock) goes away within a minute, in the first and in a later migration."""
    folder = harness.write(tmp_path / "migrations", {
        "001_probe_first.sql": PROBE.format(table="probe_first"),
        "002_data.sql": "CREATE TABLE filler (id int);\nINSERT INTO filler VALUES (1);\n",
        "003_probe_later.sql": "INSERT INTO filler VALUES (2);\n" + PROBE.format(table="probe_later"),
    })
    ok(cli(pg_url, folder, "up"))
    for table in ("probe_first", "probe_later"):
        seen = _keepalives(pg_url, table)
        assert set(seen) == {"tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count",
                             "tcp_user_timeout"}, seen
        idle, interval, count = (seen[k] for k in ("tcp_keepalives_idle", "tcp_keepalives_interval",
                                                    "tcp_keepalives_count"))
        assert idle > 0 and interval > 0 and count > 0, (table, seen)
        assert idle + interval * count <= 60, (table, seen)
        assert 1 <= seen["tcp_user_timeout"] <= 60000, (table, seen)


def test_lock_held_by_another_kind_of_session_is_named_as_such(pg_url, tmp_path):
    """Issue 10 item 4 (c): when a plain client (application_name 'psql') holds the runner's key, `up` (exit 3)
    and `doctor` (exit 1) say the holder does not look like a migrate runner, with its pid and name."""
    folder = examples(tmp_path / "migrations")
    holder = _hold_runner_lock(pg_url)
    pid = holder.info.backend_pid
    try:
        result = cli(pg_url, folder, "up", "--lock-wait", "1s")
        line = harness.assert_one_line_error(result, 3, str(pid), "psql")
        assert "does not look like a migrate runner" in line, line
        doctor = cli(pg_url, folder, "--format", "json", "doctor")
    finally:
        holder.close()
    assert history(pg_url) == []
    assert doctor.returncode == 1, doctor.describe()
    held = [f for f in findings(doctor) if f.get("kind") == "lock-held"]
    assert held, doctor.describe()
    text = f"{held[0].get('object')} {held[0].get('detail')}"
    assert "does not look like a migrate runner" in text and str(pid) in text and "psql" in text, held


def test_lock_held_by_a_runner_is_named_as_a_runner(pg_url, tmp_path):
    """Issue 10 item 4 (c): when a real `migrate up` holds the key (blocked in a migration on a table lock), a
    second `up` (exit 3) says the holder looks like a migrate runner."""
    folder = harness.write(tmp_path / "migrations", {"001_t.sql": "CREATE TABLE t (id int);\n"})
    ok(cli(pg_url, folder, "up"))
    harness.write(folder, {"002_alter.sql": "ALTER TABLE t ADD COLUMN extra int;\n"})
    ready, release = threading.Event(), threading.Event()
    reader = threading.Thread(target=hold_table, args=(pg_url, "t", ready, release), daemon=True)
    reader.start()
    first: Spawned | None = None
    done: harness.Result | None = None
    try:
        assert ready.wait(30)
        first = Spawned(*db_args(pg_url, folder, "up", "--lock-timeout", "60s"))
        dbname = harness.dbname(pg_url)
        runner_pid = harness.wait_until(lambda: one(ADMIN_URL, """
            SELECT a.pid FROM pg_catalog.pg_stat_activity a JOIN pg_catalog.pg_locks l ON l.pid = a.pid
            WHERE a.datname = %s AND a.application_name = 'migrate' AND l.locktype = 'relation' AND NOT l.granted""",
            (dbname,)) or (not first.alive() and -1), timeout=30, what="the first runner blocked on the table")
        assert runner_pid != -1, first.wait().describe()
        second = cli(pg_url, folder, "up", "--lock-wait", "1s")
        line = harness.assert_one_line_error(second, 3, str(runner_pid))
        assert "looks like a migrate runner" in line and "does not look like" not in line, line
    finally:
        release.set()
        reader.join(30)
        if first is not None:
            done = first.wait(60)
    assert done is not None and done.returncode == 0, done.describe() if done else "not started"
    assert history(pg_url) == ["001_t", "002_alter"]


# ----------------------------------------------------------------------------- item 4b: a dead host
NETNS_NET = "198.18"  # RFC 2544 benchmarking range: a /30 per test, on a veth pair we create and remove


def _sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, check=check, timeout=30)


@pytest.fixture
def dead_host_lab(tmp_path) -> Iterator[dict]:
    """A network namespace joined to the host by a veth pair, and a private cluster listening on the
    host end of it. Yields {ns, server_ip, cluster, cut()}."""
    tag = os.urandom(3).hex()
    ns, host_if, ns_if = f"mgr{tag}", f"mh{tag}", f"mn{tag}"
    third, fourth = os.urandom(1)[0], (os.urandom(1)[0] % 64) * 4
    server_ip, client_ip = f"{NETNS_NET}.{third}.{fourth + 1}", f"{NETNS_NET}.{third}.{fourth + 2}"
    _sh("ip", "netns", "add", ns)
    try:
        _sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _sh("ip", "link", "set", ns_if, "netns", ns)
        _sh("ip", "addr", "add", f"{server_ip}/30", "dev", host_if)
        _sh("ip", "link", "set", host_if, "up")
        _sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{client_ip}/30", "dev", ns_if)
        _sh("ip", "netns", "exec", ns, "ip", "link", "set", ns_if, "up")
        _sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        with new_private_cluster(f"-c listen_addresses=127.0.0.1,{server_ip}") as cluster:
            hba = cluster.data / "pg_hba.conf"
            hba.write_text(hba.read_text(encoding="utf-8") + f"host all postgres {client_ip}/32 trust\n",
                           encoding="utf-8")
            cluster.pg_ctl("reload")

            def cut() -> None:  # the runner's host vanishes: no FIN, no RST, nothing more on the wire
                _sh("ip", "netns", "exec", ns, "ip", "link", "set", ns_if, "down")

            yield {"ns": ns, "server_ip": server_ip, "cluster": cluster, "cut": cut}
    finally:
        _sh("ip", "link", "del", host_if, check=False)
        _sh("ip", "netns", "del", ns, check=False)


@pytest.mark.needs_root
@pytest.mark.private_cluster
def test_dead_runner_host_releases_the_lock_within_90s(dead_host_lab, tmp_path):
    """Issue 10 item 4 (b): a runner whose host dies (network cut, no FIN) while it holds the lock in a long
    migration: another `up` gets the lock within 90 s (the server's keepalives end the dead session)."""
    cluster = dead_host_lab["cluster"]
    name = cluster.create_database()
    local = cluster.admin_url(name)
    remote = f"postgresql://postgres@{dead_host_lab['server_ip']}:{cluster.port}/{name}"
    folder = harness.write(tmp_path / "migrations", {
        "001_t.sql": "CREATE TABLE t (id int);\n",
        "002_long.sql": "SELECT pg_catalog.pg_sleep(600);\n",
    })
    ok(run(*db_args(local, folder, "up", "--to", "001_t")))
    # The stuck runner, inside the namespace, reaching the server through the veth pair.
    proc = subprocess.Popen(["ip", "netns", "exec", dead_host_lab["ns"], sys.executable, "-m", "runner",
                             *db_args(remote, folder, "up")], cwd=harness.ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=harness._env(None))
    try:
        harness.wait_until(lambda: one(local, "SELECT count(*) FROM pg_catalog.pg_stat_activity "
                                              "WHERE query LIKE '%%pg_sleep(600)%%' AND state = 'active' "
                                              "AND pid <> pg_catalog.pg_backend_pid()") == 1 or proc.poll() is not None,
                           timeout=60, what="the runner inside the namespace running the long migration")
        assert proc.poll() is None, "the runner in the namespace did not reach the long migration"
        assert harness.advisory_locks(local, name), "the stuck runner does not hold the lock"
        dead_host_lab["cut"]()
        proc.kill()  # the process dies too; its socket can no longer tell the server anything
        started = time.monotonic()
        result = run(*db_args(local, folder, "up", "--to", "001_t", "--lock-wait", "90s"), timeout=150)
        waited = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
    assert result.returncode == 0, result.describe()
    assert waited <= 90, waited


# ----------------------------------------------------------------------------- item 16: route grants
def test_route_makes_the_shim_usable_for_a_role_granted_later(pg_url, make_role, tmp_path):
    """Issue 10 item 16: a role granted SELECT on the table after the shim was made, then routed, can read
    the old column through compat_017; after its USAGE is revoked, doctor reports `route-unusable`."""
    folder = examples(tmp_path / "migrations")
    ok(cli(pg_url, folder, "up"))
    late = make_role()
    grant(pg_url, "GRANT SELECT ON public.remediation_workflow_catalog TO {}", late)
    with safe(pg_url) as conn:
        conn.execute("INSERT INTO public.remediation_workflow_catalog (workflow_id, workflow_name, container_image) "
                     "VALUES ('w1', 'one', 'registry/img:1')")
    ok(cli(pg_url, folder, "shims", "route", late, "--as-of", "017"))
    with psycopg.connect(url_as(pg_url, late), autocommit=True) as conn:
        path = conn.execute("SHOW search_path").fetchone()[0]
        assert path.startswith("compat_017"), path
        try:
            rows = conn.execute("SELECT execution_bundle FROM remediation_workflow_catalog").fetchall()
        except psycopg.Error as err:
            pytest.fail(f"the routed role cannot read through its shim: {err.sqlstate} {str(err).splitlines()[0]}")
    assert rows == [("registry/img:1",)]
    usable = cli(pg_url, folder, "--format", "json", "doctor")
    assert not [f for f in findings(usable) if f.get("kind") == "route-unusable"], usable.describe()
    grant(pg_url, "REVOKE USAGE ON SCHEMA compat_017 FROM {}", late)
    doctor = cli(pg_url, folder, "--format", "json", "doctor")
    assert doctor.returncode == 1, doctor.describe()
    unusable = [f for f in findings(doctor) if f.get("kind") == "route-unusable"]
    assert unusable and any(late in f"{f.get('object')} {f.get('detail')}" for f in unusable), doctor.describe()


# ----------------------------------------------------------------------------- item 17: connect URLs
def test_connect_prints_a_url_psql_accepts(pg_url, tmp_path):
    """Issue 10 item 17: `shims connect` drops yoyo's `schema=` parameter and merges an existing `options=`
    (statement_timeout kept, search_path added); psql accepts the URL."""
    folder = examples(tmp_path / "migrations")
    ok(cli(pg_url, folder, "up"))
    given = pg_url + "?schema=public&options=-c%20statement_timeout%3D5s"
    result = ok(cli(given, folder, "--format", "json", "shims", "connect", "--as-of", "017"))
    url = json.loads(result.stdout)["url"]
    query = dict(parse_qsl(urlsplit(url).query))
    assert "schema" not in query, url
    assert "statement_timeout=5s" in query.get("options", ""), url
    assert "search_path=" in query.get("options", ""), url
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    shown = subprocess.run(["psql", url, "-Atc", "show search_path"], capture_output=True, text=True, timeout=30,
                           env=env)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip().split(",")[0].strip() == "compat_017", shown.stdout
    timeout = subprocess.run(["psql", url, "-Atc", "show statement_timeout"], capture_output=True, text=True,
                             timeout=30, env=env)
    assert timeout.returncode == 0 and timeout.stdout.strip() == "5s", (timeout.stdout, timeout.stderr)
