"""`shims drop` uses pg_stat_statements as further evidence of lagging consumers, when installed.

The shared server does not preload pg_stat_statements, so this runs on a private throwaway
cluster started with it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import psycopg
import pytest

from helpers import new_private_cluster
from reliability.harness import db_args, run

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.private_cluster
def test_shims_drop_reports_statements_that_used_the_shim(tmp_path: Path) -> None:
    migrations = tmp_path / "migrations"
    shutil.copytree(ROOT / "migrations", migrations)
    with new_private_cluster("-c shared_preload_libraries=pg_stat_statements") as cluster:
        url = cluster.admin_url(cluster.create_database())
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pg_stat_statements")
        assert run(*db_args(url, migrations, "up")).returncode == 0
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SELECT pg_stat_statements_reset()")  # count only what consumers do from now on
        # A lagging consumer reads through the shim, then disconnects (so no lock is left on the view).
        with psycopg.connect(url, autocommit=True, options="-c search_path=compat_017,public") as old:
            for _ in range(3):
                old.execute("SELECT workflow_id, execution_bundle FROM remediation_workflow_catalog").fetchall()
        result = run(*db_args(url, migrations, "shims", "drop", "compat_017.remediation_workflow_catalog",
                              "--reason", "test"))
        assert result.returncode == 0, result.describe()
        output = result.stdout + result.stderr
        assert "pg_stat_statements: 1 statement(s) mentioning execution_bundle, 3 call(s)" in output, output
