"""Wrong target, silent success (issue 10 items 9, 11, 12, 13, 15 and the rest of 21).

Each case is an input today's main accepts and reports as fine (or crashes on with a traceback):
an empty DATABASE_URL, a typo in a [[renames]] entry, a malformed directive in the last pending file,
a wrong --migrations path, an expired or absurd compatibility window, ids that work in one command
and not the next. Every refusal must be exit 2 (or the documented code), one line on stderr naming
the source (flag, environment variable, config file and key, file:line), with nothing applied.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from reliability import harness
from reliability.issue10 import CONTRACT_017, M017, cli, examples, findings, history, ok

CREATE = "CREATE TABLE t (id int, name text);\n"
RENAME = "ALTER TABLE t RENAME COLUMN name TO title;\n"


def sqlite(tmp_path: Path) -> tuple[str, Path]:
    path = tmp_path / "db.sqlite"
    return f"sqlite:///{path}", path


def sqlite_history(path: Path) -> list[str]:
    if not path.exists():
        return []
    with sqlite3.connect(path) as conn:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = '_migrate_history'").fetchone():
            return []
        return [r[0] for r in conn.execute("SELECT migration_id FROM _migrate_history ORDER BY migration_id")]


def log_rows(path: Path, operation: str) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT count(*) FROM _migrate_log WHERE operation = ?", (operation,)).fetchone()[0]


# ----------------------------------------------------------------------------- item 9
@pytest.mark.parametrize("source", ["env", "flag", "config", "env-blank"])
def test_empty_database_url_is_an_error_naming_its_source(tmp_path, source):
    """Item 9: an empty database URL (an unset CI secret) from any source is exit 2 naming that source;
    no local migrate.db is created and nothing is migrated."""
    folder = harness.write(tmp_path / "migrations", {"001_t.sql": CREATE})
    args, env, needle = ["--migrations", str(folder)], {}, ""
    if source == "env":
        env, needle = {"DATABASE_URL": ""}, "DATABASE_URL"
    elif source == "env-blank":
        env, needle = {"DATABASE_URL": "  "}, "DATABASE_URL"
    elif source == "flag":
        args, needle = ["--database", "", *args], "--database"
    else:
        (tmp_path / "migrate.toml").write_text('database = ""\n', encoding="utf-8")
        needle = str(tmp_path / "migrate.toml") + ": database"
    result = harness.run(*args, "up", env=env, cwd=tmp_path)
    line = harness.assert_one_line_error(result, 2, needle)
    assert "database" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["migrations"] + (["migrate.toml"] if source == "config"
                                                                                 else []))


BAD_VALUES = {
    # name: (args before the command, environment, config text, the words the error must name)
    "empty MIGRATE_MIGRATIONS": ([], {"MIGRATE_MIGRATIONS": ""}, "", ["MIGRATE_MIGRATIONS", "migrations"]),
    "blank --migrations": (["--migrations", "   "], {}, "", ["--migrations", "migrations"]),
    "empty MIGRATE_CONFIG": ([], {"MIGRATE_CONFIG": ""}, "", ["MIGRATE_CONFIG", "config"]),
    "empty MIGRATE_LOCK_TIMEOUT": ([], {"MIGRATE_LOCK_TIMEOUT": ""}, "", ["MIGRATE_LOCK_TIMEOUT", "lock_timeout"]),
    "empty MIGRATE_SCHEMA": ([], {"MIGRATE_SCHEMA": ""}, "", ["MIGRATE_SCHEMA", "schema"]),
    "control character in DATABASE_URL": ([], {"DATABASE_URL": "sqlite:///a\x1b.db"}, "", ["DATABASE_URL", "control"]),
    "huge --migrations": (["--migrations", "m" * 10000], {}, "", ["--migrations", "too long"]),
    "tab in config migrations": ([], {}, 'migrations = "a\\tb"\n', ["migrate.toml: migrations", "control"]),
    "empty config schema": ([], {}, 'schema = ""\n', ["migrate.toml: schema"]),
    "malformed DATABASE_URL": ([], {"DATABASE_URL": "postgresql://h:port/db"}, "", ["DATABASE_URL", "malformed"]),
    "malformed environment URL": ([], {}, '[environments]\nprod = "mysql://x/y"\n', ["[environments] prod"]),
    "empty config lock_wait": ([], {}, 'lock_wait = ""\n', ["migrate.toml: lock_wait"]),
    "huge lock_retries": ([], {}, "lock_retries = 99999999999\n", ["migrate.toml: lock_retries"]),
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_bad_setting_values_name_source_and_setting(tmp_path, case):
    """Item 9: empty, blank, huge, control-character and malformed values of every setting, from every
    source: one line naming the source and the setting, exit 2, nothing created."""
    args, env, config, needles = BAD_VALUES[case]
    folder = harness.write(tmp_path / "migrations", {"001_t.sql": CREATE})
    if config:
        (tmp_path / "migrate.toml").write_text(config, encoding="utf-8")
    if "--migrations" not in args and "MIGRATE_MIGRATIONS" not in env and "migrations" not in config:
        args = ["--migrations", str(folder), *args]
    if "DATABASE_URL" not in env:
        args = ["--database", f"sqlite:///{tmp_path / 'db.sqlite'}", *args]
    result = harness.run(*args, "up", env=env, cwd=tmp_path)
    harness.assert_one_line_error(result, 2, *needles)
    assert not (tmp_path / "db.sqlite").exists() and not (tmp_path / "migrate.db").exists()


def test_up_names_the_database_first_and_in_json(target, tmp_path):
    """Item 9: `up` names the database (password redacted) in its first log line and in its JSON output
    (already so on main: kept as a regression test)."""
    folder = harness.write(tmp_path / "migrations", {"001_t.sql": CREATE})
    result = ok(harness.run(*harness.db_args(target.url, folder, "--format", "json", "up")))
    first = json.loads(result.stderr.splitlines()[0])
    assert first["event"] == "migrating" and harness.dbname(target.url) in first["database"]
    assert harness.SECRET_TOKEN not in first["database"] and "***" in first["database"]
    assert result.json()["database"] == first["database"]


# ----------------------------------------------------------------------------- item 11
def test_a_rename_entry_naming_no_migration_is_refused(tmp_path):
    """Item 11: `[[renames]] migration = "002_renme"` (a typo): `up` and `up --dry-run` exit 2 naming the file
    and the entry, before anything is applied (the rename must not ship without its shim)."""
    url, path = sqlite(tmp_path)
    folder = harness.write(tmp_path / "migrations", {"001_t.sql": CREATE, "002_rename.sql": RENAME})
    config = tmp_path / "migrate.toml"
    config.write_text('[[renames]]\nmigration = "002_renme"\ntable = "t"\nold = "name"\nnew = "title"\n',
                      encoding="utf-8")
    for extra in (["--dry-run"], []):
        result = harness.run("--config", str(config), *harness.db_args(url, folder, "up", *extra))
        harness.assert_one_line_error(result, 2, str(config), "[[renames]] #1", "002_renme")
    assert sqlite_history(path) == []


# ----------------------------------------------------------------------------- item 12
@pytest.mark.parametrize("directive, needle", [
    ("-- compat: rename t.name => title\n", "003_rename.sql:1"),
    ("-- compat: rename t.name -> title window=soon\n", "003_rename.sql:1"),
    ("-- compta: rename t.name -> title\n", "003_rename.sql:1"),  # a misspelt directive is no comment
])
def test_a_bad_directive_in_a_later_file_stops_up_before_anything_runs(pg_url, tmp_path, directive, needle):
    """Item 12: a malformed `-- compat:` directive in the last pending file: `up --dry-run` and `up` exit 2
    naming file:line, and 001/002 are not committed first."""
    folder = harness.write(tmp_path / "migrations", {
        "001_t.sql": CREATE, "002_more.sql": "CREATE TABLE u (id int);\n", "003_rename.sql": directive + RENAME})
    dry = cli(pg_url, folder, "up", "--dry-run")
    harness.assert_one_line_error(dry, 2, needle)
    result = cli(pg_url, folder, "up")
    harness.assert_one_line_error(result, 2, needle)
    assert history(pg_url) == []


# ----------------------------------------------------------------------------- item 13
@pytest.mark.parametrize("command", [["status"], ["up"], ["up", "--dry-run"], ["verify"], ["doctor"], ["lint"]])
@pytest.mark.parametrize("source", ["flag", "env", "config"])
def test_a_missing_migrations_folder_is_refused_naming_its_source(tmp_path, command, source):
    """Item 13: a wrong migrations path is exit 2 naming the path and where it came from, for every command
    that reads the folder (not "at head", exit 0)."""
    url, path = sqlite(tmp_path)
    wrong = tmp_path / "migratoins"
    args, env, needle = ["--database", url], {}, ""
    if source == "flag":
        args, needle = [*args, "--migrations", str(wrong)], "--migrations"
    elif source == "env":
        env, needle = {"MIGRATE_MIGRATIONS": str(wrong)}, "MIGRATE_MIGRATIONS"
    else:
        (tmp_path / "migrate.toml").write_text('migrations = "migratoins"\n', encoding="utf-8")
        needle = "migrate.toml: migrations"
    if command == ["status"] or command == ["verify"] or command == ["doctor"]:
        ok(harness.run("--database", url, "--migrations", str(harness.write(tmp_path / "real", {"001_t.sql": CREATE})),
                       "up"))
    result = harness.run(*args, *command, env=env, cwd=tmp_path)
    harness.assert_one_line_error(result, 2, needle, str(wrong))


def test_an_empty_folder_with_history_is_said_clearly(tmp_path):
    """Item 13: a folder without migrations against a database with history: `up` exits 1 saying so,
    `status` has a warning (text and JSON), `doctor` an `empty-folder` finding (not "run migrate up")."""
    url, path = sqlite(tmp_path)
    real = harness.write(tmp_path / "real", {"001_t.sql": CREATE})
    ok(harness.run("--database", url, "--migrations", str(real), "up"))
    empty = tmp_path / "empty"
    empty.mkdir()
    up = harness.run("--database", url, "--migrations", str(empty), "up")
    harness.assert_one_line_error(up, 1, "has no migrations", "1 applied")
    status = harness.run("--database", url, "--migrations", str(empty), "--format", "json", "status")
    assert any("has no migrations" in w for w in status.json()["warnings"]), status.describe()
    doctor = harness.run("--database", url, "--migrations", str(empty), "--format", "json", "doctor")
    assert doctor.returncode == 1, doctor.describe()
    kinds = {f["kind"]: f for f in findings(doctor)}
    assert "empty-folder" in kinds and "migrate up" not in kinds["empty-folder"]["fix"], kinds


def test_an_empty_folder_on_a_new_database_warns(tmp_path):
    """Item 13: an empty folder on a new database: `up` still exits 0 (nothing to do) but says the folder
    is empty in a warning and in its JSON; doctor does not suggest `migrate up`."""
    url, path = sqlite(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    result = ok(harness.run("--database", url, "--migrations", str(empty), "--format", "json",
                            "--log-format", "json", "up"))
    assert any("has no migrations" in w for w in result.json()["warnings"]), result.describe()
    assert any(json.loads(line).get("level") == "warning" for line in result.stderr.splitlines()
               if line.startswith("{")), result.describe()
    doctor = harness.run("--database", url, "--migrations", str(empty), "--format", "json", "doctor")
    assert all("migrate up" not in f["fix"] for f in findings(doctor)), doctor.describe()
    assert any(f["kind"] == "empty-folder" for f in findings(doctor)), doctor.describe()


# ----------------------------------------------------------------------------- item 15
@pytest.mark.parametrize("option, needle", [
    ("until=2020-01-01", "in the past"),
    ("until=9999-12-31", "until"),
    ("window=99999999999999d", "window"),
    ("window=400d", "max_window"),
    ("until=2099-01-01", "max_window"),
])
def test_bad_windows_in_directives_are_refused(tmp_path, option, needle):
    """Item 15: an expired `until=`, a far date, a huge or over-long window: `up` (and dry-run) exit 2
    naming file:line, nothing applied; `lint` exits 2 too (no OverflowError traceback)."""
    url, path = sqlite(tmp_path)
    folder = harness.write(tmp_path / "migrations", {
        "001_t.sql": CREATE, "002_rename.sql": f"-- compat: rename t.name -> title {option}\n" + RENAME})
    for extra in (["--dry-run"], []):
        result = harness.run(*harness.db_args(url, folder, "up", *extra))
        harness.assert_one_line_error(result, 2, "002_rename.sql:1", needle)
    assert sqlite_history(path) == []
    if option.startswith("window=9") or option.startswith("until=9"):
        harness.assert_one_line_error(harness.run(*harness.db_args(url, folder, "lint", "--all", "--offline")), 2,
                                      "002_rename.sql:1")


def test_max_window_is_configurable(tmp_path):
    """Item 15: `[compat] max_window` raises the limit: a 400-day window is then accepted."""
    url, path = sqlite(tmp_path)
    folder = harness.write(tmp_path / "migrations", {
        "001_t.sql": CREATE, "002_rename.sql": "-- compat: rename t.name -> title window=400d\n" + RENAME})
    config = tmp_path / "migrate.toml"
    config.write_text('[compat]\nmax_window = "500d"\n', encoding="utf-8")
    ok(harness.run("--config", str(config), *harness.db_args(url, folder, "up")))
    assert sqlite_history(path) == ["001_t", "002_rename"]


@pytest.mark.parametrize("args, needle", [
    (["up", "--lock-timeout", "99999999999999d"], "--lock-timeout"),
    (["up", "--lock-timeout", "30d"], "--lock-timeout"),  # > 2147483647 ms: PostgreSQL would reject it
    (["up", "--lock-timeout", "0s"], "--lock-timeout"),  # 0 would mean "no timeout"
    (["up", "--lock-wait", "99999999999999d"], "--lock-wait"),
    (["shims", "audit", "--warn-within", "99999999999999d"], "--warn-within"),
    (["shims", "extend", "t__v001", "--by", "99999999999999d", "--reason", "x"], "--by"),
    (["shims", "extend", "t__v001", "--until", "9999-12-31", "--reason", "x"], "--until"),
    (["shims", "extend", "t__v001", "--by", "800d", "--reason", "x"], "max_window"),
])
def test_huge_durations_are_usage_errors(tmp_path, args, needle):
    """Item 15: huge durations and far dates are exit 2 with one line (not an OverflowError traceback,
    exit 1); a lock timeout of 0 or beyond PostgreSQL's range is refused."""
    url, path = sqlite(tmp_path)
    folder = harness.write(tmp_path / "migrations", {
        "001_t.sql": CREATE, "002_rename.sql": "-- compat: rename t.name -> title window=14d\n" + RENAME})
    ok(harness.run(*harness.db_args(url, folder, "up", "--to", "001_t")))
    if args[0] == "shims":
        ok(harness.run(*harness.db_args(url, folder, "up")))
    before = sqlite_history(path)
    result = harness.run(*harness.db_args(url, folder, *args))
    harness.assert_one_line_error(result, 2, needle)
    assert sqlite_history(path) == before


