"""The deploy examples run as written: their command lines, against local targets, one run per
shard index, migrate every target exactly once (deploy/fleet-indexed-job.yaml, deploy/github-matrix.yml)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from helpers import ROOT, schema_history
from runner.fleet_targets import load_fleet_file
ALL = ["001_create_remediation_workflow_catalog", "017_add_execution_bundle",
       "018_rename_execution_bundle_to_container_image"]

DEPLOY = ROOT / "deploy"


def _run(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    import os

    full = {k: v for k, v in os.environ.items() if not k.startswith(("MIGRATE_", "DATABASE_URL", "JOB_"))}
    full.update(env)
    assert argv[0] == "migrate", argv
    return subprocess.run([sys.executable, "-m", "runner", *argv[1:]], cwd=cwd, env=full, capture_output=True,
                          text=True, timeout=300)


def _local_fleet(text: str, urls: dict[str, str]) -> str:
    for remote, local in urls.items():
        assert remote in text, remote
        text = text.replace(remote, local)
    return text


def _check_once(outputs: list[str], expected: set[str]) -> None:
    seen: list[str] = []
    for stdout in outputs:
        seen += [json.loads(line)["target"] for line in stdout.splitlines() if '"target"' in line]
    assert sorted(seen) == sorted(expected), "each target must run in exactly one shard"


def test_kubernetes_indexed_job(pg_url, databases, tmp_path, example_migrations):  # noqa: F811
    documents = list(yaml.safe_load_all((DEPLOY / "fleet-indexed-job.yaml").read_text(encoding="utf-8")))
    config = next(d for d in documents if d["kind"] == "ConfigMap")
    job = next(d for d in documents if d["kind"] == "Job")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["parallelism"] >= 1
    container = spec["template"]["spec"]["containers"][0]
    command = [str(c) for c in container["command"]]
    assert command[command.index("--shard-count") + 1] == str(spec["completions"])
    eu, us = databases(2)
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(_local_fleet(config["data"]["fleet.toml"], {
        "postgresql://migrator@tenants-db.internal:5432/app": pg_url,
        "postgresql://migrator@eu-1.internal:5432/app": eu, "postgresql://migrator@us-1.internal:5432/app": us,
    }), encoding="utf-8")
    targets = load_fleet_file(fleet, None).targets
    mount = container["volumeMounts"][0]["mountPath"]
    argv = [{"/app/migrations": str(example_migrations), f"{mount}/fleet.toml": str(fleet)}.get(a, a) for a in command]
    env = {e["name"]: e.get("value", "from-a-secret") for e in container["env"]}
    outputs = []
    for index in range(spec["completions"]):
        done = _run(argv, dict(env, JOB_COMPLETION_INDEX=str(index)), tmp_path)
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)
    _check_once(outputs, {t.name for t in targets})
    for target in targets:
        assert schema_history(target.url, target.schema or "public") == ALL


def test_github_actions_matrix(pg_url, tmp_path, example_migrations):
    workflow = yaml.safe_load((DEPLOY / "github-matrix.yml").read_text(encoding="utf-8"))
    job = workflow["jobs"]["migrate"]
    shards = job["strategy"]["matrix"]["shard"]
    assert job["strategy"]["fail-fast"] is False
    assert sorted(shards) == list(range(int(job["env"]["MIGRATE_SHARD_COUNT"])))
    step = next(s for s in job["steps"] if "fleet up" in s.get("run", ""))
    (tmp_path / "deploy").mkdir()
    names = [f"t{i}" for i in range(8)]
    (tmp_path / "deploy" / "fleet.toml").write_text(
        'schema_template = "tenant_{id}"\n' + "".join(f"[targets.{n}]\n" for n in names), encoding="utf-8")
    env = {k: str(v) for k, v in job["env"].items()}
    env.update(DATABASE_URL=pg_url, PGPASSWORD="from-a-secret")
    outputs = []
    for shard in shards:
        line = step["run"].replace("${{ matrix.shard }}", str(shard))
        done = _run(shlex.split(line), env, tmp_path)
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)
        assert (tmp_path / f"fleet-{shard}.jsonl").read_text(encoding="utf-8").count('"target"') == \
            done.stdout.count('"target"')
    _check_once(outputs, set(names))
    for n in names:
        assert schema_history(pg_url, f"tenant_{n}") == ALL
