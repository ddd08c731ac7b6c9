"""The container image and the Kubernetes manifests in deploy/, run as they would run.

No image can be built here, so the Dockerfile's install steps run in a fresh virtualenv: the
project wheel built with ``pip wheel --no-deps`` from a copy of exactly what the Dockerfile
copies, installed with pip, byte-compiled. Its ``migrate`` entrypoint then runs as the UID the
manifests name (through ``setpriv`` when we are root, as CI is), with a read-only working
directory and HOME, the image's ENV from the Dockerfile, and each manifest's env with the
Secret replaced by a real database. What this does not exercise (the image build itself, the
cluster) is listed in docs/kubernetes.md.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from helpers import ROOT
from helpers import history

DEPLOY = ROOT / "deploy"
# The single-release variants (the fleet's Indexed Job is tested by test_fleet_deploy.py).
MANIFESTS = sorted(p.name for p in DEPLOY.glob("*.yaml")
                   if any((doc or {}).get("kind") in ("Job", "Deployment") for doc in yaml.safe_load_all(p.read_text()))
                   and not p.name.startswith("fleet-"))
HOOK_JOBS = {"helm-pre-upgrade-job.yaml": "helm", "argocd-presync-job.yaml": "argocd"}


# ---------------------------------------------------------------------- the Dockerfile
@dataclass
class Stage:
    base: str
    name: str | None
    lines: list[str]


def dockerfile_stages() -> list[Stage]:
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    stages: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            parts = line.split()
            stages.append(Stage(parts[1], parts[3] if len(parts) > 3 and parts[2].upper() == "AS" else None, []))
        elif stages:
            stages[-1].lines.append(line)
    return stages


def instruction(stage: Stage, name: str) -> list[str]:
    return [line[len(name):].strip() for line in stage.lines if line.upper().startswith(name + " ")]


def image_env(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for value in instruction(stage, "ENV"):
        for item in shlex.split(value):
            key, _, val = item.partition("=")
            env[key] = val
    return env


def test_dockerfile_is_multi_stage_slim_non_root_without_build_tools() -> None:
    builder, final = dockerfile_stages()
    assert builder.name == "builder" and builder.base == final.base == "python:3.11-slim"
    assert any("pip wheel --no-deps" in line for line in instruction(builder, "RUN"))
    assert instruction(final, "USER") == ["10001:10001"]
    assert json.loads(instruction(final, "ENTRYPOINT")[0]) == ["migrate"]
    env = image_env(final)
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert "HOME" not in env  # an arbitrary UID has no home: nothing may need one
    final_run = " ".join(instruction(final, "RUN"))
    assert "from=builder" in final_run and "--no-index" in final_run
    assert not re.search(r"apt-get|gcc|build-essential|apk ", final_run), "build tools in the final stage"
    copied = [source for stage in (builder, final) for line in instruction(stage, "COPY")
              if "--from" not in line for source in [w for w in line.split() if not w.startswith("--")][:-1]]
    assert {"pyproject.toml", "runner/", "compat/", "migrations/"} <= set(copied)
    ignored = (ROOT / ".dockerignore").read_text()
    allowed = {line[1:] for line in ignored.splitlines() if line.startswith("!")}
    for source in copied:
        assert source.rstrip("/") in allowed, f"{source} is copied by the Dockerfile but excluded by .dockerignore"


@dataclass
class Image:
    """The stand-in for the image: a virtualenv and a read-only /app."""

    venv: Path
    app: Path  # WORKDIR /app: the migrations, read-only
    env: dict[str, str]  # the image's ENV, with /app and PATH mapped here
    workdir: Path
    entrypoint: list[str]


def as_user(uid: int | None) -> list[str]:
    """The prefix that runs a command as ``uid`` (root can; anyone else runs as themselves)."""
    if uid is None or os.geteuid() != 0:
        return []
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]


def base_python() -> str:
    """A Python >= 3.11 with venv that UID 10001 can run, as the image's /usr/local/bin/python3 is
    (this interpreter may live under a home only root can enter, e.g. /root/.pyenv)."""
    candidates = [getattr(sys, "_base_executable", sys.executable), sys.executable, "/usr/local/bin/python3",
                  "/usr/bin/python3"]
    probe = "import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))"
    for candidate in candidates:
        if os.path.exists(candidate) and subprocess.run(
                [*as_user(10001), "/bin/sh", "-c", f'"$0" -c "{probe}"', candidate],
                capture_output=True).returncode == 0:
            return candidate
    raise AssertionError(f"no Python >= 3.11 with venv that UID 10001 can run among {candidates} "
                         "(Debian: apt-get install python3-venv)")


@pytest.fixture(scope="module")
def image() -> Iterator[Image]:
    builder, final = dockerfile_stages()
    root = Path(tempfile.mkdtemp(prefix="migrate-image-"))  # not under pytest's 0700 tmp: another UID reads it
    try:
        root.chmod(0o755)
        source = root / "src"
        source.mkdir()
        for line in instruction(builder, "COPY"):  # what the builder stage copies, nothing else
            *sources, _ = line.split()
            for name in sources:
                if (ROOT / name).is_dir():
                    shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy2(ROOT / name, source / name)
        quiet = {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONDONTWRITEBYTECODE": "1"}
        env = dict(os.environ, **quiet)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", str(root / "wheels"),
                        str(source)], check=True, env=env, capture_output=True)
        venv = root / "opt-migrate"
        subprocess.run([base_python(), "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *glob.glob(str(root / "wheels" / "*.whl"))],
                       check=True, env=env, capture_output=True)
        subprocess.run([str(venv / "bin" / "python"), "-m", "compileall", "-q", str(venv)], check=True,
                       capture_output=True)
        app = root / "app"
        shutil.copytree(ROOT / "migrations", app / "migrations")
        for path in [app, *app.rglob("*")]:
            path.chmod(0o555 if path.is_dir() else 0o444)
        mapped = {k: v.replace("/app", str(app)) for k, v in image_env(final).items() if k != "PATH"}
        mapped["PATH"] = f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin"
        mapped["HOME"] = str(app)  # read-only, like the home of a UID the image does not know
        workdir = Path(instruction(final, "WORKDIR")[-1].replace("/app", str(app)))
        yield Image(venv, app, mapped, workdir, json.loads(instruction(final, "ENTRYPOINT")[0]))
    finally:
        for path in [root, *root.rglob("*")]:
            if path.is_dir() and not path.is_symlink():
                path.chmod(0o755)
        shutil.rmtree(root, ignore_errors=True)


def run_in_image(image: Image, argv: list[str], env: dict[str, str], uid: int | None = 10001) -> subprocess.CompletedProcess[str]:
    full_env = dict(image.env, **env)
    return subprocess.run([*as_user(uid), *argv], cwd=image.workdir, env=full_env, capture_output=True, text=True,
                          timeout=120)


def test_entrypoint_runs_as_an_arbitrary_uid_read_only(image: Image, pg_url: str) -> None:
    help_run = run_in_image(image, [*image.entrypoint, "--help"], {})
    assert help_run.returncode == 0, help_run.stderr
    assert "Usage: migrate" in help_run.stdout
    assert not os.access(image.workdir, os.W_OK) or os.geteuid() == 0
    up = run_in_image(image, [*image.entrypoint, "up"], {"DATABASE_URL": pg_url})
    assert up.returncode == 0, up.stderr
    assert "applied 3 migration(s)" in up.stdout
    assert len(history(pg_url)) == 3
    assert sorted(p.name for p in image.app.rglob("*") if p.suffix in (".pyc", ".db", ".lock")) == []


# --------------------------------------------------------------------- the manifests
def load(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


def pod_spec(manifest: dict) -> dict:
    return manifest["spec"]["template"]["spec"]


def migrate_containers(manifest: dict) -> list[dict]:
    """The containers that run the runner's image, in the order they run."""
    spec = pod_spec(manifest)
    return [c for c in [*spec.get("initContainers", []), *spec["containers"]] if "/migrate:" in c["image"]]


