"""Split SQL text into statements with line numbers; read header directives.

Statements are split by PostgreSQL's own grammar (pglast's ``split``), so
quoting rules are PostgreSQL's: standard strings where a backslash is not an
escape, ``E'...'`` strings, nested ``/* */`` comments, ``$tag$`` bodies, ``DO``
blocks and ``BEGIN ATOMIC`` function bodies. A file PostgreSQL cannot parse
(SQLite-only syntax, or a syntax error that will fail at execution anyway) is
split by sqlparse, as yoyo does. Directives are full-line comments
``-- name: value`` before the first statement, for the names in DIRECTIVES.
"""

from __future__ import annotations

import re

from runner.migration import Directive, Statement

DIRECTIVES = ("depends", "transactional", "compat", "lint")
# ASCII: under Unicode case folding "tranſactional" would match and then name no directive.
_DIRECTIVE = re.compile(r"^\s*--\s*(%s)\s*:\s*(.*?)\s*$" % "|".join(DIRECTIVES), re.IGNORECASE | re.ASCII)
_COMMENT_OR_BLANK = re.compile(r"^\s*(--.*)?$")
_COMMENT_WORD = re.compile(r"^\s*--\s*(\w[\w-]*)\s*:")


def _split(text: str) -> tuple[list[tuple[int, str]], bool]:
    """The statements of ``text``, each as written (with its final ``;``) with its character offset
    in ``text``, and whether PostgreSQL's grammar split them."""
    semicolons = text.count(";")
    if semicolons == 0 or (semicolons == 1 and text.rstrip().endswith(";")):
        # Nothing to split (the common one-statement file): no parser needed.
        stripped = text.strip()
        return ([(text.index(stripped), stripped)] if stripped else []), True
    from pglast.parser import ParseError, split

    try:
        parts = split(text, with_parser=True, only_slices=True)  # character offsets, without the ";"
    except ParseError:
        import sqlparse

        located = []
        position = 0
        for chunk in sqlparse.split(text):
            index = text.find(chunk, position)
            if index < 0:  # the splitter normalised something; fall back to the last position
                index = position
            position = index + len(chunk)
            located.append((index, chunk))
        return located, False
    return [(part.start, text[part.start:part.stop + (text[part.stop:part.stop + 1] == ";")]) for part in parts], True


def split_statements(text: str, first_line: int = 1) -> list[Statement]:
    """Statements of ``text``; ``first_line`` is the file line ``text`` starts on.

    Linear in the size of ``text``: line numbers are counted from one statement to the next, never
    from the start of the text again (bench/bench_split.py)."""
    statements: list[Statement] = []
    chunks, exact = _split(text)
    counted = 0  # newlines of text[:counted] are in ``line``
    line = first_line
    for index, chunk in chunks:
        if not chunk.strip():
            continue
        lines = chunk.split("\n")
        skip = 0
        while skip < len(lines) and _COMMENT_OR_BLANK.match(lines[skip]):
            skip += 1
        if skip == len(lines):
            continue  # only comments
        if index >= counted:
            line += text.count("\n", counted, index)
        else:  # (sqlparse fallback only) a chunk starting before the last one ended
            line -= text.count("\n", index, counted)
        counted = index
        statements.append(Statement(sql=chunk, line=line + skip, exact=exact))
    return statements


def read_header(text: str) -> tuple[list[Directive], list[tuple[str, int]]]:
    """Directives in the leading comment block of ``text``, and the other comments there shaped
    like one (``-- word: ...``), as (word, line): a misspelt directive (runner.preflight)."""
    found: list[Directive] = []
    others: list[tuple[str, int]] = []
    for number, line in enumerate(text.split("\n"), 1):
        if not _COMMENT_OR_BLANK.match(line):
            break
        match = _DIRECTIVE.match(line)
        if match:
            found.append(Directive(match.group(1).lower(), match.group(2), number))
        elif match := _COMMENT_WORD.match(line):
            others.append((match.group(1), number))
    return found, others


def leading_comment_lines(sql: str) -> int:
    """How many lines of blanks and `--` comments ``sql`` starts with."""
    count = 0
    for line in sql.split("\n"):
        if not _COMMENT_OR_BLANK.match(line):
            break
        count += 1
    return count


def skip_comments(sql: str, offset: int) -> int:
    """The offset of the first character at or after ``offset`` that is not blank or a comment."""
    while offset < len(sql):
        if sql[offset].isspace():
            offset += 1
        elif sql.startswith("--", offset):
            end = sql.find("\n", offset)
            offset = len(sql) if end < 0 else end + 1
        elif sql.startswith("/*", offset):
            end = sql.find("*/", offset + 2)
            offset = len(sql) if end < 0 else end + 2
        else:
            break
    return offset