def test_schema_template_without_version_is_refused(tmp_path):
    """Item 15: `[compat] schema_template = "compat"` would put every version's shims in one schema."""
    url, path = sqlite(tmp_path)
    folder = harness.write(tmp_path / "migrations", {"001_t.sql": CREATE})
    config = tmp_path / "migrate.toml"
    config.write_text('[compat]\nschema_template = "compat"\n', encoding="utf-8")
    result = harness.run("--config", str(config), *harness.db_args(url, folder, "up"))
    harness.assert_one_line_error(result, 2, "schema_template", "{version}")


# ----------------------------------------------------------------------------- item 21
def test_verify_consumer_prints_each_reason_once(pg_url, tmp_path):
    """Item 21: `verify --consumer` in text mode: every reason appears once over stdout and stderr."""
    folder = examples(tmp_path / "migrations")
    ok(cli(pg_url, folder, "up", "--no-compat"))
    result = cli(pg_url, folder, "verify", "--consumer", str(CONTRACT_017))
    assert result.returncode == 1, result.describe()
    prefix = "migrate: verify: workflow-api (017 code): "
    reasons = [line[len(prefix):] for line in result.error_lines if line.startswith(prefix)]
    assert reasons, result.describe()
    both = result.stdout + result.stderr
    for reason in reasons:
        assert both.count(reason) == 1, (reason, result.describe())


