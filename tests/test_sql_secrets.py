"""No password is printed or logged (issue 10, items 18 and 19): URLs and DSNs anywhere in a text,
and password literals of SQL statements, through every output of the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from conftest import run_migrate
from helpers import write_migrations

# Any printable text (and a few blanks inside quotes): what a vault or a person may choose.
_PASSWORD_CHARS = st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp"))
PASSWORDS = st.text(_PASSWORD_CHARS, min_size=4, max_size=24)
SPACED_PASSWORDS = st.text(st.one_of(_PASSWORD_CHARS, st.sampled_from(" \t")), min_size=4, max_size=24)
AROUND = st.text(max_size=40)  # arbitrary text before and after (messages, logs, JSON)


def _never_shown(password: str, before: str, dsn: str, after: str, placeholder: str) -> None:
    from runner.secrets import redact_text

    skeleton = f"{before} {placeholder} {after}"
    assume(password not in skeleton and password not in "***" and placeholder not in before + after)
    text = f"{before} {dsn} {after}"
    assert password not in redact_text(text), text


@settings(max_examples=400, deadline=None)
@given(password=PASSWORDS, before=AROUND, after=AROUND, encoded=st.booleans(),
       scheme=st.sampled_from(["postgresql://", "postgres://", "postgresql//", "postgresql;//", "postgresql:/",
                               "postgresql:", "", "'postgresql://", "url=postgresql://", '{"database": "postgresql://']))
def test_url_passwords_never_survive(password: str, before: str, after: str, encoded: bool, scheme: str) -> None:
    shown = quote(password, safe="") if encoded else password
    assume(not encoded or "%" not in password)
    _never_shown(password, before, f"{scheme}app_user:{shown}@db.internal:5432/prod?sslmode=require", after,
                 f"{scheme}app_user:PLACEHOLDER@db.internal:5432/prod?sslmode=require")
    _never_shown(shown, before, f"{scheme}app_user:{shown}@db.internal:5432/prod", after,
                 f"{scheme}app_user:PLACEHOLDER@db.internal:5432/prod")


@settings(max_examples=300, deadline=None)
@given(password=PASSWORDS, before=AROUND, after=AROUND, key=st.sampled_from(["password", "sslpassword", "PASSWORD"]))
def test_url_query_passwords_never_survive(password: str, before: str, after: str, key: str) -> None:
    shown = quote(password, safe="")
    _never_shown(shown, before, f"postgresql://app@db/prod?sslmode=require&{key}={shown}&application_name=x", after,
                 f"postgresql://app@db/prod?sslmode=require&{key}=PLACEHOLDER&application_name=x")


def _libpq_value(password: str, style: str) -> str:
    """``password`` written as libpq reads a conninfo value."""
    if style == "quoted":
        return "'" + password.replace("\\", "\\\\").replace("'", "\\'") + "'"
    # unquoted: blanks, quotes and backslashes escaped with a backslash
    return "".join("\\" + c if c.isspace() or c in "'\\" else c for c in password)


@settings(max_examples=400, deadline=None)
@given(password=SPACED_PASSWORDS, before=AROUND, after=AROUND, style=st.sampled_from(["quoted", "escaped"]),
       key=st.sampled_from(["password", "sslpassword", "PGPASSWORD", "Password"]),
       equals=st.sampled_from(["=", " = ", " =", "= "]))
def test_dsn_passwords_never_survive(password: str, before: str, after: str, style: str, key: str, equals: str) -> None:
    value = _libpq_value(password, style)
    dsn = f"host=db.internal port=5432 {key}{equals}{value} user=app dbname=prod"
    placeholder = f"host=db.internal port=5432 {key}{equals}PLACEHOLDER user=app dbname=prod"
    for part in password.split():  # no piece of it either (the old redaction stopped at the first blank)
        if len(part) >= 4:
            _never_shown(part, before, dsn, after, placeholder)
    _never_shown(password, before, dsn, after, placeholder)


def _sql_literal(password: str, style: str) -> str:
    if style == "standard":
        return "'" + password.replace("'", "''") + "'"
    if style == "escape":
        return "E'" + password.replace("\\", "\\\\").replace("'", "\\'") + "'"
    assume("$pw$" not in password and not password.endswith("$pw"))
    return f"$pw${password}$pw$"


@settings(max_examples=400, deadline=None)
@given(password=SPACED_PASSWORDS, after=AROUND, style=st.sampled_from(["standard", "escape", "dollar"]),
       statement=st.sampled_from(["CREATE ROLE app LOGIN PASSWORD {}", "ALTER USER app WITH ENCRYPTED PASSWORD {}",
                                  "create user app password {} valid until 'infinity'",
                                  "CREATE USER MAPPING FOR app SERVER remote OPTIONS (user 'app', password {})",
                                  "ALTER USER MAPPING FOR app SERVER remote OPTIONS (SET password {})"]),
       cut=st.integers(min_value=0, max_value=200))
def test_sql_password_literals_never_survive(password: str, after: str, style: str, statement: str, cut: int) -> None:
    from runner.secrets import mask_sql, redact_text

    sql = statement.format(_sql_literal(password, style))
    assume(password not in statement and password not in after and password not in "'***'")
    for shown in (sql, sql[:len(sql) - cut] if cut < len(sql) else sql):  # also a statement cut short in a message
        message = f"migration failed in statement `{shown}`: {after}"
        assert password not in mask_sql(message) and password not in redact_text(message)


def test_redaction_keeps_what_is_not_secret() -> None:
    from runner.secrets import redact_text, redact_url

    assert redact_url("postgresql://app@db:5432/prod?sslmode=require") == "postgresql://app@db:5432/prod?sslmode=require"
    assert redact_url("postgresql://app:s3@db/prod?sslmode=require") == "postgresql://app:***@db/prod?sslmode=require"
    text = "applied by app (deploy@ci-runner pid 42) at 2026-12-05T05:00:00+00:00; see admin@example.com"
    assert redact_text(text) == text
    assert redact_text("CREATE TABLE passwords (id int)") == "CREATE TABLE passwords (id int)"


# ----------------------------------------------------------------------------- through the CLI

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
