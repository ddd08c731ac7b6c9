"""The statement splitter: PostgreSQL's lexical rules, and a fast path that cannot change the answer."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from runner.sqlfile import _split, split_statements

# Pieces that matter to a splitter: quotes, dollar quotes, comments, blocks, odd whitespace.
PIECES = ["CREATE TABLE t (id int)", ";", "'", '"', "$$", "$f$", "--", "/*", "*/", "\n", " ", "\t",
          "BEGIN", "END", "DO", "x", "1", "$", "E'", "\\", "\u00a0", "ü", ";\n", "SELECT 1"]


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=12).map("".join))
def test_fast_path_only_for_texts_with_at_most_one_statement(text: str) -> None:
    from pglast.parser import ParseError, split

    chunks, _ = _split(text)
    if text.count(";") <= 1 and (";" not in text or text.rstrip().endswith(";")):
        assert len(chunks) <= 1
        try:
            assert len(split(text, with_parser=True)) <= 1
        except ParseError:
            pass


def test_postgresql_lexical_rules() -> None:
    text = ("INSERT INTO p SELECT 'C:\\';\nINSERT INTO p SELECT 'a;b';\n"
            "SELECT 1 /* a /* b */ ; DROP TABLE important; */;\n"
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END;\n"
            "DO $$ BEGIN PERFORM 1; END $$;\n-- trailing comment\n")
    statements = split_statements(text)
    assert [s.line for s in statements] == [1, 2, 3, 4, 5]
    assert statements[0].sql == "INSERT INTO p SELECT 'C:\\';"
    assert "DROP TABLE important" in statements[2].sql  # inside the nested comment
    assert statements[3].sql.endswith("END;")


def test_sqlite_only_syntax_falls_back_to_sqlparse() -> None:
    text = ("CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT);\n"
            "CREATE TRIGGER trg AFTER INSERT ON t BEGIN UPDATE t SET id = id; END;\n")
    statements = split_statements(text)
    assert len(statements) == 2 and statements[1].sql.startswith("CREATE TRIGGER")
    assert not any(s.exact for s in statements)  # not certainly one statement each
    assert all(s.exact for s in split_statements("CREATE TABLE a (id int);\nCREATE TABLE b (id int);"))
