"""Splitting a file is linear in its size (issue 10, item 20); speed itself: bench/bench_split.py."""

from __future__ import annotations

from runner.sqlfile import split_statements


class _Scanned(str):
    """A str that adds up how many characters ``count`` and ``find`` look at."""

    scanned = 0

    def count(self, sub, start=None, end=None):  # type: ignore[override]
        _Scanned.scanned += (len(self) if end is None else end) - (start or 0)
        return str.count(self, sub, start, end)

    def find(self, sub, start=None, end=None):  # type: ignore[override]
        found = str.find(self, sub, start, end)
        _Scanned.scanned += (found if found >= 0 else len(self)) - (start or 0) + len(sub)
        return found


def _seed(n: int) -> str:
    return "".join(f"INSERT INTO seed (id, name) VALUES ({i}, 'name {i}');\n" for i in range(n))


def test_line_numbers_are_counted_once_per_character_not_once_per_statement(monkeypatch) -> None:
    import pglast.parser

    real = pglast.parser.split
    monkeypatch.setattr(pglast.parser, "split", lambda text, **kw: real(str(text), **kw))  # pglast wants a str
    text = _Scanned(_seed(5000))
    _Scanned.scanned = 0
    statements = split_statements(text)
    assert len(statements) == 5000 and statements[-1].line == 5000
    # The old splitter counted newlines from the start of the file for each statement (~n²/2 chars).
    assert _Scanned.scanned <= 3 * len(text), _Scanned.scanned


def test_line_numbers_with_comments_blank_lines_and_multi_line_statements() -> None:
    text = ("-- header\n\nCREATE TABLE a (\n  id int\n);\n\n/* block */\n-- note\nINSERT INTO a VALUES (1);"
            "  INSERT INTO a VALUES (2);\n\n\nDO $$\nBEGIN\n  PERFORM 1;\nEND $$;\n")
    assert [(s.line, s.sql.split()[0]) for s in split_statements(text, first_line=10)] == [
        (12, "CREATE"), (18, "INSERT"), (18, "INSERT"), (21, "DO")]


def test_line_numbers_of_the_sqlparse_fallback() -> None:
    text = ("CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT);\n\n"
            "CREATE TRIGGER trg AFTER INSERT ON t BEGIN\n  UPDATE t SET id = id;\nEND;\n"
            "INSERT INTO t VALUES (1);\n")
    statements = split_statements(text)
    assert [s.line for s in statements] == [1, 3, 6] and not any(s.exact for s in statements)
