"""`migrate lint --format sarif` (validated against the SARIF 2.1.0 JSON schema with jsonschema) and
`--format github` (workflow-command annotations, escaped as GitHub's runner unescapes them)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jsonschema
import pytest
from hypothesis import given, strategies as st

from runner.lint import LintFinding, LintReport
from runner.lint_formats import annotation, escape_data, escape_property, find_root, to_github, to_sarif

SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "data" / "sarif-schema-2.1.0.json").read_text(encoding="utf-8"))
GITHUB_ENV = ("GITHUB_WORKSPACE",)


def validate(log: dict) -> None:
    """Raise unless ``log`` is valid SARIF 2.1.0."""
    cls = jsonschema.validators.validator_for(SCHEMA)
    cls.check_schema(SCHEMA)
    cls(SCHEMA, format_checker=cls.FORMAT_CHECKER).validate(log)


def sample_repo(tmp_path: Path) -> Path:
    """A repository (a .git folder is enough to find its root) with migrations lint has things to say on."""
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    folder = repo / "db" / "my migrations"
    folder.mkdir(parents=True)
    (folder / "001_accounts.sql").write_text("CREATE TABLE accounts (id int, email text);\n", encoding="utf-8")
    (folder / "002_index.sql").write_text(
        "-- an index\nCREATE TABLE other (id int);\n    CREATE INDEX accounts_email ON accounts (email);\n"
        "ALTER TYPE mood ADD VALUE 'meh';\n", encoding="utf-8")
    (folder / "003_py.py").write_text("from yoyo import step\nstep('SELECT 1')\n", encoding="utf-8")
    return repo


def env_without_github() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in GITHUB_ENV}


def unescape_data(text: str) -> str:
    """What GitHub's runner does to a command's message (actions/runner ActionCommand.Unescape)."""
    return text.replace("%0D", "\r").replace("%0A", "\n").replace("%25", "%")


def unescape_property(text: str) -> str:
    return (text.replace("%0D", "\r").replace("%0A", "\n").replace("%3A", ":").replace("%2C", ",")
            .replace("%25", "%"))


def test_sarif_of_a_real_lint_run_is_valid_and_points_at_repo_relative_lines(tmp_path, migrate):
    repo = sample_repo(tmp_path)
    result = migrate("lint", "--offline", "--migrations", "my migrations", "--format", "sarif",
                     cwd=repo / "db", env={"GITHUB_WORKSPACE": ""})
    assert result.returncode == 1, result  # an error-level finding
    log = json.loads(result.stdout)
    validate(log)
    assert log["version"] == "2.1.0"
    run = log["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    ids = [r["id"] for r in rules]
    assert {"index-not-concurrent", "non-transactional-statement", "duplicate-version", "invalid-file"} <= set(ids)
    assert all(r["shortDescription"]["text"] for r in rules)
    found = {(r["ruleId"], r["level"]): r for r in run["results"]}
    assert set(found) == {("index-not-concurrent", "error"), ("non-transactional-statement", "warning")}
    index = found[("index-not-concurrent", "error")]
    assert rules[index["ruleIndex"]]["id"] == "index-not-concurrent"
    where = index["locations"][0]["physicalLocation"]
    # Relative to the repository root (found from db/, where the command ran), spaces percent-encoded.
    assert where["artifactLocation"] == {"uri": "db/my%20migrations/002_index.sql", "uriBaseId": "SRCROOT"}
    assert where["region"] == {"startLine": 3, "startColumn": 5}  # the statement is indented by 4
    assert "CONCURRENTLY" in index["message"]["text"]
    assert run["originalUriBaseIds"]["SRCROOT"]["uri"] == repo.resolve().as_uri() + "/"
    notes = run["invocations"][0]["toolExecutionNotifications"]
    assert [n["message"]["text"] for n in notes] == ["003_py: not linted (Python migration)"]


def test_sarif_rules_link_to_the_manual_and_paths_outside_the_root_stay_absolute(tmp_path):
    outside = tmp_path / "elsewhere.sql"
    outside.write_text("SELECT 1;\n", encoding="utf-8")
    report = LintReport(findings=[LintFinding(str(outside), 1, "set-not-null", "error", "m", "f")])
    log = to_sarif(report, tmp_path / "repo", docs="https://docs.example/migrate")
    validate(log)
    rules = {r["id"]: r for r in log["runs"][0]["tool"]["driver"]["rules"]}
    assert rules["set-not-null"]["helpUri"] == \
        "https://docs.example/migrate/diagnosis.md#lint-migrations-before-they-run"
    assert rules["duplicate-version"]["helpUri"] == "https://docs.example/migrate/ci.md#check-migration-files"
    location = log["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]
    assert location == {"uri": outside.resolve().as_uri()}


def test_sarif_without_findings_is_valid_and_exits_0(tmp_path, migrate):
    repo = tmp_path / "clean"
    (repo / ".git").mkdir(parents=True)
    (repo / "migrations").mkdir()
    (repo / "migrations" / "001_t.sql").write_text("CREATE TABLE t (id int);\n", encoding="utf-8")
    result = migrate("lint", "--offline", "--format", "sarif", cwd=repo, env={"GITHUB_WORKSPACE": ""})
    assert result.returncode == 0, result
    log = json.loads(result.stdout)
    validate(log)
    assert log["runs"][0]["results"] == []


def test_an_unparseable_file_is_a_sarif_result_and_exit_2(tmp_path, migrate):
    repo = tmp_path / "bad"
    (repo / ".git").mkdir(parents=True)
    (repo / "migrations").mkdir()
    (repo / "migrations" / "001_t.sql").write_text("CREATE TABLE t (id int);\n\nCREATE TABLE u (id intt int);\n",
                                                   encoding="utf-8")
    result = migrate("lint", "--offline", "--format", "sarif", cwd=repo, env={"GITHUB_WORKSPACE": ""})
    assert result.returncode == 2, result
    assert result.stderr.strip().splitlines()[-1].startswith("migrate: error: ")
    assert "001_t.sql:3" in result.stderr
    log = json.loads(result.stdout)
    validate(log)
    [finding] = log["runs"][0]["results"]
    assert finding["ruleId"] == "invalid-file"
    assert finding["locations"][0]["physicalLocation"]["region"]["startLine"] == 3


def test_github_annotations_of_a_real_lint_run(tmp_path, migrate):
    repo = sample_repo(tmp_path)
    result = migrate("lint", "--offline", "--migrations", "db/my migrations", "--format", "github",
                     cwd=repo, env={"GITHUB_WORKSPACE": str(repo)})
    assert result.returncode == 1, result
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("::error file=db/my migrations/002_index.sql,line=3,col=5,"
                               "title=migrate%3A index-not-concurrent::CREATE INDEX accounts_email")
    assert "%0Afix: use CREATE INDEX CONCURRENTLY" in lines[0]
    assert lines[1].startswith("::warning file=db/my migrations/002_index.sql,line=4,col=1,"
                               "title=migrate%3A non-transactional-statement::")
    assert lines[2] == "::notice::003_py: not linted (Python migration)"
    assert lines[3] == "2 migrations linted: 1 error(s), 1 warning(s)"


def test_sarif_and_github_are_refused_for_other_commands(tmp_path, migrate):
    result = migrate("status", "--format", "github", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == \
        "migrate: error: --format github is for `migrate lint` and `migrate check-files` only"


def test_annotation_escapes_as_github_documents(tmp_path):
    finding = LintFinding(str(tmp_path / "a,b:c%.sql"), 7, "set-not-null", "error",
                          "100% bad,\r\nreally: yes", "fix: it")
    line = annotation(finding, tmp_path, 3)
    assert line == ("::error file=a%2Cb%3Ac%25.sql,line=7,col=3,title=migrate%3A set-not-null::"
                    "100%25 bad,%0D%0Areally: yes%0Afix: fix: it")
    command, _, message = line[2:].partition("::")
    props = dict(p.split("=", 1) for p in command.split(" ", 1)[1].split(","))
    assert unescape_property(props["file"]) == "a,b:c%.sql"
    assert unescape_data(message) == "100% bad,\r\nreally: yes\nfix: fix: it"


@given(st.text())
def test_escaping_round_trips_and_leaves_no_separator(text):
    prop = escape_property(text)
    assert unescape_property(prop) == text
    assert not {",", ":", "\n", "\r"} & set(prop)
    data = escape_data(text)
    assert unescape_data(data) == text
    assert not {"\n", "\r"} & set(data)


def test_root_is_the_workspace_else_the_folder_holding_dot_git(tmp_path):
    (tmp_path / ".git").mkdir()
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert find_root(tmp_path / "a" / "b", env={}) == tmp_path.resolve()
    assert find_root(tmp_path / "a", env={"GITHUB_WORKSPACE": str(tmp_path / "a")}) == (tmp_path / "a").resolve()


def test_github_summary_comes_last(tmp_path):
    report = LintReport(linted=["001"])
    assert to_github(report, tmp_path) == "1 migration linted: 0 error(s), 0 warning(s)"


@pytest.mark.parametrize("bad", [
    {"version": "2.1.0"},  # no runs
    {"version": "2.1.0", "runs": [{"tool": {"driver": {}}}]},  # a driver needs a name
])
def test_the_vendored_schema_rejects_invalid_logs(bad):
    with pytest.raises(jsonschema.ValidationError):
        validate(bad)


def test_a_relative_root_is_resolved(tmp_path, monkeypatch):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "001_a.sql").write_text("SELECT 1;\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    report = LintReport(findings=[LintFinding("m/001_a.sql", 1, "set-not-null", "error", "m", "f")])
    log = to_sarif(report, Path("."))
    validate(log)
    assert log["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"] == \
        {"uri": "m/001_a.sql", "uriBaseId": "SRCROOT"}
    assert to_github(report, Path(".")).startswith("::error file=m/001_a.sql,line=1,col=1,")
