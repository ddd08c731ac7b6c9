"""Where a fleet's targets come from: a fleet file, a catalog query, a command; waves; errors named."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from runner.errors import ConfigError, UsageError
from runner.fleet_targets import (Target, command_targets, file_waves, load_fleet_file, query_targets, select_tags,
                                  unique)

URL = "postgresql://app@db.example:5432/app"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fleet.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_fleet_file_targets_tags_schemas_and_waves(tmp_path):
    path = write(tmp_path, f"""
database = "{URL}"

[targets.eu-1]
url = "postgresql://app@eu1/app"
tags = ["canary"]
group = "eu"

[targets.eu-2]
url_env = "EU2_URL"
group = "eu"

[targets.acme]
schema = "tenant_acme"

[targets.us-1]
url = "postgresql://app@us1/app"

[[waves]]
name = "canary"
select = ["tag:canary"]

[[waves]]
select = ["tag:eu", "acme"]
""")
    fleet = load_fleet_file(path, None, env={"EU2_URL": "postgresql://app@eu2/app"})
    by_name = {t.name: t for t in fleet.targets}
    assert by_name["eu-1"] == Target("eu-1", "postgresql://app@eu1/app", None, ("canary", "eu"))
    assert by_name["eu-2"].url == "postgresql://app@eu2/app"
    assert by_name["acme"] == Target("acme", URL, "tenant_acme", ())
    waves = file_waves(fleet, fleet.targets)
    assert [(w.name, [t.name for t in w.targets]) for w in waves] == [
        ("canary", ["eu-1"]), ("wave 2", ["eu-2", "acme"]), ("rest", ["us-1"])]
    assert [t.name for t in select_tags(fleet.targets, ("eu",))] == ["eu-1", "eu-2"]


def test_fleet_file_schema_template_names_each_tenant(tmp_path):
    path = write(tmp_path, 'schema_template = "tenant_{id}"\n[targets.7]\n[targets.8]\nschema = "special"\n')
    fleet = load_fleet_file(path, URL)
    assert [(t.name, t.url, t.schema) for t in fleet.targets] == [("7", URL, "tenant_7"), ("8", URL, "special")]


@pytest.mark.parametrize("text, message", [
    ("[targets.a]\nurl = 'postgresql://h/d'\ncolour = 1\n", "[targets.a]: unknown key 'colour'"),
    ("[targets.a]\n", "[targets.a]: no url"),
    ("[targets.a]\nurl_env = 'NOPE_NOT_SET'\n", "environment variable NOPE_NOT_SET is not set"),
    ("[targets.a]\nurl = 'postgresql://h/d'\n[[waves]]\nselect = ['b']\n", "[[waves]] #1: select: no target or tag "
                                                                          "matches 'b'"),
    ("targets = 3\n", "targets: expected tables"),
    ("schema_template = 'x_{name}'\n", "schema template 'x_{name}' must contain {id}"),
    ("[targets.a\n", "invalid TOML"),
    ("fleet = 1\n", "unknown key 'fleet'"),
])
def test_fleet_file_errors_name_the_file_and_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises((ConfigError, UsageError)) as err:
        load_fleet_file(path, None, env={})
    assert str(path) in str(err.value)
    assert message in str(err.value)


def test_command_targets_urls_schemas_and_names(tmp_path):
    script = tmp_path / "list.py"
    script.write_text("print('# comment'); print(); print('postgresql://u:secret@h/db1'); print('blue 42'); "
                      "print('43')\n", encoding="utf-8")
    found = list(command_targets(f"{sys.executable} {script}", URL, None))
    assert found[0] == Target("u:***@h/db1", "postgresql://u:secret@h/db1")
    assert found[1:] == [Target("blue", URL, "42"), Target("43", URL, "43")]
    tenants = list(command_targets(f"{sys.executable} -c \"print(1); print(2)\"", URL, "tenant_{id}"))
    assert [(t.name, t.schema) for t in tenants] == [("tenant_1", "tenant_1"), ("tenant_2", "tenant_2")]


def test_command_targets_failures_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="--targets-cmd: .* exited with status 3"):
        list(command_targets(f"{sys.executable} -c \"import sys; print(1); sys.exit(3)\"", URL, None))
    with pytest.raises(UsageError, match="--targets-cmd: cannot run"):
        list(command_targets("/nonexistent/cmd", URL, None))
    with pytest.raises(UsageError, match="no URL, and no --database"):
        list(command_targets(f"{sys.executable} -c \"print('tenant')\"", None, None))
    with pytest.raises(UsageError, match="listed twice"):
        list(unique(command_targets(f"{sys.executable} -c \"print(1); print(1)\"", URL, None)))


def test_query_targets_streams_from_the_catalog(pg_url, pg_conn):
    pg_conn.execute("CREATE TABLE tenants (id int, active bool)")
    pg_conn.execute("CREATE SEQUENCE s")
    pg_conn.execute("INSERT INTO tenants SELECT g, g % 2 = 0 FROM generate_series(1, 1200) g")
    stream = query_targets(pg_url, "SELECT id FROM tenants WHERE active ORDER BY id", "tenant_{id}")
    found = [next(stream)]
    # While the fleet runs, the catalog session holds no transaction (no snapshot a tenant's
    # CREATE INDEX CONCURRENTLY would wait for).
    assert pg_conn.execute("SELECT state, backend_xmin FROM pg_stat_activity WHERE application_name = 'migrate' "
                           "AND datname = current_database()").fetchall() == [("idle", None)]
    found += list(stream)
    assert len(found) == 600
    assert (found[0].name, found[0].url, found[0].schema) == ("tenant_2", pg_url, "tenant_2")
    named = list(query_targets(pg_url, "SELECT 'n' || id, 'postgresql://x@h/db' || id FROM tenants WHERE id < 3",
                               None))
    assert named == [Target("n1", "postgresql://x@h/db1"), Target("n2", "postgresql://x@h/db2")]
    with pytest.raises(UsageError, match="--targets-sql: .*tenantz"):
        list(query_targets(pg_url, "SELECT id FROM tenantz", None))
    for writing in ("INSERT INTO tenants VALUES (1, true) RETURNING id",
                    "WITH x AS (INSERT INTO tenants VALUES (1, true) RETURNING id) SELECT id FROM x",
                    "SELECT pg_catalog.nextval('s')"):
        with pytest.raises(UsageError, match="--targets-sql: "):
            list(query_targets(pg_url, writing, None))
    assert pg_conn.execute("SELECT count(*) FROM tenants").fetchone()[0] == 1200
    with pytest.raises(UsageError, match="row 1: expected one column"):
        list(query_targets(pg_url, "SELECT 1, 2, 3", None))
