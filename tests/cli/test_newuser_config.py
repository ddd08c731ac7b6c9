"""Config files as a pipeline meets them at 2 a.m.: a config file that is not UTF-8, or that is named
by --config / MIGRATE_CONFIG and does not exist, is one line on stderr naming the file and where it
came from, exit 2, nothing touched (found by walking docs/cli.md as a new user)."""

from __future__ import annotations

from pathlib import Path

from helpers import EXAMPLE_MIGRATIONS, run_migrate, write_migrations


def _project(tmp_path: Path) -> Path:
    write_migrations(tmp_path / "migrations",
                     {p.name: p.read_text(encoding="utf-8") for p in EXAMPLE_MIGRATIONS.glob("*.sql")})
    return tmp_path


def test_a_config_file_that_is_not_utf8_is_exit_2_naming_it(tmp_path: Path) -> None:
    project = _project(tmp_path)
    (project / "migrate.toml").write_bytes(b'database = "sqlite:///x.db"\n\xff\xfe\n')
    result = run_migrate("up", cwd=project)
    assert result.returncode == 2, result.describe()
    assert result.error_lines == [f"migrate: error: {project / 'migrate.toml'}: invalid TOML: not UTF-8"
                                  " (byte 0xff at offset 28)"]
    assert not (project / "x.db").exists() and not (project / "migrate.db").exists()


def test_a_fleet_file_that_is_not_utf8_is_exit_2_naming_it(tmp_path: Path) -> None:
    project = _project(tmp_path)
    (project / "fleet.toml").write_bytes(b"\xff")
    result = run_migrate("fleet", "status", "--fleet", "fleet.toml", cwd=project)
    assert result.returncode == 2, result.describe()
    assert result.error_lines == ["migrate: error: fleet.toml: invalid TOML: not UTF-8 (byte 0xff at offset 0)"]


def test_a_missing_config_file_names_the_flag_or_the_variable(tmp_path: Path) -> None:
    project = _project(tmp_path)
    by_flag = run_migrate("--config", "nope.toml", "status", cwd=project)
    by_env = run_migrate("status", cwd=project, env={"MIGRATE_CONFIG": "gone.toml"})
    assert (by_flag.returncode, by_env.returncode) == (2, 2)
    assert by_flag.error_lines == ["migrate: error: --config: config file not found: nope.toml"]
    assert by_env.error_lines == ["migrate: error: MIGRATE_CONFIG (environment): config file not found: gone.toml"]
    assert not (project / "migrate.db").exists()


def test_new_with_a_name_too_long_for_a_file_is_exit_2(tmp_path: Path) -> None:
    project = _project(tmp_path)
    before = sorted(p.name for p in (project / "migrations").iterdir())
    result = run_migrate("new", "a" * 5000, cwd=project)
    assert result.returncode == 2, result.describe()
    assert result.error_lines == ["migrate: error: migration name is too long: the file name would be 5008 bytes"
                                  " (at most 255)"]
    assert sorted(p.name for p in (project / "migrations").iterdir()) == before


def test_new_keeps_a_multiline_name_in_one_comment_line(tmp_path: Path) -> None:
    project = _project(tmp_path)
    result = run_migrate("new", "x\nDROP TABLE users;", cwd=project)
    assert result.returncode == 0, result.describe()
    created = project / "migrations" / "019_x_drop_table_users.sql"
    assert created.read_text(encoding="utf-8") == "-- x DROP TABLE users;\n-- depends:\n\n"


