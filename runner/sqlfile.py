"""Split SQL text into statements with line numbers; read header directives.

Statement splitting is sqlparse's (as in yoyo): it understands quotes,
``$$``/``$tag$`` bodies and ``DO`` blocks. Directives are full-line comments
``-- name: value`` before the first statement, for the names in DIRECTIVES.
"""

from __future__ import annotations

import re

from runner.migration import Directive, Statement

DIRECTIVES = ("depends", "transactional", "compat", "lint")
_DIRECTIVE = re.compile(r"^\s*--\s*(%s)\s*:\s*(.*?)\s*$" % "|".join(DIRECTIVES), re.IGNORECASE)
_COMMENT_OR_BLANK = re.compile(r"^\s*(--.*)?$")


# sqlparse ends a statement only at a ";" token or at a GO keyword: any "go" in the text,
# even inside a word, sends it to sqlparse (its lexer splits "1e5GO" into a number and GO).
_GO = re.compile(r"go", re.IGNORECASE)


def _split(text: str) -> list[str]:
    """``sqlparse.split(text)``, without sqlparse when the answer is certain.

    When the only ";" is the last non-blank character (or there is none) and no "GO"
    appears, there is nothing to split: sqlparse returns the whole text stripped (or
    nothing if it is blank). That is the common one-statement file, and sqlparse is by
    far the slowest part of loading a folder of them.
    """
    semicolons = text.count(";")
    if (semicolons == 0 or (semicolons == 1 and text.rstrip().endswith(";"))) and not _GO.search(text):
        stripped = text.strip()
        return [stripped] if stripped else []
    import sqlparse

    return sqlparse.split(text)


def split_statements(text: str, first_line: int = 1) -> list[Statement]:
    """Statements of ``text``; ``first_line`` is the file line ``text`` starts on."""
    statements: list[Statement] = []
    position = 0
    for chunk in _split(text):
        if not chunk.strip():
            continue
        index = text.find(chunk, position)
        if index < 0:  # sqlparse normalised something; fall back to the last position
            index = position
        position = index + len(chunk)
        lines = chunk.split("\n")
        skip = 0
        while skip < len(lines) and _COMMENT_OR_BLANK.match(lines[skip]):
            skip += 1
        if skip == len(lines):
            continue  # only comments
        line = first_line + text.count("\n", 0, index) + skip
        statements.append(Statement(sql=chunk, line=line))
    return statements


def header_directives(text: str) -> list[Directive]:
    """Directives in the leading comment block of ``text``."""
    found: list[Directive] = []
    for number, line in enumerate(text.split("\n"), 1):
        if not _COMMENT_OR_BLANK.match(line):
            break
        match = _DIRECTIVE.match(line)
        if match:
            found.append(Directive(match.group(1).lower(), match.group(2), number))
    return found
