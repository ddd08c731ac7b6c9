"""`migrate verify` is also the gate for forgotten compatibility shims."""

from __future__ import annotations

from pathlib import Path

from helpers import expire_shims, run_migrate


def test_verify_fails_on_an_expired_shim(pg_url: str, example_migrations: Path) -> None:
    args = ("--database", pg_url, "--migrations", str(example_migrations))
    assert run_migrate("up", *args).returncode == 0
    assert run_migrate("verify", *args).returncode == 0
    assert expire_shims(pg_url) == 1
    result = run_migrate("verify", *args)
    assert result.returncode == 1
    assert "past expiry" in result.stderr and "migrate shims drop --expired" in result.stderr
    assert run_migrate("shims", "drop", "--expired", *args).returncode == 0
    assert run_migrate("verify", *args).returncode == 0
