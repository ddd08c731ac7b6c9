"""Quoting what the runner puts in its own SQL: identifiers, and DO blocks' bodies."""

from __future__ import annotations

import pytest

from runner.db import dollar_quote, quote_identifier


def test_an_identifier_is_double_quoted_and_a_nul_refused() -> None:
    assert quote_identifier('we"ird $name%') == '"we""ird $name%"'
    with pytest.raises(ValueError):
        quote_identifier("a\x00b")


@pytest.mark.parametrize("body, quoted", [
    (" BEGIN NULL; END ", "$t$ BEGIN NULL; END $t$"),
    (' FROM "a$t$b".x ', '$t1$ FROM "a$t$b".x $t1$'),
    (' FROM "a$t$b$t1$".x ', '$t2$ FROM "a$t$b$t1$".x $t2$'),
])
def test_a_dollar_quote_tag_never_occurs_in_its_body(body: str, quoted: str) -> None:
    assert dollar_quote(body, "t") == quoted