def test_new_into_a_migrations_path_that_is_a_file_names_the_source(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("", encoding="utf-8")
    by_flag = run_migrate("--migrations", "afile", "new", "y", cwd=tmp_path)
    by_env = run_migrate("new", "y", cwd=tmp_path, env={"MIGRATE_MIGRATIONS": "afile/sub"})
    assert (by_flag.returncode, by_env.returncode) == (2, 2)
    assert by_flag.error_lines == [f"migrate: error: --migrations: cannot create the migrations folder"
                                   f" {tmp_path / 'afile'}: a file, not a folder"]
    assert by_env.error_lines == [f"migrate: error: MIGRATE_MIGRATIONS (environment): cannot create the migrations"
                                  f" folder {tmp_path / 'afile' / 'sub'}: Not a directory"]


def test_a_config_key_of_the_wrong_type_is_named_once(tmp_path: Path) -> None:
    project = _project(tmp_path)
    (project / "migrate.toml").write_text("database = 5\n", encoding="utf-8")
    result = run_migrate("status", cwd=project)
    assert result.returncode == 2, result.describe()
    assert result.error_lines == [f"migrate: error: {project / 'migrate.toml'}: database: expected a string, got 5"]


def test_fleet_results_file_that_cannot_be_written_is_exit_2(tmp_path: Path) -> None:
    project = _project(tmp_path)
    (project / "fleet.toml").write_text('[targets.a]\nurl = "sqlite:///a.db"\n', encoding="utf-8")
    missing_dir = project / "no" / "such" / "results.jsonl"
    result = run_migrate("fleet", "up", "--fleet", "fleet.toml", "--results", str(missing_dir), cwd=project)
    assert result.returncode == 2, result.describe()
    assert result.error_lines == [f"migrate: error: --results: cannot write {missing_dir}: No such file or directory"]
    assert not (project / "a.db").exists()


def test_a_sqlite_url_with_parameters_is_refused_not_ignored(tmp_path: Path) -> None:
    """`?mode=ro` was silently dropped and the file written: a URL means what it says or is exit 2."""
    project = _project(tmp_path)
    result = run_migrate("--database", "sqlite:///x.db?mode=ro", "up", cwd=project)
    assert result.returncode == 2, result.describe()
    assert result.error_lines == ["migrate: error: --database: malformed database URL sqlite:///x.db?mode=ro:"
                                  " a SQLite URL takes no parameters (?mode=ro); the runner opens the file read-write"]
    assert not (project / "x.db").exists()


def test_a_sqlite_url_to_a_file_that_is_no_database_names_it(tmp_path: Path) -> None:
    project = _project(tmp_path)
    (project / "notes.db").write_text("not sqlite\n" * 20, encoding="utf-8")
    result = run_migrate("--database", "sqlite:///notes.db", "up", cwd=project)
    assert result.returncode == 2, result.describe()
    assert result.error_lines == ["migrate: error: sqlite:///notes.db: notes.db is not a SQLite database"
                                  " (file is not a database)"]
    assert (project / "notes.db").read_text(encoding="utf-8") == "not sqlite\n" * 20


def test_a_system_schema_for_the_runner_tables_is_a_config_error(tmp_path: Path) -> None:
    """MIGRATE_SCHEMA=pg_catalog was a bare 'database error: permission denied' from the server."""
    project = _project(tmp_path)
    result = run_migrate("up", cwd=project, env={"MIGRATE_SCHEMA": "pg_catalog"})
    assert result.returncode == 2, result.describe()
    assert result.error_lines == ["migrate: error: MIGRATE_SCHEMA (environment): schema pg_catalog: a system schema"
                                  " of PostgreSQL (pg_*, information_schema) cannot hold the runner's tables"]
    assert not (project / "migrate.db").exists()


def test_fleet_targets_options_empty_or_missing_name_their_source(tmp_path: Path) -> None:
    project = _project(tmp_path)
    empty_flag = run_migrate("fleet", "status", "--fleet", "", cwd=project)
    blank_env = run_migrate("fleet", "status", cwd=project, env={"MIGRATE_FLEET": " "})
    empty_sql = run_migrate("fleet", "status", "--targets-sql", "", cwd=project)
    missing_env = run_migrate("fleet", "up", cwd=project, env={"MIGRATE_FLEET": "nope.toml"})
    assert [r.returncode for r in (empty_flag, blank_env, empty_sql, missing_env)] == [2, 2, 2, 2]
    assert empty_flag.error_lines == ["migrate: error: --fleet: empty; give a value or leave the option out"]
    assert blank_env.error_lines == ["migrate: error: MIGRATE_FLEET (environment): blank (an unset CI secret?);"
                                     " give a value or leave the option out"]
    assert empty_sql.error_lines == ["migrate: error: --targets-sql: empty; give a value or leave the option out"]
    assert missing_env.error_lines == ["migrate: error: MIGRATE_FLEET (environment): fleet file not found: nope.toml"]
    assert not (project / "migrate.db").exists()
