"""Secrets: no password from a database URL in stdout, stderr or logs, on any path.

Every `migrate` run of this suite is already checked (harness.run / Spawned:
the suite's password is in every runner URL). This file adds the paths where
a password is most likely to escape: URLs that fail to parse or to connect,
passwords in the query string, in the environment, in the config file's
[environments], every command that prints a URL or a connection setting, both
log formats. Each run fails its own test on a leak; the last test checks that check.
"""

from __future__ import annotations

import pytest

from reliability import harness
from reliability.harness import FIGURES, PASSWORD, SECRET_TOKEN, db_args, run

RAW = SECRET_TOKEN  # a password as users paste it, without URL encoding around it

BAD_URLS = {
    "unreachable port": (f"postgresql://u:{RAW}@127.0.0.1:1/db", 5),
    "port not a number": (f"postgresql://u:{RAW}@127.0.0.1:port/db", 2),
    "broken IPv6 host": (f"postgresql://u:{RAW}@[::1/db", 2),
    "slash in password": (f"postgresql://u:{RAW}/x@127.0.0.1:1/db", {2, 5}),
    "hash in password": (f"postgresql://u:{RAW}#x@127.0.0.1:1/db", {2, 5}),
    "question mark in password": (f"postgresql://u:{RAW}?x@127.0.0.1:1/db", {2, 5}),
    "at sign in password": (f"postgresql://u:{RAW}@x@127.0.0.1:1/db", {2, 5}),
    "unsupported scheme": (f"mysql://u:{RAW}@127.0.0.1/db", 2),
    "no host": (f"postgresql://u:{RAW}@/db", {2, 5}),
    "no scheme": (f"u:{RAW}@127.0.0.1/db", 2),
    "unknown host": (f"postgresql://u:{RAW}@host.invalid/db", 5),
    "bad query parameter": (f"postgresql://u:{RAW}@127.0.0.1:1/db?sslmode=bogus", {2, 5}),
    "password in the query": (f"postgresql://u@127.0.0.1:1/db?password={RAW}&connect_timeout=2", 5),
    "bad query value": (f"postgresql://u@127.0.0.1/db?password={RAW}&connect_timeout=abc", {2, 5}),
}


@pytest.mark.parametrize("case", list(BAD_URLS))
def test_bad_urls_never_print_the_password(folder, case):
    url, codes = BAD_URLS[case]
    harness.write(folder, {"001_t.sql": "CREATE TABLE t (id int);\n"})
    for extra in ([], ["--log-format", "console"], ["--format", "json"]):
        result = run("--database", url, "--migrations", str(folder), *extra, "up")
        harness.assert_one_line_error(result, codes)
    via_env = run("--migrations", str(folder), "status", env={"DATABASE_URL": url})
    harness.assert_one_line_error(via_env, codes)
    FIGURES.add("secrets", bad_urls=1)


def test_wrong_database_name_and_config_environments(target, folder, tmp_path):
    harness.write(folder, {"001_t.sql": "CREATE TABLE t (id int);\n"})
    missing = harness.with_database(target.url, "no_such_database_rel")
    result = run(*db_args(missing, folder, "up"))
    harness.assert_one_line_error(result, 5, "no_such_database_rel")
    config = tmp_path / "migrate.toml"
    config.write_text(f'database = "{target.url}"\n[environments]\nok = "{target.url}"\n'
                      f'down = "postgresql://u:{RAW}@127.0.0.1:1/db"\n', encoding="utf-8")
    for args in (["envs"], ["status", "--env", "ok", "--env", "down"], ["up"], ["doctor"]):
        run("--config", str(config), "--migrations", str(folder), *args)
    FIGURES.add("secrets", config_paths=1)


def test_every_command_on_a_live_database(target, folder, make_role):
    """The commands that print URLs, settings or session details, with the runner's password URL."""
    harness.write(folder, {"001_accounts.sql": "CREATE TABLE accounts (id int PRIMARY KEY, acct_name text);\n",
                           "002_rename.sql": "-- compat: rename accounts.acct_name -> account_name window=7d\n"
                                             "ALTER TABLE accounts RENAME COLUMN acct_name TO account_name;\n"})
    consumer = make_role()
    commands = [
        ["up", "--dry-run"], ["up"], ["status"], ["verify"], ["doctor"], ["lint"],
        ["shims", "list"], ["shims", "audit"], ["shims", "connect", "--as-of", "001"],
        ["shims", "route", consumer, "--as-of", "001"], ["down"], ["up"], ["mark", "001_accounts"],
    ]
    for fmt in ("text", "json"):
        for log_format in ("json", "console"):
            for command in commands:
                run("--database", target.url, "--migrations", str(folder), "--format", fmt,
                    "--log-format", log_format, *command)
    # The password reaches the server (the runner role really has it) and only there.
    assert harness.one(target.admin, "SELECT rolpassword IS NOT NULL FROM pg_authid WHERE rolname = %s",
                       (target.role,))
    FIGURES.add("secrets", live_commands=len(commands) * 4)


def test_connect_prints_no_password(target, folder):
    harness.write(folder, {"001_accounts.sql": "CREATE TABLE accounts (id int PRIMARY KEY, acct_name text);\n",
                           "002_rename.sql": "-- compat: rename accounts.acct_name -> account_name window=7d\n"
                                             "ALTER TABLE accounts RENAME COLUMN acct_name TO account_name;\n"})
    assert run(*db_args(target.url, folder, "up")).returncode == 0
    result = run(*db_args(target.url, folder, "shims", "connect", "--as-of", "001"))
    assert result.returncode == 0, result.describe()
    assert "compat_001" in result.stdout


@pytest.mark.parametrize("leak", [PASSWORD, SECRET_TOKEN, harness.quote(PASSWORD, safe="")],
                         ids=["raw", "token", "url-encoded"])
def test_the_leak_check_catches_each_form_of_the_password(leak):
    """The check every run of this suite goes through (harness.check_no_secret) is not blind."""
    with pytest.raises(AssertionError, match="password leaked"):
        harness.check_no_secret("probe", f"connecting to postgresql://u:{leak}@h/db failed")
    FIGURES.secret_leaks.clear()
    harness.check_no_secret("probe", "connecting to postgresql://u:***@h/db failed")
