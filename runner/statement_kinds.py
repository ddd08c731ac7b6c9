"""What a SQL statement can do, from its text (placeholder until the parse-tree version lands)."""

from __future__ import annotations

import re

_SCHEMA_STATEMENT = re.compile(
    r"^(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*(CREATE|ALTER|COMMENT|GRANT|REVOKE|DROP)\b", re.IGNORECASE | re.DOTALL)


def effect_free(sql: str) -> bool:
    """Whether ``sql`` can have no effect outside its transaction."""
    return bool(_SCHEMA_STATEMENT.match(sql))
