"""The statement splitter's fast path (no sqlparse for one-statement files) must agree with sqlparse."""

from __future__ import annotations

import sqlparse
from hypothesis import given, settings
from hypothesis import strategies as st

from runner.sqlfile import _split, split_statements

# Pieces that matter to sqlparse's splitter: quotes, dollar quotes, comments, blocks, GO, odd whitespace.
PIECES = ["CREATE TABLE t (id int)", ";", "'", '"', "$$", "$f$", "--", "/*", "*/", "\n", " ", "\t", "\r\n",
          "BEGIN", "END", "DO", "IF", "CASE", "DECLARE", "LOOP", "go", "GO", "GO 2", "1e5", "category", "(", ")",
          "x", "_", "1", "$", "#", "E'", "\\", "\u00a0", "ü", ";\n", "  \n"]


def _non_blank(chunks: list[str]) -> list[str]:
    return [c for c in chunks if c.strip()]


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=12).map("".join))
def test_fast_path_splits_like_sqlparse(text: str) -> None:
    assert _non_blank(_split(text)) == _non_blank(sqlparse.split(text))


def test_fast_path_is_taken_for_one_statement_files_only(monkeypatch) -> None:
    calls: list[str] = []
    real = sqlparse.split
    monkeypatch.setattr(sqlparse, "split", lambda text, *a, **k: calls.append(text) or real(text, *a, **k))
    one = "-- header\nCREATE TABLE t1 (id int);\n"
    assert [(s.sql, s.line) for s in split_statements(one)] == [("-- header\nCREATE TABLE t1 (id int);", 2)]
    assert calls == []
    two = "CREATE TABLE a (id int);\nCREATE TABLE b (id int);\n"
    assert [s.sql for s in split_statements(two)] == ["CREATE TABLE a (id int);", "CREATE TABLE b (id int);"]
    assert calls == [two]
    go = "SELECT 1\nGO\nSELECT 2"
    assert [s.sql for s in split_statements(go)] == ["SELECT 1\nGO", "SELECT 2"]
    assert calls == [two, go]
