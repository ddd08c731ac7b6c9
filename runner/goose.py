"""Parse goose-format SQL migrations.

Annotations: ``-- +goose Up``, ``-- +goose Down``, ``-- +goose StatementBegin``
/ ``StatementEnd`` (the lines between are one statement, as written), and
``-- +goose NO TRANSACTION``. Outside StatementBegin/End blocks statements are
split like any other SQL file, so ``$$`` bodies and ``DO`` blocks work there too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from runner.errors import MigrationFileError
from runner.migration import Statement
from runner.sqlfile import split_statements

_ANNOTATION = re.compile(r"^\s*--\s*\+goose\s+(.*?)\s*$", re.IGNORECASE)
_CODE = re.compile(r"^\s*(--.*)?$")


def is_goose(text: str) -> bool:
    return any(_ANNOTATION.match(line) for line in text.split("\n"))


@dataclass
class GooseMigration:
    up: list[Statement] = field(default_factory=list)
    down: list[Statement] = field(default_factory=list)
    transactional: bool = True


def parse_goose(text: str, path: str) -> GooseMigration:
    """Parse goose SQL; raises MigrationFileError with the offending line."""
    result = GooseMigration()
    section: str | None = None
    seen: dict[str, int] = {}
    block_start: int | None = None
    block_lines: list[str] = []
    chunk_start = 1
    chunk_lines: list[str] = []

    def flush_chunk() -> None:
        if section and chunk_lines:
            getattr(result, section).extend(split_statements("\n".join(chunk_lines), chunk_start))
        chunk_lines.clear()

    for number, line in enumerate(text.split("\n"), 1):
        match = _ANNOTATION.match(line)
        if not match:
            if block_start is not None:
                block_lines.append(line)
            elif section is None:
                if not _CODE.match(line):
                    raise MigrationFileError(path, "SQL before '-- +goose Up'", number)
            else:
                if not chunk_lines:
                    chunk_start = number
                chunk_lines.append(line)
            continue
        word = match.group(1).strip()
        key = word.lower()
        if key in ("up", "down"):
            if block_start is not None:
                raise MigrationFileError(path, f"'-- +goose {word}' inside the StatementBegin block opened at line {block_start}", number)
            if key in seen:
                raise MigrationFileError(path, f"second '-- +goose {word}' (first at line {seen[key]})", number)
            flush_chunk()
            seen[key] = number
            section = key
        elif key == "statementbegin":
            if section is None:
                raise MigrationFileError(path, "StatementBegin before '-- +goose Up'", number)
            if block_start is not None:
                raise MigrationFileError(path, f"StatementBegin inside the block opened at line {block_start} (missing StatementEnd)", number)
            flush_chunk()
            block_start = number + 1
            block_lines = []
        elif key == "statementend":
            if block_start is None:
                raise MigrationFileError(path, "StatementEnd without a StatementBegin", number)
            body = "\n".join(block_lines).strip()
            if body:
                offset = next(i for i, l in enumerate(block_lines) if l.strip())
                getattr(result, section or "up").append(Statement(body, block_start + offset, exact=False))
            block_start = None
        elif key in ("no transaction", "notransaction"):
            result.transactional = False
        elif key.startswith("envsub"):
            raise MigrationFileError(path, "'-- +goose ENVSUB' is not supported", number)
        else:
            raise MigrationFileError(path, f"unknown goose annotation '{word}'", number)
    if block_start is not None:
        raise MigrationFileError(path, "StatementBegin has no matching StatementEnd", block_start - 1)
    flush_chunk()
    if "up" not in seen:
        raise MigrationFileError(path, "goose migration has no '-- +goose Up' section", 1)
    return result