def test_new_accepts_the_names_the_loader_accepts(tmp_path):
    """Item 21: `migrate new "ünïcode 列"` writes 001_ünïcode_列.sql (the loader reads such files)."""
    folder = tmp_path / "migrations"
    result = ok(harness.run("--migrations", str(folder), "new", "Ünïcode 列"))
    assert [p.name for p in folder.iterdir()] == ["001_ünïcode_列.sql"], result.describe()
    url, _ = sqlite(tmp_path)
    ok(harness.run(*harness.db_args(url, folder, "up")))


def test_mark_and_rehash_report_only_what_they_did(tmp_path):
    """Item 21: `mark` of an applied migration and `rehash` of an unchanged file write no log row and
    say "unchanged" instead of "marked"/"rehashed"."""
    url, path = sqlite(tmp_path)
    folder = harness.write(tmp_path / "migrations", {"001_t.sql": CREATE, "002_u.sql": "CREATE TABLE u (id int);\n"})
    ok(harness.run(*harness.db_args(url, folder, "up", "--to", "001_t")))
    marks, rehashes = log_rows(path, "mark"), log_rows(path, "rehash")
    mark = ok(harness.run(*harness.db_args(url, folder, "--format", "json", "mark", "001_t", "002_u")))
    assert mark.json() == {"marked": ["002_u"], "unchanged": ["001_t"]}, mark.describe()
    assert log_rows(path, "mark") == marks + 1
    rehash = ok(harness.run(*harness.db_args(url, folder, "rehash", "001_t")))
    assert "rehashed" not in rehash.stdout and "unchanged" in rehash.stdout, rehash.describe()
    assert log_rows(path, "rehash") == rehashes


