"""No password is printed or logged (issue 10, items 18 and 19): URLs and DSNs anywhere in a text,
and password literals of SQL statements, through every output of the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import run_migrate, write_migrations

def _run(url: str, folder: Path, *args: str):
    result = run_migrate("--database", url, "--migrations", str(folder), "--log-format", "json", *args)
    for line in result.stderr.splitlines():
        if line.startswith("{"):
            json.loads(line)  # the JSON log stays valid
    return result


@pytest.mark.parametrize("literal", ["'from-vault'", "E'from-vault'", "$$from-vault$$", "$v$from-vault$v$",
                                     "'from-' \n 'vault'"])
def test_a_failing_role_statement_never_shows_its_password(pg_url: str, tmp_path: Path, make_role, literal: str) -> None:
    role = make_role()  # exists already: CREATE ROLE fails
    folder = write_migrations(tmp_path / "m", {
        "001_t.sql": "CREATE TABLE t (id int);",
        "002_role.sql": f"-- the service's login\nCREATE ROLE {role} LOGIN ENCRYPTED PASSWORD {literal};\n",
    })
    dry = _run(pg_url, folder, "up", "--dry-run")
    dry_json = _run(pg_url, folder, "--format", "json", "up", "--dry-run")
    result = _run(pg_url, folder, "up")
    assert result.returncode == 4 and dry.returncode == 0 and dry_json.returncode == 0, result.stderr
    assert "002_role.sql:2" in result.stderr and "already exists" in result.stderr
    for run in (dry, dry_json, result):
        output = run.stdout + run.stderr
        assert "from-vault" not in output and "vault" not in output, output
    assert "PASSWORD '***'" in dry.stdout


def test_user_mapping_and_alter_role_passwords_are_masked(pg_url: str, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", {
        "001_t.sql": "CREATE TABLE t (id int);",
        "002_map.sql": "CREATE USER MAPPING FOR CURRENT_USER SERVER no_such_server "
                       "OPTIONS (user 'svc', password 'mapping-secret');",
    })
    result = _run(pg_url, folder, "up")
    assert result.returncode == 4 and "no_such_server" in result.stderr
    assert "mapping-secret" not in result.stdout + result.stderr
    write_migrations(folder, {"002_map.sql": "ALTER ROLE no_such_role_x PASSWORD E'alter\\'secret';"})
    result = _run(pg_url, folder, "up")
    assert result.returncode == 4 and "no_such_role_x" in result.stderr
    assert "secret" not in result.stdout + result.stderr


def test_lint_never_shows_a_password(pg_url: str, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", {
        "001_role.sql": "CREATE ROLE svc LOGIN PASSWORD $$lint-secret$$ CONNECTION LIMIT 3;\n"
                        "ALTER ROLE svc PASSWORD 'lint-secret' 'more';\n"})
    result = run_migrate("--migrations", str(folder), "--database", pg_url, "lint")
    assert result.returncode == 2 and "001_role.sql:2" in result.stderr
    assert "lint-secret" not in result.stdout + result.stderr


@pytest.mark.parametrize("url, secret", [
    ("postgresql//app:S3cretA@127.0.0.1/db", "S3cretA"),
    ("postgresql;//app:S3cretB@127.0.0.1/db", "S3cretB"),
    ("host=127.0.0.1 user=app password='sec retC' dbname=x", "retC"),
    ("host=127.0.0.1 password = S3cretD user=app", "S3cretD"),
    ("host=127.0.0.1 password=a\\ S3cretE user=app", "S3cretE"),
])
def test_a_bad_database_setting_never_shows_its_password(tmp_path: Path, url: str, secret: str) -> None:
    folder = write_migrations(tmp_path / "m", {"001_t.sql": "CREATE TABLE t (id int);"})
    for args in (["--database", url, "status"], ["up"]):
        result = run_migrate("--migrations", str(folder), "--log-format", "json", *args, env={"DATABASE_URL": url})
        assert result.returncode == 2, result.stderr
        assert secret not in result.stdout + result.stderr, result.stderr
