"""Wrong target, silent success (issue 10, items 10, 14 and two points of 21): refuse, or say what is wrong.

Each case is a database or folder that today's runner accepts and reports as fine while it is not:
another tool's history (everything re-applied), a post-apply hook known to be pending (verify and
doctor say healthy), a snapshot finding naming the wrong migration, a SQLite path that does not
exist (created empty by a read-only command).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from reliability import harness
from reliability.issue10 import M017, M018, all_rows, cli, examples, findings, history, ok, safe

# ----------------------------------------------------------------------------- item 10
SEED_FILES = {
    "001_seed.sql": "CREATE TABLE IF NOT EXISTS seed (name text NOT NULL);\nINSERT INTO seed VALUES ('first');\n",
    "002_more.sql": "INSERT INTO seed VALUES ('second');\n",
    "003_new.sql": "INSERT INTO seed VALUES ('third');\n",
}
# What each tool leaves behind once it applied 001 and 002 (003 is new).
TOOLS = {
    "goose": ("goose_db_version", "migrate adopt goose", """
        CREATE TABLE goose_db_version (id serial PRIMARY KEY, version_id bigint NOT NULL, is_applied boolean NOT NULL,
                                       tstamp timestamp DEFAULT now());
        INSERT INTO goose_db_version (version_id, is_applied) VALUES (0, true), (1, true), (2, true);"""),
    "golang-migrate": ("schema_migrations", "migrate adopt golang-migrate", """
        CREATE TABLE schema_migrations (version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL);
        INSERT INTO schema_migrations VALUES (2, false);"""),
    "alembic": ("alembic_version", "migrate adopt alembic", """
        CREATE TABLE alembic_version (version_num varchar(32) NOT NULL PRIMARY KEY);
        INSERT INTO alembic_version VALUES ('2');"""),
    "flyway": ("flyway_schema_history", "migrate mark", """
        CREATE TABLE flyway_schema_history (installed_rank int PRIMARY KEY, version varchar(50),
            description varchar(200) NOT NULL, type varchar(20) NOT NULL, script varchar(1000) NOT NULL,
            checksum int, installed_by varchar(100) NOT NULL, installed_on timestamp NOT NULL DEFAULT now(),
            execution_time int NOT NULL, success boolean NOT NULL);
        INSERT INTO flyway_schema_history VALUES
            (1, '1', 'seed', 'SQL', 'V1__seed.sql', 1, 'postgres', now(), 3, true),
            (2, '2', 'more', 'SQL', 'V2__more.sql', 2, 'postgres', now(), 2, true);"""),
}


def _migrated_by(url: str, setup: str) -> None:
    with safe(url) as conn:
        conn.execute("CREATE TABLE public.seed (name text NOT NULL); INSERT INTO public.seed VALUES ('first'), ('second')")
        conn.execute("SET search_path = public, pg_catalog")
        conn.execute(setup)


def _seed(url: str) -> dict[str, int]:
    return dict(all_rows(url, "SELECT name, count(*)::int FROM public.seed GROUP BY name"))


@pytest.mark.parametrize("tool", list(TOOLS))
def test_up_refuses_a_database_another_tool_migrated(pg_url, tmp_path, tool):
    """Issue 10 item 10: a database with another tool's history and no runner history: `up` exits 1 naming
    the tool's table and the way out, and applies nothing (no seed row twice)."""
    table, way_out, setup = TOOLS[tool]
    folder = harness.write(tmp_path / "migrations", SEED_FILES)
    _migrated_by(pg_url, setup)
    result = cli(pg_url, folder, "up")
    line = harness.assert_one_line_error(result, 1, table)
    assert way_out in line, line
    assert _seed(pg_url) == {"first": 1, "second": 1}
    assert history(pg_url) == []
    dry = cli(pg_url, folder, "up", "--dry-run")
    harness.assert_one_line_error(dry, 1, table)


def test_up_proceeds_after_adopting_goose(pg_url, tmp_path):
    """Issue 10 item 10: after `migrate adopt goose --yes`, `up` applies only what goose did not (exit 0)."""
    table, _, setup = TOOLS["goose"]
    folder = harness.write(tmp_path / "migrations", SEED_FILES)
    _migrated_by(pg_url, setup)
    assert cli(pg_url, folder, "up").returncode == 1  # refused first (see the test above)
    ok(cli(pg_url, folder, "adopt", "goose", "--yes"))
    ok(cli(pg_url, folder, "up"))
    assert _seed(pg_url) == {"first": 1, "second": 1, "third": 1}
    assert history(pg_url) == ["001_seed", "002_more", "003_new"]


# ----------------------------------------------------------------------------- item 14
def test_verify_and_doctor_report_a_pending_post_apply_hook(pg_url, tmp_path):
    """Issue 10 item 14: after a post-apply hook failed (`up` exit 4), `verify` exits 1 naming the hook and
    `doctor` exits 1 with a `post-apply-pending` finding."""
    folder = harness.write(tmp_path / "migrations", {
        "001_t.sql": "CREATE TABLE t (id int);\n",
        "post-apply.sql": "INSERT INTO no_such_table VALUES (1);\n",
    })
    result = cli(pg_url, folder, "up")
    assert result.returncode == 4, result.describe()
    assert history(pg_url) == ["001_t"]  # the migration stays applied; the hook is due
    verify = cli(pg_url, folder, "verify")
    assert verify.returncode == 1, verify.describe()
    assert any("post-apply" in line for line in verify.error_lines), verify.describe()
    doctor = cli(pg_url, folder, "--format", "json", "doctor")
    assert doctor.returncode == 1, doctor.describe()
    assert [f for f in findings(doctor) if f.get("kind") == "post-apply-pending"], doctor.describe()


# ----------------------------------------------------------------------------- item 21
def test_stale_snapshot_finding_names_the_last_applied_migration(pg_url, tmp_path):
    """Issue 10 item 21 (a): with the last applied migration's file gone, doctor must not call an earlier
    migration "the last applied" one.

    What is wrong today: doctor takes "the last applied migration" from the files on disk that are
    recorded (001, 017), so when 018's file disappears it says the snapshot (which is 018's, taken by the
    run that applied 018) is stale because "the last applied migration is 017". The history says 018 is
    the last applied migration, and the snapshot is exactly 018's: nothing is stale. The right report is
    the missing file (018); a stale-snapshot finding, if any, may only name 018 as the last applied.
    """
    folder = examples(tmp_path / "migrations")
    ok(cli(pg_url, folder, "up"))
    for path in folder.glob(M018 + ".*"):
        path.unlink()
    doctor = cli(pg_url, folder, "--format", "json", "doctor")
    assert doctor.returncode == 1, doctor.describe()
    found = findings(doctor)
    assert any(f.get("kind") == "missing-file" and f.get("object") == M018 for f in found), found
    for f in found:
        if f.get("kind") == "stale-snapshot":
            assert f.get("object") == M018, f
            assert not re.search(r"last applied migration is " + re.escape(M017), f.get("detail", "")), f
            assert M017 not in f.get("detail", ""), f


def test_status_on_a_missing_sqlite_file_creates_nothing(tmp_path):
    """Issue 10 item 21 (b): `status` against a SQLite path that does not exist: exit 5 naming the path, and the
    file still does not exist."""
    folder = harness.write(tmp_path / "migrations", {"001_t.sql": "CREATE TABLE t (id int);\n"})
    missing: Path = tmp_path / "nowhere.db"
    result = harness.run("--database", f"sqlite:///{missing}", "--migrations", str(folder), "status")
    harness.assert_one_line_error(result, 5, str(missing))
    assert not missing.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["migrations"]
