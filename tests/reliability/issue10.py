"""Plumbing shared by the issue-10 regression tests (test_rel_trust, test_rel_races, test_rel_refusals).

Everything goes through the CLI (:func:`cli`, a subprocess) and the catalog. Catalog reads use
:func:`safe` connections (``search_path=pg_catalog``), so that the tests' own SQL never resolves an
object an attacker planted.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
from psycopg import sql

from helpers import ADMIN_URL, EXAMPLE_MIGRATIONS
from reliability import harness
from reliability.harness import db_args, run

LOCK_CLASS = 0x6D677274  # 1835496052, "mgrt": the runner's advisory lock class (the brief's decimal 1835495028 is a typo)
RUNNER_ROLE = urlsplit(ADMIN_URL).username or "postgres"
M001 = "001_create_remediation_workflow_catalog"
M017 = "017_add_execution_bundle"
M018 = "018_rename_execution_bundle_to_container_image"
CONTRACT_017 = harness.ROOT / "contracts" / "workflow-api-017.toml"


def safe(url: str) -> psycopg.Connection:
    """An autocommit connection that resolves nothing outside pg_catalog (planted traps stay unfired)."""
    return psycopg.connect(url, autocommit=True, options="-c search_path=pg_catalog")


def one(url: str, query: str, params: tuple = ()) -> object:
    with safe(url) as conn:
        row = conn.execute(query, params).fetchone()
    return row[0] if row else None


def all_rows(url: str, query: str, params: tuple = ()) -> list[tuple]:
    with safe(url) as conn:
        return conn.execute(query, params).fetchall()


def is_superuser(role: str) -> bool:
    return bool(one(ADMIN_URL, "SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = %s", (role,)))


def history(url: str, schema: str = "public") -> list[str]:
    with safe(url) as conn:
        table = conn.execute("SELECT pg_catalog.to_regclass(%s)",
                             (sql.Identifier(schema, "_migrate_history").as_string(conn),)).fetchone()[0]
        if table is None:
            return []
        return [r[0] for r in conn.execute(
            sql.SQL("SELECT migration_id FROM {} ORDER BY migration_id").format(sql.Identifier(schema, "_migrate_history")))]


def schema_objects(url: str, schema: str) -> set[tuple[str, str, str, str]]:
    """(kind, name, owner, definition) of every relation and function in ``schema``."""
    return set(all_rows(url, """
        SELECT c.relkind::text, c.relname::text, pg_catalog.pg_get_userbyid(c.relowner)::text,
               COALESCE(pg_catalog.pg_get_viewdef(c.oid), '')
        FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s
        UNION ALL
        SELECT 'function', p.proname::text, pg_catalog.pg_get_userbyid(p.proowner)::text, p.prosrc
        FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = %s
    """, (schema, schema)))


def role_settings(url: str, role: str) -> list[str] | None:
    """The role's stored settings for this database (pg_db_role_setting.setconfig), or None."""
    return one(url, "SELECT s.setconfig FROM pg_catalog.pg_db_role_setting s "
                    "JOIN pg_catalog.pg_roles r ON r.oid = s.setrole "
                    "JOIN pg_catalog.pg_database d ON d.oid = s.setdatabase "
                    "WHERE r.rolname = %s AND d.datname = pg_catalog.current_database()", (role,))


def examples(folder: Path, *ids: str) -> Path:
    """Copy the example migrations (only ``ids`` when given) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in EXAMPLE_MIGRATIONS.iterdir():
        if not ids or any(path.name.startswith(i + ".") for i in ids):
            shutil.copy(path, folder / path.name)
    return folder


def cli(url: str, folder: Path, *args: str, env: dict[str, str] | None = None) -> harness.Result:
    return run(*db_args(url, folder, *args), env=env)


def ok(result: harness.Result, code: int = 0) -> harness.Result:
    assert result.returncode == code, result.describe()
    return result


def findings(result: harness.Result) -> list[dict]:
    data = json.loads(result.stdout)
    return data if isinstance(data, list) else data.get("findings", [])


def grant(url: str, statement: str, *identifiers: str) -> None:
    with safe(url) as conn:
        conn.execute(sql.SQL(statement).format(*(sql.Identifier(i) for i in identifiers)))
