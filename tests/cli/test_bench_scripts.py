"""The benchmark scripts keep working against the library they measure.

They are not run by the suite (docs/benchmarks.md), so a renamed module or a changed signature
would go unseen until someone needs a figure: every name they import from the runner must exist,
and the cheapest one that drives the library directly runs end to end.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ADMIN_URL, ROOT

BENCH = ROOT / "bench"
SCRIPTS = sorted(BENCH.glob("*.py"))


def _runner_imports(path: Path) -> list[tuple[int, str, str | None]]:
    """(line, module, name) for every import of the runner's packages, at any depth of the file."""
    found: list[tuple[int, str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] in ("runner", "compat"):
                found += [(node.lineno, node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, None) for alias in node.names
                      if alias.name.split(".")[0] in ("runner", "compat")]
    return found


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_runner_name_a_bench_script_imports_exists(script: Path) -> None:
    missing = []
    for line, module, name in _runner_imports(script):
        try:
            imported = importlib.import_module(module)
        except ImportError as err:
            missing.append(f"{script.name}:{line}: {module} ({err})")
            continue
        if name is not None and not hasattr(imported, name):
            try:
                importlib.import_module(f"{module}.{name}")
            except ImportError:
                missing.append(f"{script.name}:{line}: {module} has no {name}")
    assert not missing, missing


def test_the_runner_imports_are_found_at_all() -> None:
    # the check above is not vacuous: the scripts do import the runner, also inside functions
    names = {(module, name) for script in SCRIPTS for _, module, name in _runner_imports(script)}
    assert ("compat", "lifecycle") in names and ("runner.snapshot", "take_snapshot") in names


def test_snapshot_cost_runs_against_the_library() -> None:
    proc = subprocess.run([sys.executable, str(BENCH / "snapshot_cost.py"), "--count", "3", "--repeat", "1",
                           "--url", ADMIN_URL], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == "full snapshot of the schema (one call)"
    assert [line.split()[0] for line in lines[2:6]] == ["0", "10", "100", "1000"]
    assert any(line.startswith("SnapshotHook(every=True)") for line in lines)