def test_config_errors_on_postgresql_are_exit_2(pg_url, tmp_path):
    """Item 21: a lock_timeout PostgreSQL rejects (exit 4 on main) and an unknown URL parameter (exit 5 on
    main) are configuration errors: exit 2, naming the setting, nothing applied."""
    folder = harness.write(tmp_path / "migrations", {"001_t.sql": CREATE})
    result = cli(pg_url, folder, "up", "--lock-timeout", "30d")
    harness.assert_one_line_error(result, 2, "--lock-timeout")
    typo = pg_url + ("&" if "?" in pg_url else "?") + "sslmod=disable"
    result = harness.run(*harness.db_args(typo, folder, "up"))
    harness.assert_one_line_error(result, 2, "--database", "sslmod")
    assert history(pg_url) == []


def test_migrate_alone_prints_help_and_exits_2(tmp_path):
    """Item 21: `migrate` with no command prints the help on stdout (not as an error) and exits 2, the
    documented usage code: `migrate $COMMAND` with an unset variable must not pass a CI step."""
    result = harness.run(cwd=tmp_path)
    assert result.returncode == 2, result.describe()
    assert "Usage: migrate" in result.stdout and "Commands:" in result.stdout
    harness.assert_one_line_error(result, 2, "no command")
    assert not (tmp_path / "migrate.db").exists()


