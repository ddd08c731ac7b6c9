"""The pre-commit hooks of .pre-commit-hooks.yaml, run by pre-commit itself (`pre-commit try-repo`) on
sample repositories: pre-commit builds its own virtualenv installing this project from the
repository (its HEAD plus uncommitted changes to tracked files), so this needs PyPI and takes a
while; both samples run at once, each try-repo building its own environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / ".pre-commit-hooks.yaml"


def sample(path: Path, files: dict[str, str]) -> Path:
    """A git repository holding ``files`` (added to the index: what `--all-files` looks at)."""
    path.mkdir(parents=True)
    for name, text in files.items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    subprocess.run(["git", "init", "-q", "."], cwd=path, check=True)
    subprocess.run(["git", "add", "-A"], cwd=path, check=True)
    return path


def try_repo(cwd: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "MIGRATE_"))}
    env.update(PRE_COMMIT_COLOR="never", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.invalid",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.invalid")
    return subprocess.Popen([sys.executable, "-m", "pre_commit", "try-repo", str(ROOT), "--all-files",
                             "--verbose"], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def test_manifest_declares_both_hooks_for_migration_files():
    hooks = {hook["id"]: hook for hook in yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))}
    assert set(hooks) == {"migrate-lint", "migrate-check-files"}
    assert hooks["migrate-lint"]["entry"] == "migrate lint --offline"
    assert hooks["migrate-check-files"]["entry"] == "migrate check-files"
    assert all(hook["language"] == "python" for hook in hooks.values())
    import re

    lint, check = (re.compile(hooks[h]["files"]) for h in ("migrate-lint", "migrate-check-files"))
    assert lint.search("migrations/001_a.sql") and lint.search("db/migrations/001_a.sql")
    assert not lint.search("migrations/001_a.py") and not lint.search("src/schema.sql")
    assert re.search(hooks["migrate-lint"]["exclude"], "migrations/001_a.rollback.sql")
    assert check.search("migrations/002_b.py") and not check.search("migrations/sub/x.sql")


def test_try_repo_passes_a_clean_sample_and_fails_a_bad_one(tmp_path):
    good = sample(tmp_path / "good", {
        "migrations/001_accounts.sql": "CREATE TABLE accounts (id int, email text);\n",
        "migrations/001_accounts.rollback.sql": "DROP TABLE accounts;\n",
        "migrations/002_index.sql": "-- transactional: false\nCREATE INDEX CONCURRENTLY accounts_email "
                                    "ON accounts (email);\n",
        "migrations/003_py.py": "from yoyo import step\nstep('SELECT 1')\n",
        "src/schema.sql": "this is not SQL and not a migration\n",
    })
    bad = sample(tmp_path / "bad", {
        "migrations/001_accounts.sql": "CREATE TABLE accounts (id int, email text);\n",
        "migrations/002_index.sql": "CREATE INDEX accounts_email ON accounts (email);\n",
        "migrations/002_again.sql": "SELECT 1;\n",
        "migrations/003_broken.py": "from yoyo import step\nstep('SELECT 1'\n",
    })
    runs = {"good": try_repo(good), "bad": try_repo(bad)}
    out = {name: proc.communicate(timeout=900)[0] for name, proc in runs.items()}
    codes = {name: proc.returncode for name, proc in runs.items()}

    assert codes["good"] == 0, out["good"]
    assert "migrate lint (offline)" in out["good"] and "migrate check-files" in out["good"]
    assert "Failed" not in out["good"]
    assert "4 migration files checked: 0 problem(s)" in out["good"]  # not src/schema.sql

    assert codes["bad"] == 1, out["bad"]
    assert "migrations/002_index.sql:1: error [index-not-concurrent]" in out["bad"]
    assert "migrations/003_broken.py:2: error [invalid-file] syntax error" in out["bad"]
    assert ("migrations/002_index.sql:1: error [duplicate-version] duplicate version 2: "
            "also used by migrations/002_again.sql") in out["bad"]
    assert out["bad"].count("Failed") == 2
