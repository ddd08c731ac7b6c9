"""Configuration precedence, URLs, drift (checksums) and one-line errors for bad input."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from helpers import run_migrate, url_as
from helpers import history, tables, write_migrations
from runner.config import load_settings
from runner.errors import ConfigError
from runner.urls import parse_url, redact


def test_precedence_flag_env_file_default(tmp_path: Path) -> None:
    (tmp_path / "migrate.toml").write_text('database = "sqlite:///from-file.db"\nmigrations = "db/migrations"\n'
                                           'lock_timeout = "2s"\n')
    settings = load_settings({}, env={}, cwd=tmp_path)
    assert settings.database == "sqlite:///from-file.db"
    assert settings.migrations == tmp_path / "db" / "migrations"
    assert settings.lock_timeout == timedelta(seconds=2)
    env = {"DATABASE_URL": "sqlite:///from-env.db", "MIGRATE_LOCK_TIMEOUT": "750ms"}
    settings = load_settings({}, env=env, cwd=tmp_path)
    assert settings.database == "sqlite:///from-env.db" and settings.lock_timeout == timedelta(milliseconds=750)
    settings = load_settings({"database": "sqlite:///from-flag.db"}, env=env, cwd=tmp_path)
    assert settings.database == "sqlite:///from-flag.db"
    assert load_settings({}, env={}, cwd=tmp_path / "nowhere").database == "sqlite:///migrate.db"


def test_pyproject_tool_table(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n[tool.migrate]\nlock_wait = "30s"\n'
                                             '[tool.migrate.compat]\ndefault_window = "3d"\n')
    settings = load_settings({}, env={}, cwd=tmp_path)
    assert settings.lock_wait == timedelta(seconds=30) and settings.compat.default_window == "3d"


@pytest.mark.parametrize("content, fragment", [
    ('databse = "sqlite:///x.db"\n', "unknown key 'databse'"),
    ('[compat]\nwindow = "3d"\n', "[compat]: unknown key 'window'"),
    ('lock_timeout = "soon"\n', "lock_timeout"),
    ('[[renames]]\nmigration = "018"\ntable = "t"\nold = "a"\n', "'new' is required"),
    ('database = [\n', "invalid TOML"),
])
def test_config_errors_name_the_key(tmp_path: Path, content: str, fragment: str) -> None:
    (tmp_path / "migrate.toml").write_text(content)
    with pytest.raises(ConfigError, match=None) as err:
        load_settings({}, env={}, cwd=tmp_path)
    assert fragment in str(err.value) and "migrate.toml" in str(err.value)
    result = run_migrate("status", cwd=tmp_path)
    assert result.returncode == 2 and fragment in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_urls_users_paste() -> None:
    for url in ("postgresql://u:pw@h/db", "postgres://u:pw@h/db", "postgresql+psycopg://u:pw@h:5433/db"):
        parsed = parse_url(url)
        assert parsed.dialect == "postgresql" and parsed.connect_args["user"] == "u"
        assert parsed.connect_args["password"] == "pw" and parsed.connect_args["host"] == "h"
        assert "pw" not in parsed.redacted
    assert parse_url("sqlite:///rel/x.db").sqlite_path == "rel/x.db"
    assert parse_url("sqlite:////abs/x.db").sqlite_path == "/abs/x.db"
    for bad in ("sqlite://", "mysql://root@h/db", "postgresql://h:port/db", "nonsense"):
        with pytest.raises(ConfigError):
            parse_url(bad)
    assert redact("postgresql://user:s3cr3t@host/db?password=other") == "postgresql://user:***@host/db?password=***"


def test_connect_arguments_from_the_url() -> None:
    args = parse_url("postgres://app%40corp:p%2Fw%3F@db.example:6543/cat%20alog?sslmode=require&connect_timeout=3"
                     ).connect_args
    assert args == {"dbname": "cat alog", "user": "app@corp", "password": "p/w?", "host": "db.example", "port": 6543,
                    "sslmode": "require", "connect_timeout": "3", "application_name": "migrate"}
    # A socket directory given as a query argument, no host in the URL.
    args = parse_url("postgresql:///catalog?host=/var/run/postgresql").connect_args
    assert args["host"] == "/var/run/postgresql" and args["dbname"] == "catalog" and "user" not in args


def test_url_schema_argument_holds_for_every_migration(pg_url: str, pg_conn, tmp_path: Path) -> None:
    """yoyo's ``?schema=`` URL argument sets the search_path; the session reset between
    migrations must not drop it (the second migration would land in public)."""
    pg_conn.execute('CREATE SCHEMA "app space"')
    folder = write_migrations(tmp_path / "m", {f"00{i}_t{i}.sql": f"CREATE TABLE t{i} (id int);" for i in (1, 2, 3)})
    url = pg_url + "?schema=%22app%20space%22"
    result = run_migrate("up", "--database", url, "--migrations", str(folder))
    assert result.returncode == 0, result.stderr
    assert tables(pg_url, "app space") >= {"t1", "t2", "t3", "_migrate_history"}
    assert not tables(pg_url) & {"t1", "t2", "t3"}
    assert run_migrate("verify", "--database", url, "--migrations", str(folder)).returncode == 0


def test_bad_input_one_line_errors_and_no_password(pg_url: str, tmp_path: Path, make_role) -> None:
    secret = "Very$ecret-Pw"
    role = make_role(password=secret)
    folder = write_migrations(tmp_path / "m", {"001_a.sql": "CREATE TABLE a (id int);",
                                               "002_bad.sql": "CREATE TABLE b (id int);\nCREAT TABLE c (id int);"})
    cases = [
        (["up", "--database", f"postgresql://{role}:{secret}@127.0.0.1:1/nodb"], 5, "cannot connect"),
        (["up", "--database", url_as(pg_url, "no_such_role_xyz", secret)], 5, "no_such_role_xyz"),
        (["up", "--database", f"postgresql://{role}:{secret}@127.0.0.1:notaport/db"], 2, "malformed database URL"),
        (["up", "--database", url_as(pg_url, role, secret)], 4, "002_bad.sql:2"),
        (["frobnicate", "--database", url_as(pg_url, role, secret)], 2, "No such command"),
        (["up", "--lock-timeout", "whenever", "--database", url_as(pg_url, role, secret)], 2, "--lock-timeout"),
    ]
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'GRANT CREATE ON SCHEMA public TO "{role}"')
    for args, code, fragment in cases:
        result = run_migrate(*args, "--migrations", str(folder), "--log-format", "json")
        assert result.returncode == code, (args, result.stderr)
        # --log-format json: every line is an event, the error the last one (issue 13)
        events = [json.loads(line) for line in result.stderr.splitlines()]
        errors = [e["message"] for e in events if e["event"] == "error"]
        assert len(errors) == 1 and fragment in errors[0] and events[-1]["event"] == "error", result.stderr
        assert "Traceback" not in result.stderr
        assert secret not in result.stdout + result.stderr
    # the failed migration left nothing behind; the good one before it is recorded
    assert history(pg_url) == ["001_a"] and "b" not in tables(pg_url)


def test_drift_modified_and_missing(pg_url: str, tmp_path: Path) -> None:
    folder = write_migrations(tmp_path / "m", {"001_a.sql": "CREATE TABLE a (id int);",
                                               "002_b.sql": "CREATE TABLE b (id int);"})
    args = ("--database", pg_url, "--migrations", str(folder))
    assert run_migrate("up", *args).returncode == 0
    (folder / "001_a.sql").write_text("CREATE TABLE a (id bigint);")
    write_migrations(folder, {"003_c.sql": "CREATE TABLE c (id int);"})
    status = json.loads(run_migrate("status", "--format", "json", *args).stdout)
    assert status["modified"] == ["001_a"] and status["pending"] == ["003_c"]
    verify = run_migrate("verify", *args)
    assert verify.returncode == 1 and "001_a" in verify.stderr and "rehash" in verify.stderr
    refused = run_migrate("up", *args)
    assert refused.returncode == 1 and "migrate rehash 001_a" in refused.stderr
    assert "c" not in tables(pg_url)
    assert run_migrate("rehash", "001_a", *args).returncode == 0
    assert run_migrate("up", *args).returncode == 0 and "c" in tables(pg_url)
    (folder / "002_b.sql").unlink()
    status = json.loads(run_migrate("status", "--format", "json", *args).stdout)
    assert status["missing"] == ["002_b"]
    assert run_migrate("verify", *args).returncode == 1
    assert run_migrate("unmark", "002_b", *args).returncode == 0
    assert run_migrate("verify", *args).returncode == 0
