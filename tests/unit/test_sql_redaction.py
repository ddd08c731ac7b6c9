"""No password survives redaction (runner.secrets; issue 10, items 18 and 19): hypothesis
properties over URLs, DSNs and SQL password literals embedded in arbitrary text."""

from __future__ import annotations

from urllib.parse import quote

from hypothesis import assume, given, settings
from hypothesis import strategies as st

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
