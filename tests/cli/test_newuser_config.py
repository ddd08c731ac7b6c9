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
