"""The story (issue 12): consumers pinned at 016 and 017 keep working through an added column (017),
a rename (018), a dropped and a retyped column on a second table (019) and a table rename (020),
until `shims drop --expired` ends each window; `verify --consumer` names each one's search_path.

Runs the real CLI (`migrate up`, `shims list/drop`, `verify`) on tests/fixtures/shapes_story
([compat] mode = "auto": no directive in the migrations), with consumers connected before the
rollout and checking `SELECT *` strictly (exact names and order, like Go sqlx).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import psycopg
import pytest

from helpers import run_migrate
from compat.registry import SHIMS
from runner.db import connect

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "shapes_story"
CATALOG = "remediation_workflow_catalog"
RUNS = "workflow_runs"
SEEN = {  # what each version's code scans, in order
    "016": {CATALOG: ["workflow_id", "workflow_name", "status", "created_at"],
            RUNS: ["run_id", "workflow_id", "attempts", "legacy_note", "state"]},
    "017": {CATALOG: ["workflow_id", "workflow_name", "status", "created_at", "execution_bundle"],
            RUNS: ["run_id", "workflow_id", "attempts", "legacy_note", "state"]},
}
STEPS = ["017_add_execution_bundle", "018_rename_execution_bundle", "019_runs_drop_note_retype_attempts",
         "020_rename_runs_to_executions"]


def strict_scan(conn, version: str, table: str) -> list[tuple]:
    """SELECT * with a strict column check, as sqlx does: any extra or missing column fails."""
    cur = conn.execute(f"SELECT * FROM {table} ORDER BY 1")
    names = [d.name for d in cur.description]
    assert names == SEEN[version][table], f"{version} consumer scanning {table}: {names}"
    return cur.fetchall()


def cli(folder: Path, *args: str):
    return run_migrate(*args, cwd=folder)


@pytest.fixture
def story(tmp_path: Path) -> Path:
    folder = tmp_path / "story"
    shutil.copytree(FIXTURE, folder)
    return folder


def test_story_postgresql(story: Path, pg_url: str):
    db = ("--database", pg_url)
    result = cli(story, "up", *db, "--to", "016_create_catalog_and_runs")
    assert result.returncode == 0, result.stderr
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(f"INSERT INTO {CATALOG} (workflow_name) VALUES ('restart-pod')")
        admin.execute(f"INSERT INTO {RUNS} (workflow_id, attempts, legacy_note) VALUES (1, 2, 'old')")
    c16 = psycopg.connect(pg_url, autocommit=True, options="-c search_path=compat_016,public")
    c17 = psycopg.connect(pg_url, autocommit=True, options="-c search_path=compat_017,public")
    try:
        for step in STEPS:
            result = cli(story, "up", *db, "--to", step)
            assert result.returncode == 0, result.stderr
            for version, conn in (("016", c16), ("017", c17)):
                for table in SEEN[version]:
                    strict_scan(conn, version, table)
            # writes through the old names wherever the view allows them
            c16.execute(f"INSERT INTO {CATALOG} (workflow_name) VALUES (%s)", (f"from-016-at-{step[:3]}",))
            c16.execute(f"UPDATE {CATALOG} SET status = 'active' WHERE workflow_name = 'restart-pod'")
            c17.execute(f"UPDATE {CATALOG} SET execution_bundle = %s WHERE workflow_id = 1", (f"img:{step[:3]}",))
            c17.execute(f"INSERT INTO {RUNS} (workflow_id, state) VALUES (1, %s)", (f"queued-{step[:3]}",))
            c16.execute(f"UPDATE {RUNS} SET state = 'done' WHERE run_id = 1")
        # after 019/020: dropped and retyped columns read as the old type, and refuse writes
        rows = strict_scan(c16, "016", RUNS)
        assert rows[0] == (1, 1, 2, None, "done")
        assert type(rows[0][2]) is int
        with pytest.raises(psycopg.errors.FeatureNotSupported, match='column "legacy_note" of view "workflow_runs"'):
            c16.execute(f"UPDATE {RUNS} SET legacy_note = 'x'")
        with pytest.raises(psycopg.errors.FeatureNotSupported, match='column "attempts" of view "workflow_runs"'):
            c17.execute(f"UPDATE {RUNS} SET attempts = 3")
        with psycopg.connect(pg_url, autocommit=True) as admin:
            assert admin.execute("SELECT container_image FROM remediation_workflow_catalog WHERE workflow_id = 1"
                                 ).fetchone() == ("img:020",)
            assert admin.execute("SELECT count(*) FROM workflow_executions").fetchone() == (5,)
            assert admin.execute("SELECT count(*) FROM remediation_workflow_catalog").fetchone() == (5,)
    finally:
        c16.close()
        c17.close()

    listed = json.loads(cli(story, "shims", "list", *db, "--format", "json").stdout)
    shapes = {e["name"]: e["shape"] for e in listed}
    assert shapes[f"compat_016.{CATALOG}"] == {"hides": ["container_image"]}
    assert shapes[f"compat_017.{CATALOG}"] == {"renames": ["container_image as execution_bundle"]}
    assert shapes[f"compat_016.{RUNS}"] == {"casts": ["attempts::integer as attempts"],
                                             "fills": ["legacy_note with NULL::text"]}
    assert sorted(shapes) == sorted([f"compat_016.{CATALOG}", f"compat_017.{CATALOG}", f"compat_016.{RUNS}",
                                     f"compat_017.{RUNS}", f"compat_018.{RUNS}", f"compat_019.{RUNS}"])

    contracts = ("--consumer", "consumer_016.toml", "--consumer", "consumer_017.toml")
    verified = cli(story, "verify", *db, *contracts, "--format", "json")
    assert verified.returncode == 0, verified.stderr + verified.stdout
    paths = {c["consumer"]: c["search_path"] for c in json.loads(verified.stdout)["consumers"]}
    assert paths == {"workflow-api (016 code)": "compat_016,public", "workflow-api (017 code)": "compat_017,public"}

    # end the 016 window: its expiry moved into the past in the registry, then drop --expired
    with connect(pg_url) as d:
        d.execute(f"UPDATE {d.qualify(SHIMS)} SET expires_at = now() - interval '1 hour' "
                  "WHERE compat_schema = 'compat_016'")
    dropped = cli(story, "shims", "drop", "--expired", *db, "--format", "json")
    assert dropped.returncode == 0, dropped.stderr
    assert json.loads(dropped.stdout)["schemas_dropped"] == ["compat_016"]
    after = cli(story, "verify", *db, *contracts, "--format", "json")
    assert after.returncode == 1
    by_name = {c["consumer"]: c for c in json.loads(after.stdout)["consumers"]}
    assert by_name["workflow-api (017 code)"]["search_path"] == "compat_017,public"
    assert not by_name["workflow-api (016 code)"]["ok"]
    with psycopg.connect(pg_url, autocommit=True) as admin:
        assert admin.execute("SELECT 1 FROM pg_namespace WHERE nspname = 'compat_016'").fetchone() is None
        assert admin.execute("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'compat_01%'").fetchone() == (3,)
    # the registry keeps everything
    listed = json.loads(cli(story, "shims", "list", *db, "--format", "json").stdout)
    assert sorted(e["status"] for e in listed) == ["active"] * 4 + ["dropped"] * 2


def test_shims_list_text_says_what_each_view_presents(story: Path, pg_url: str):
    assert cli(story, "up", "--database", pg_url).returncode == 0
    text = cli(story, "shims", "list", "--database", pg_url).stdout
    lines = {line.split()[0]: line for line in text.splitlines()[1:]}
    assert "PRESENTS" in text.splitlines()[0]
    assert "renames container_image as execution_bundle" in lines[f"compat_017.{CATALOG}"]
    assert "hides container_image" in lines[f"compat_016.{CATALOG}"]
    assert "casts attempts::integer as attempts; fills legacy_note with NULL::text" in lines[f"compat_016.{RUNS}"]


def test_connect_and_route_for_a_pinned_version(story: Path, pg_url: str, make_role):
    assert cli(story, "up", "--database", pg_url).returncode == 0
    shown = json.loads(cli(story, "shims", "connect", "--as-of", "016", "--database", pg_url, "--format", "json").stdout)
    assert shown["search_path"] == "compat_016,public"
    assert sorted(shown["shims"]) == [f"compat_016.{CATALOG}", f"compat_016.{RUNS}"]
    role = make_role()
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(f'GRANT SELECT, INSERT, UPDATE ON {CATALOG}, workflow_executions TO "{role}"')
    # the route grants what the role needs on every view of the version's compat schema
    routed = cli(story, "shims", "route", role, "--as-of", "016", "--database", pg_url)
    assert routed.returncode == 0, routed.stderr
    from helpers import url_as

    with psycopg.connect(url_as(pg_url, role), autocommit=True) as c16:
        assert [d.name for d in c16.execute(f"SELECT * FROM {RUNS}").description] == SEEN["016"][RUNS]
        c16.execute(f"INSERT INTO {CATALOG} (workflow_name) VALUES ('routed')")


def test_a_window_is_extended_and_dropped_as_a_whole(story: Path, pg_url: str):
    db = ("--database", pg_url)
    assert cli(story, "up", *db).returncode == 0
    before = {e["name"]: e["expires_at"] for e in json.loads(cli(story, "shims", "list", *db, "--format", "json").stdout)}
    extended = cli(story, "shims", "extend", "compat_016", "--by", "7d", "--reason", "billing still on 016", *db)
    assert extended.returncode == 0, extended.stderr
    after = {e["name"]: e for e in json.loads(cli(story, "shims", "list", *db, "--format", "json").stdout)}
    for name in (f"compat_016.{CATALOG}", f"compat_016.{RUNS}"):
        assert after[name]["expires_at"] > before[name] and after[name]["extensions"][0]["reason"] == "billing still on 016"
    assert after[f"compat_017.{CATALOG}"]["expires_at"] == before[f"compat_017.{CATALOG}"]
    dropped = cli(story, "shims", "drop", "compat_016", "--reason", "016 retired", *db, "--format", "json")
    assert dropped.returncode == 0, dropped.stderr
    assert json.loads(dropped.stdout)["schemas_dropped"] == ["compat_016"]
    statuses = {e["name"]: e["status"] for e in json.loads(cli(story, "shims", "list", *db, "--format", "json").stdout)}
    assert statuses[f"compat_016.{CATALOG}"] == statuses[f"compat_016.{RUNS}"] == "dropped"
    assert statuses[f"compat_017.{CATALOG}"] == "active"