def test_short_ids_work_in_every_command(tmp_path):
    """Item 21: an unambiguous prefix (`001`, `1`, `002_u`) works in up --to, down --to, mark, unmark and
    rehash; an ambiguous or unknown one is exit 2 listing the candidates."""
    url, path = sqlite(tmp_path)
    folder = harness.write(tmp_path / "migrations", {
        "001_t.sql": CREATE, "002_u.sql": "CREATE TABLE u (id int);\n", "002_u.rollback.sql": "DROP TABLE u;\n",
        "003_v.sql": "CREATE TABLE v (id int);\n", "010_w.sql": "CREATE TABLE w (id int);\n"})
    ok(harness.run(*harness.db_args(url, folder, "up", "--to", "002")))
    assert sqlite_history(path) == ["001_t", "002_u"]
    ok(harness.run(*harness.db_args(url, folder, "down", "--to", "1")))
    assert sqlite_history(path) == ["001_t"]
    ok(harness.run(*harness.db_args(url, folder, "mark", "002_u")))
    ok(harness.run(*harness.db_args(url, folder, "unmark", "002")))
    ok(harness.run(*harness.db_args(url, folder, "mark", "2", "3")))
    assert sqlite_history(path) == ["001_t", "002_u", "003_v"]
    ok(harness.run(*harness.db_args(url, folder, "rehash", "003")))
    harness.assert_one_line_error(harness.run(*harness.db_args(url, folder, "up", "--to", "0")), 2,
                                  "ambiguous", "001_t", "010_w")
    harness.assert_one_line_error(harness.run(*harness.db_args(url, folder, "mark", "999")), 2, "999",
                                  "no such migration")
    assert sqlite_history(path) == ["001_t", "002_u", "003_v"]


def test_as_of_takes_the_same_ids(pg_url, tmp_path):
    """Item 21: `shims connect --as-of` takes a version (017, 17), an id or a prefix like every other command,
    and they all name the same compat schema."""
    folder = examples(tmp_path / "migrations")
    ok(cli(pg_url, folder, "up"))
    expected = ok(cli(pg_url, folder, "--format", "json", "shims", "connect", "--as-of", "017")).json()["schema"]
    for spelling in ("17", M017, "017_add"):
        got = ok(cli(pg_url, folder, "--format", "json", "shims", "connect", "--as-of", spelling)).json()
        assert got["schema"] == expected, (spelling, got)