def test_there_are_three_variants() -> None:
    assert set(MANIFESTS) == {"helm-pre-upgrade-job.yaml", "argocd-presync-job.yaml", "init-container-deployment.yaml"}


@pytest.mark.parametrize("name", sorted(HOOK_JOBS))
def test_hook_jobs_avoid_the_known_failure_modes(name: str) -> None:
    job = load(name)
    annotations = job["metadata"]["annotations"]
    if HOOK_JOBS[name] == "helm":
        assert set(annotations["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
        policy = annotations["helm.sh/hook-delete-policy"].split(",")
        assert "before-hook-creation" in policy and "hook-succeeded" in policy
        assert "hook-failed" not in policy  # would delete the failed Job and its logs
    else:
        assert annotations["argocd.argoproj.io/hook"] == "PreSync"
        assert annotations["argocd.argoproj.io/hook-delete-policy"] == "BeforeHookCreation"
        assert not any(key.startswith("helm.sh/") for key in annotations)
    spec = job["spec"]
    assert 0 < spec["backoffLimit"] <= 3
    assert 60 <= spec["activeDeadlineSeconds"] <= 3600
    # 0 or a few seconds: the Job can vanish before Argo CD reads its status, and the sync hangs.
    assert spec["ttlSecondsAfterFinished"] >= 3600
    fail_codes = {code for rule in spec["podFailurePolicy"]["rules"] if rule["action"] == "FailJob"
                  for code in rule["onExitCodes"]["values"]}
    assert fail_codes == {1, 2, 4}  # 3 (lock) and 5 (unreachable) are retried
    assert pod_spec(job)["restartPolicy"] == "Never"


@pytest.mark.parametrize("name", MANIFESTS)
def test_every_migrate_container_is_locked_down(name: str) -> None:
    manifest = load(name)
    spec = pod_spec(manifest)
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] >= 1000
    assert spec["automountServiceAccountToken"] is False
    volumes = {v["name"]: v for v in spec["volumes"]}
    containers = migrate_containers(manifest)
    assert len(containers) == 3
    for container in containers:
        security = container["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] >= 1000
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert "emptyDir" in volumes[mounts["/tmp"]]
        env = {e["name"]: e for e in container["env"]}
        assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]["key"] == "url"
        assert "value" not in env["DATABASE_URL"]


def argv_of(container: dict, image: Image) -> list[str]:
    command = container.get("command") or image.entrypoint
    return [*command, *container.get("args", [])]


def env_of(container: dict, database_url: str) -> dict[str, str]:
    env = {}
    for item in container["env"]:
        if "valueFrom" in item:
            assert item["valueFrom"]["secretKeyRef"]["name"] == "app-database"
            env[item["name"]] = database_url
        else:
            env[item["name"]] = str(item["value"])
    return env


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_command_lines_run_against_a_real_database(name: str, image: Image, pg_url: str) -> None:
    manifest = load(name)
    secret_url = pg_url.replace("postgresql://postgres@", "postgresql://postgres:k8s-s3cret@", 1)  # trust auth
    steps, outputs = [], []
    for container in migrate_containers(manifest):
        argv = argv_of(container, image)
        steps.append(" ".join(argv))
        result = run_in_image(image, argv, env_of(container, secret_url),
                              uid=container["securityContext"]["runAsUser"])
        assert result.returncode == 0, f"{container['name']}: {argv} exited {result.returncode}: {result.stderr}"
        outputs.append(result.stdout + result.stderr)
    assert not any("k8s-s3cret" in out for out in outputs)
    assert "postgres:***@" in outputs[1]  # up logs the database, redacted
    # The audit ran (the init variant's `|| echo` must not hide a command that cannot start).
    assert "1 active shim(s); 0 past expiry" in outputs[2] and "audit failed" not in outputs[2]
    assert re.match(r"migrate wait .*\| ?migrate up.*\| ?.*migrate shims audit", " | ".join(steps)), steps
    assert len(history(pg_url)) == 3
