"""`migrate adopt yoyo|goose|golang-migrate|alembic` against real PostgreSQL."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import error_lines, columns, migrate_json_logs as migrate, sql, write_migrations

from runner.adopt import AdoptRefused, ForeignHistory, plan_adoption  # noqa: E402
from runner.sources import load_migrations  # noqa: E402

GOOSE_TABLE = ("CREATE TABLE goose_db_version (id serial PRIMARY KEY, version_id bigint NOT NULL, "
               "is_applied boolean NOT NULL, tstamp timestamp DEFAULT now())")


def goose_rows(url: str, rows: list[tuple[int, bool]]) -> None:
    sql(url, GOOSE_TABLE, "INSERT INTO goose_db_version (version_id, is_applied) VALUES (0, true)",
        *[f"INSERT INTO goose_db_version (version_id, is_applied) VALUES ({v}, {str(a).lower()})" for v, a in rows])


def build_with_sql(url: str, folder: Path, upto: int) -> None:
    """Apply the Up statements of files up to version ``upto`` directly, as another tool would."""
    for m in load_migrations(folder):
        if m.version is not None and m.version <= upto:
            sql(url, *[s.sql for s in m.up])


def args(url: str, folder: Path) -> list[str]:
    return ["--database", url, "--migrations", str(folder)]


def test_adopt_goose_database_then_up_applies_only_018(pg_url, example_migrations):
    build_with_sql(pg_url, example_migrations, 17)
    goose_rows(pg_url, [(1, True), (17, True)])
    sql(pg_url, "INSERT INTO remediation_workflow_catalog (workflow_id, workflow_name, execution_bundle) "
                "VALUES ('w1', 'restart', 'quay.io/x:1')")

    never = migrate("doctor", *args(pg_url, example_migrations))
    assert never.returncode == 1 and "never touched this database" in never.stdout
    assert "migrate adopt goose" in never.stdout

    dry = migrate("adopt", "goose", *args(pg_url, example_migrations))
    assert dry.returncode == 0, dry
    assert "dry run, nothing recorded" in dry.stdout
    assert "goose version 1" in dry.stdout and "-> 001_create_remediation_workflow_catalog" in dry.stdout
    assert "goose version 17" in dry.stdout and "-> 017_add_execution_bundle" in dry.stdout
    assert "stays pending (`migrate up` applies it): 018_rename_execution_bundle_to_container_image" in dry.stdout
    assert sql(pg_url, "SELECT to_regclass('public._migrate_history') IS NULL")[0][0]  # dry run wrote nothing

    done = migrate("adopt", "goose", "--yes", "--format", "json", *args(pg_url, example_migrations))
    assert done.returncode == 0, done
    data = done.json()
    assert data["applied"] is True
    assert [e["migration_id"] for e in data["entries"]] == ["001_create_remediation_workflow_catalog",
                                                            "017_add_execution_bundle"]
    files = {m.id: m.checksum for m in load_migrations(example_migrations)}
    recorded = dict(sql(pg_url, "SELECT migration_id, checksum FROM _migrate_history"))
    assert recorded == {k: files[k] for k in ("001_create_remediation_workflow_catalog", "017_add_execution_bundle")}
    log = sql(pg_url, "SELECT operation, detail FROM _migrate_log ORDER BY id")
    assert all(op == "mark" and "adopted from goose" in detail for op, detail in log)

    status = migrate("status", "--format", "json", *args(pg_url, example_migrations))
    assert status.json()["pending"] == ["018_rename_execution_bundle_to_container_image"]
    applied = migrate("up", "--format", "json", *args(pg_url, example_migrations))
    assert applied.returncode == 0, applied
    assert applied.json()["applied"] == ["018_rename_execution_bundle_to_container_image"]
    assert "container_image" in columns(pg_url, "remediation_workflow_catalog")
    assert sql(pg_url, "SELECT container_image FROM remediation_workflow_catalog")[0][0] == "quay.io/x:1"

    healthy = migrate("doctor", *args(pg_url, example_migrations))
    assert healthy.returncode == 0, healthy
    again = migrate("adopt", "goose", *args(pg_url, example_migrations))
    assert again.returncode == 0 and "already recorded by the runner: 017_add_execution_bundle" in again.stdout


def goose_folder(tmp_path: Path, versions: range) -> Path:
    files = {f"{v:05d}_step_{v}.sql": f"-- +goose Up\nCREATE TABLE step_{v} (id int);\n-- +goose Down\n"
                                      f"DROP TABLE step_{v};\n" for v in versions}
    return write_migrations(tmp_path / "goose", files)


def test_goose_table_with_gaps_is_refused_with_an_explanation(pg_url, tmp_path):
    folder = goose_folder(tmp_path, range(1, 7))
    build_with_sql(pg_url, folder, 5)
    sql(pg_url, "DROP TABLE step_4")
    goose_rows(pg_url, [(1, True), (2, True), (3, True), (4, True), (4, False), (5, True)])
    result = migrate("adopt", "goose", "--yes", *args(pg_url, folder))
    assert result.returncode == 1, result
    line = result.stderr.strip().splitlines()[-1]
    assert "goose_db_version has a gap: 00004_step_4 is not applied but version 5 is" in line
    assert "--allow-gaps" in line
    assert sql(pg_url, "SELECT to_regclass('public._migrate_history') IS NULL")[0][0]

    allowed = migrate("adopt", "goose", "--yes", "--allow-gaps", *args(pg_url, folder))
    assert allowed.returncode == 0, allowed
    assert "gap, left pending (--allow-gaps): 00004_step_4" in allowed.stdout
    status = migrate("status", "--format", "json", *args(pg_url, folder)).json()
    assert status["pending"] == ["00004_step_4", "00006_step_6"]
    assert migrate("up", *args(pg_url, folder)).returncode == 0
    assert sql(pg_url, "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'step_%'")[0][0] == 6


def test_goose_history_naming_a_version_with_no_file_is_refused(pg_url, tmp_path):
    folder = goose_folder(tmp_path, range(1, 4))
    build_with_sql(pg_url, folder, 3)
    goose_rows(pg_url, [(1, True), (2, True), (3, True), (20240101120000, True)])
    result = migrate("adopt", "goose", *args(pg_url, folder))
    assert result.returncode == 1, result
    assert "records version(s) 20240101120000 as applied, but no migration file has that version" in result.stderr


def test_goose_rolled_back_newest_version_stays_pending(pg_url, tmp_path):
    folder = goose_folder(tmp_path, range(1, 4))
    build_with_sql(pg_url, folder, 2)
    goose_rows(pg_url, [(1, True), (2, True), (3, True), (3, False)])
    result = migrate("adopt", "goose", "--yes", "--format", "json", *args(pg_url, folder))
    assert result.returncode == 0, result
    assert result.json()["stays_pending"] == ["00003_step_3"]


def test_missing_or_foreign_tables_are_usage_errors(pg_url, example_migrations):
    missing = migrate("adopt", "goose", *args(pg_url, example_migrations))
    assert missing.returncode == 2 and "no table goose_db_version in schema public" in missing.stderr
    sql(pg_url, "CREATE TABLE schema_migrations (version varchar PRIMARY KEY)")
    rails = migrate("adopt", "golang-migrate", *args(pg_url, example_migrations))
    assert rails.returncode == 2 and "that is Rails' table" in rails.stderr
    unknown = migrate("adopt", "flyway", *args(pg_url, example_migrations))
    assert unknown.returncode == 2


def test_golang_migrate_dirty_is_refused_then_clean_is_adopted(pg_url, example_migrations):
    build_with_sql(pg_url, example_migrations, 17)
    sql(pg_url, "CREATE TABLE schema_migrations (version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL)",
        "INSERT INTO schema_migrations VALUES (17, true)")
    dirty = migrate("adopt", "golang-migrate", "--yes", *args(pg_url, example_migrations))
    assert dirty.returncode == 1, dirty
    assert "schema_migrations is dirty at version 17" in dirty.stderr
    assert "UPDATE schema_migrations SET dirty = false" in dirty.stderr
    sql(pg_url, "UPDATE schema_migrations SET dirty = false")
    ok = migrate("adopt", "golang-migrate", "--yes", "--format", "json", *args(pg_url, example_migrations))
    assert ok.returncode == 0, ok
    assert [e["migration_id"] for e in ok.json()["entries"]] == ["001_create_remediation_workflow_catalog",
                                                                 "017_add_execution_bundle"]


def test_alembic_revision_matched_by_file_name(pg_url, tmp_path):
    folder = write_migrations(tmp_path / "m", {
        "001_1975ea83b712_create.sql": "CREATE TABLE a (id int);\n",
        "002_ae1027a6acf_add.sql": "ALTER TABLE a ADD COLUMN b int;\n",
        "003_27c6a30d7c24_more.sql": "ALTER TABLE a ADD COLUMN c int;\n",
    })
    build_with_sql(pg_url, folder, 2)
    sql(pg_url, "CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)",
        "INSERT INTO alembic_version VALUES ('ae1027a6acf')")
    result = migrate("adopt", "alembic", "--yes", "--format", "json", *args(pg_url, folder))
    assert result.returncode == 0, result
    assert [e["migration_id"] for e in result.json()["entries"]] == ["001_1975ea83b712_create",
                                                                     "002_ae1027a6acf_add"]
    sql(pg_url, "UPDATE alembic_version SET version_num = 'ffffffffffff'")
    sql(pg_url, "DELETE FROM _migrate_history")
    refused = migrate("adopt", "alembic", *args(pg_url, folder))
    assert refused.returncode == 1 and "no migration file name(s) contain that id" in refused.stderr


def test_plan_keeps_what_the_runner_already_recorded(example_migrations):
    files = load_migrations(example_migrations)
    plan = plan_adoption(ForeignHistory("goose", "goose_db_version", versions=[1, 17]), files,
                         recorded=["001_create_remediation_workflow_catalog",
                                   "018_rename_execution_bundle_to_container_image"])
    assert [e.migration_id for e in plan.entries] == ["017_add_execution_bundle"]
    assert plan.already_recorded == ["001_create_remediation_workflow_catalog",
                                     "018_rename_execution_bundle_to_container_image"]
    assert plan.gaps == [] and plan.stays_pending == []
    # Recorded by the runner but skipped by goose: not a gap (nothing would run twice).
    plan = plan_adoption(ForeignHistory("goose", "goose_db_version", versions=[17]), files,
                         recorded=["001_create_remediation_workflow_catalog"])
    assert [e.migration_id for e in plan.entries] == ["017_add_execution_bundle"]
    try:
        plan_adoption(ForeignHistory("goose", "goose_db_version", versions=[17]), files, recorded=[])
    except AdoptRefused as err:
        assert "has a gap: 001_create_remediation_workflow_catalog is not applied but version 17 is" in str(err)
    else:
        raise AssertionError("expected a refusal")


def yoyo_apply(url: str, folder: Path) -> None:
    """yoyo's own CLI (installed beside this interpreter) applies ``folder``."""
    yoyo = Path(sys.executable).parent / "yoyo"
    done = subprocess.run([str(yoyo), "apply", "--batch", "--no-config-file", "--database",
                           url.replace("postgresql://", "postgresql+psycopg://", 1), str(folder)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_yoyo_database_up_refuses_to_rerun_then_adopt_yoyo_and_up_applies_only_018(pg_url, example_migrations,
                                                                                    tmp_path):
    first_two = tmp_path / "yoyo-era"
    first_two.mkdir()
    for m in load_migrations(example_migrations)[:2]:
        shutil.copy(m.path, first_two)
    yoyo_apply(pg_url, first_two)  # 001 and 017, by plain yoyo

    never = migrate("doctor", *args(pg_url, example_migrations))
    assert never.returncode == 1 and "migrate adopt yoyo" in never.stdout
    for command in (("up",), ("up", "--dry-run")):
        refused = migrate(*command, *args(pg_url, example_migrations))
        assert refused.returncode == 1, refused
        assert error_lines(refused.stderr)[-1].endswith("then run `migrate up`") and "Traceback" not in refused.stderr
        assert ("001_create_remediation_workflow_catalog (and 1 more): applied by yoyo's own CLI"
                in refused.stderr), refused.stderr
    assert sql(pg_url, "SELECT to_regclass('public._migrate_history') IS NULL")[0][0]  # nothing written

    dry = migrate("adopt", "yoyo", *args(pg_url, example_migrations))
    assert dry.returncode == 0, dry
    assert "_yoyo_migration (yoyo) -> migrations: dry run" in dry.stdout
    assert "-> 017_add_execution_bundle" in dry.stdout and "yoyo, applied 20" in dry.stdout
    assert "stays pending (`migrate up` applies it): 018_rename_execution_bundle_to_container_image" in dry.stdout

    done = migrate("adopt", "yoyo", "--yes", "--format", "json", *args(pg_url, example_migrations))
    assert done.returncode == 0, done
    assert [e["migration_id"] for e in done.json()["entries"]] == ["001_create_remediation_workflow_catalog",
                                                                   "017_add_execution_bundle"]
    up = migrate("up", "--format", "json", *args(pg_url, example_migrations))
    assert up.returncode == 0, up
    assert up.json()["applied"] == ["018_rename_execution_bundle_to_container_image"]
    assert "container_image" in columns(pg_url, "remediation_workflow_catalog")
    again = migrate("adopt", "yoyo", "--format", "json", *args(pg_url, example_migrations))
    assert again.returncode == 0 and again.json()["entries"] == [] and len(again.json()["already_recorded"]) == 3


def test_yoyo_history_by_id_gaps_and_unknown_ids(example_migrations):
    files = load_migrations(example_migrations)
    ids = [m.id for m in files]
    plan = plan_adoption(ForeignHistory("yoyo", "_yoyo_migration", ids=ids[:1]), files, recorded=[])
    assert [e.migration_id for e in plan.entries] == ids[:1] and plan.stays_pending == ids[1:]
    with pytest.raises(AdoptRefused, match=f"has a gap: {ids[0]} is not applied but {ids[1]} is"):
        plan_adoption(ForeignHistory("yoyo", "_yoyo_migration", ids=[ids[1]]), files, recorded=[])  # yoyo skips freely
    plan = plan_adoption(ForeignHistory("yoyo", "_yoyo_migration", ids=[ids[1]]), files, recorded=[], allow_gaps=True)
    assert plan.gaps == [ids[0]] and [e.migration_id for e in plan.entries] == [ids[1]]
    with pytest.raises(AdoptRefused, match="records 005_gone as applied, but the migrations folder has no file with"):
        plan_adoption(ForeignHistory("yoyo", "_yoyo_migration", ids=["005_gone"]), files, recorded=[])


def test_adopt_yoyo_old_layout_is_a_usage_error(pg_url, example_migrations):
    sql(pg_url, "CREATE TABLE _yoyo_migration (id varchar(255) PRIMARY KEY, ctime timestamp)")
    old = migrate("adopt", "yoyo", *args(pg_url, example_migrations))
    assert old.returncode == 2 and "yoyo's old layout" in old.stderr and "yoyo list" in old.stderr
