"""The composite GitHub Action (action.yml): its structure, and its `run:` steps executed as the
GitHub runner would (bash -eo pipefail, inputs through `env:`, GITHUB_OUTPUT / GITHUB_PATH files
between steps) against a real PostgreSQL database. `uses:` steps (setup-python, upload-sarif) cannot
run here: their inputs are checked instead."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ACTION = yaml.safe_load((ROOT / "action.yml").read_text(encoding="utf-8"))
SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "data" / "sarif-schema-2.1.0.json").read_text(encoding="utf-8"))
EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


@dataclass
class Step:
    name: str
    returncode: int
    stdout: str
    stderr: str
    outputs: dict[str, str]


@dataclass
class Runner:
    """Just enough of the GitHub runner for composite `run:` steps."""

    workspace: Path
    temp: Path
    action_path: Path
    path: list[str] = field(default_factory=list)  # from GITHUB_PATH, newest first
    outputs: dict[str, dict[str, str]] = field(default_factory=dict)

    def expand(self, text: str, inputs: dict[str, str]) -> str:
        def value(match: re.Match) -> str:
            expr = match.group(1)
            if expr.startswith("inputs."):
                return inputs[expr.removeprefix("inputs.")]
            found = re.fullmatch(r"steps\.([\w-]+)\.outputs\.([\w-]+)", expr)
            if found:
                return self.outputs.get(found.group(1), {}).get(found.group(2), "")
            raise AssertionError(f"expression this test cannot evaluate: {expr!r}")

        return EXPRESSION.sub(value, str(text))

    def run(self, step: dict, inputs: dict[str, str]) -> Step:
        files = {name: self.temp / f"{name.lower()}-{len(self.outputs)}" for name in ("GITHUB_OUTPUT", "GITHUB_PATH",
                                                                                    "GITHUB_ENV")}
        for file in files.values():
            file.write_text("", encoding="utf-8")
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("DATABASE_URL", "MIGRATE_", "GITHUB_", "VIRTUAL_ENV"))}
        env["PATH"] = os.pathsep.join([*self.path, *(p for p in env["PATH"].split(os.pathsep) if ".venv" not in p)])
        env.update({k: str(v) for k, v in files.items()})
        env.update(GITHUB_ACTIONS="true", CI="true", GITHUB_WORKSPACE=str(self.workspace),
                   GITHUB_ACTION_PATH=str(self.action_path), RUNNER_TEMP=str(self.temp))
        env.update({k: self.expand(v, inputs) for k, v in (step.get("env") or {}).items()})
        cwd = self.workspace / self.expand(step.get("working-directory", "."), inputs)
        assert step["shell"] == "bash"
        script = self.temp / "step.sh"
        script.write_text(step["run"], encoding="utf-8")
        proc = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=600)
        outputs = dict(line.split("=", 1) for line in files["GITHUB_OUTPUT"].read_text().splitlines() if line)
        if "id" in step:
            self.outputs[step["id"]] = outputs
        self.path[:0] = reversed(files["GITHUB_PATH"].read_text().splitlines())
        return Step(step["name"], proc.returncode, proc.stdout, proc.stderr, outputs)

    def run_all(self, inputs: dict[str, str], skip: tuple[str, ...] = ()) -> list[Step]:
        """The run steps in order, stopping at the first failure as the runner does."""
        given = {name: spec.get("default", "") for name, spec in ACTION["inputs"].items()}
        assert set(inputs) <= set(given), set(inputs) - set(given)
        given.update(inputs)
        done = []
        for step in ACTION["runs"]["steps"]:
            if "uses" in step or step["name"] in skip:
                continue
            done.append(self.run(step, given))
            if done[-1].returncode != 0:
                break
        return done


def step_named(name: str) -> dict:
    return next(s for s in ACTION["runs"]["steps"] if s["name"] == name)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Runner:
    """The action's install step, run once: a virtualenv in RUNNER_TEMP with the project installed from
    a copy of this working tree (pip builds in the source folder), put on the PATH via GITHUB_PATH."""
    base = tmp_path_factory.mktemp("action")
    source = base / "action-path"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv*", "build", "*.egg-info",
                                                                 "__pycache__", ".pytest_cache", ".hypothesis"))
    temp = base / "runner-temp"
    temp.mkdir()
    # What actions/setup-python leaves: a `python` first on the PATH (here the interpreter running the tests).
    setup_python = base / "setup-python" / "bin"
    setup_python.mkdir(parents=True)
    (setup_python / "python").symlink_to(getattr(sys, "_base_executable", sys.executable))
    runner = Runner(workspace=base, temp=temp, action_path=source, path=[str(setup_python)])
    result = runner.run(step_named("Install migrate"), {})
    assert result.returncode == 0, result
    assert runner.path == [str(temp / "migrate-venv" / "bin"), str(setup_python)]
    return runner


def workspace(tmp_path: Path, extra: dict[str, str]) -> Path:
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "migrations", repo / "db" / "migrations")
    for name, text in extra.items():
        (repo / "db" / "migrations" / name).write_text(text, encoding="utf-8")
    return repo


def fresh(installed: Runner, repo: Path) -> Runner:
    return Runner(workspace=repo, temp=installed.temp, action_path=installed.action_path, path=list(installed.path))


def test_action_structure():
    assert ACTION["runs"]["using"] == "composite"
    inputs = ACTION["inputs"]
    assert {"database-url", "migrations", "config", "python-version", "upload-sarif"} <= set(inputs)
    assert all("description" in spec and "default" in spec for spec in inputs.values())
    steps = ACTION["runs"]["steps"]
    setup = steps[0]
    assert setup["uses"].startswith("actions/setup-python@")
    assert setup["with"]["python-version"] == "${{ inputs.python-version }}"
    upload = step_named("Upload SARIF")
    assert upload["uses"].startswith("github/codeql-action/upload-sarif@")
    assert upload["with"]["sarif_file"] == "${{ steps.lint.outputs.sarif-file }}"
    assert "inputs.upload-sarif == 'true'" in upload["if"]
    names = [s["name"] for s in steps]
    assert names.index("Install migrate") < names.index("Lint migrations") < names.index("Upload SARIF") \
        < names.index("Apply and verify") < names.index("Fail on lint errors")
    for step in steps:
        if "run" in step:
            assert step["shell"] == "bash"  # composite run steps must name their shell
            # Inputs reach scripts through env: only (no expression pasted into a shell script).
            assert "${{" not in step["run"], step["name"]
    assert ACTION["outputs"]["sarif-file"]["value"] == "${{ steps.lint.outputs.sarif-file }}"


def test_action_against_a_real_database_lints_pending_applies_verifies_then_fails_on_lint(
        installed, tmp_path, pg_url, migrate):
    repo = workspace(tmp_path, {"019_index.sql": "CREATE INDEX catalog_name_idx ON remediation_workflow_catalog "
                                                 "(workflow_name);\n"})
    # The database already has 001: lint "pending" looks at 017, 018 and 019 only.
    first = migrate("--database", pg_url, "--migrations", str(repo / "db" / "migrations"), "up", "--to",
                    "001_create_remediation_workflow_catalog")
    assert first.returncode == 0, first
    runner = fresh(installed, repo)
    steps = runner.run_all({"database-url": pg_url, "migrations": "migrations", "working-directory": "db",
                            "apply": "true"}, skip=("Install migrate",))
    lint, apply, gate = steps
    assert lint.returncode == 0, lint
    assert lint.outputs["exit-code"] == "1"
    log = json.loads(Path(lint.outputs["sarif-file"]).read_text(encoding="utf-8"))
    jsonschema.validators.validator_for(SCHEMA)(SCHEMA).validate(log)
    # The examples' 017 and 018 add columns without a compat window: warnings (issue 12), not errors.
    [result] = [r for r in log["runs"][0]["results"] if r["level"] == "error"]
    assert result["ruleId"] == "index-not-concurrent"
    location = result["locations"][0]["physicalLocation"]
    assert location["artifactLocation"] == {"uri": "db/migrations/019_index.sql", "uriBaseId": "SRCROOT"}
    assert location["region"]["startLine"] == 1
    assert ("::error file=db/migrations/019_index.sql,line=1,col=1,title=migrate%3A index-not-concurrent::"
            in lint.stdout)
    assert apply.returncode == 0, apply  # up applied 017-019, verify passed
    status = migrate("--database", pg_url, "--migrations", str(repo / "db" / "migrations"), "verify")
    assert status.returncode == 0, status
    assert gate.returncode == 1
    assert "lint reported errors" in gate.stdout


def test_action_verify_fails_on_pending_migrations(installed, tmp_path, pg_url):
    repo = workspace(tmp_path, {})
    runner = fresh(installed, repo)
    steps = runner.run_all({"database-url": pg_url, "migrations": "db/migrations", "upload-sarif": "false"},
                           skip=("Install migrate",))
    lint, verify = steps  # the gate step does not run after a failure
    assert lint.outputs["exit-code"] == "0", lint
    assert verify.returncode == 1, verify
    assert "pending" in verify.stderr


def test_action_without_a_database_lints_offline_and_passes(installed, tmp_path):
    repo = workspace(tmp_path, {})
    runner = fresh(installed, repo)
    steps = runner.run_all({"migrations": "db/migrations", "lint": "all"}, skip=("Install migrate",))
    assert [s.returncode for s in steps] == [0, 0, 0], steps
    lint, verify, _ = steps
    assert lint.outputs["exit-code"] == "0"
    log = json.loads(Path(lint.outputs["sarif-file"]).read_text(encoding="utf-8"))
    jsonschema.validators.validator_for(SCHEMA)(SCHEMA).validate(log)
    assert {r["ruleId"] for r in log["runs"][0]["results"]} == {"shape-change-without-window"}  # warnings only
    assert "3 migrations linted: 0 error(s), 2 warning(s)" in lint.stdout
    assert "apply and verify skipped" in verify.stdout


def test_action_rejects_an_unknown_lint_input(installed, tmp_path):
    runner = fresh(installed, workspace(tmp_path, {}))
    [lint] = runner.run_all({"lint": "sometimes"}, skip=("Install migrate",))
    assert lint.returncode == 2
    assert "input lint: expected pending, all or off, got 'sometimes'" in lint.stdout
