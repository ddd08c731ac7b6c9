"""``migrate check-files FILE...``: migration files checked without a database (a pre-commit hook).

Each given file is read and parsed as ``migrate up`` would (encoding, statements, goose markers,
Python steps, ``-- transactional:``, ``-- compat:`` and ``-- lint:`` directives), and its folder is
scanned by file name for a second migration with the same version or id and for ``depends`` on a
migration that does not exist. Unlike the runner, which stops at the first bad file, every problem
is reported, each with its file and line. Rollback files (``X.rollback.sql``) are checked as part
of ``X``; post-apply hooks are parsed but have no version.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compat.declarations import declarations_from
from runner.errors import MigrateError, MigrationFileError
from runner.lint import LintFinding, LintReport, check_lint_directives
from runner.migration import MigrationFile, POST_APPLY
from runner.sources import read_migration, read_text

RULES: dict[str, str] = {
    "invalid-file": "a migration file the runner cannot read or parse, or a malformed directive",
    "duplicate-version": "two migrations in one folder with the same version number",
    "duplicate-id": "two migrations in one folder with the same id (file name without extension)",
    "unknown-depends": "a depends directive naming a migration that does not exist",
}

_VERSION = re.compile(r"^(\d+)")
_ROLLBACK = ".rollback.sql"


class FileCheckReport(LintReport):
    """Findings of ``check-files``; ``linted`` lists the files checked."""

    def as_text(self) -> str:
        lines = [f.as_text() for f in self.findings]
        noun = "file" if len(self.linted) == 1 else "files"
        lines.append(f"{len(self.linted)} migration {noun} checked: {len(self.errors)} problem(s)")
        return "\n".join(lines)


@dataclass(frozen=True)
class _Entry:
    """A migration of a folder, known from its file name."""

    id: str
    path: str
    version: int | None


def _folder_entries(folder: str) -> list[_Entry]:
    """The migrations of ``folder`` by name (as runner.sources lists them), without reading them."""
    entries = []
    try:
        names = sorted(os.listdir(folder or "."))
    except OSError:
        return []
    for name in names:
        if name.startswith((".", "_", POST_APPLY)) or name.endswith(_ROLLBACK):
            continue
        if not name.endswith((".sql", ".py")):
            continue
        match = _VERSION.match(name)
        entries.append(_Entry(name.rsplit(".", 1)[0], os.path.join(folder, name),
                              int(match.group(1)) if match else None))
    return entries


def file_error(err: MigrationFileError) -> LintFinding:
    """A MigrationFileError as an ``invalid-file`` finding."""
    return _finding(err.path, err.line, "invalid-file", _reason(err, err.path), _FIX)


def _finding(path: str, line: int | None, rule: str, message: str, fix: str) -> LintFinding:
    return LintFinding(path, line or 1, rule, "error", message, fix)


def _check_directives(migration: MigrationFile, renames: Sequence[dict[str, Any]]) -> None:
    """Raise MigrationFileError for a malformed ``-- compat:`` or ``-- lint:`` directive."""
    declarations_from(migration, renames)
    if migration.format != "python":
        text = Path(migration.path).read_text(encoding="utf-8-sig")
        check_lint_directives(migration, text)


def check_files(paths: Iterable[str], renames: Sequence[dict[str, Any]] = ()) -> FileCheckReport:
    """Check the given migration files and their folders; every problem is a finding."""
    report = FileCheckReport()
    given: dict[str, list[str]] = {}  # folder -> paths given in it
    read: dict[str, MigrationFile] = {}
    for raw in paths:
        path = str(raw)
        name = os.path.basename(path)
        folder = os.path.dirname(path)
        if name.endswith(_ROLLBACK):
            try:
                read_text(path)
            except MigrationFileError as err:
                report.findings.append(_finding(path, err.line, "invalid-file", _reason(err, path), _FIX))
            report.linted.append(name)
            continue
        if not name.endswith((".sql", ".py")):
            report.findings.append(_finding(path, None, "invalid-file",
                                            "not a migration file name (expected .sql or .py)",
                                            "rename it, or exclude it from the hook's files"))
            continue
        report.linted.append(name)
        try:
            migration = read_migration(path)
            _check_directives(migration, renames)
        except MigrationFileError as err:
            report.findings.append(file_error(err))
            continue
        except MigrateError as err:
            report.findings.append(_finding(path, None, "invalid-file", str(err), _FIX))
            continue
        if not name.startswith(POST_APPLY):
            read[path] = migration
            given.setdefault(folder, []).append(path)
    for folder, mine in given.items():
        report.findings.extend(_folder_findings(folder, mine, read))
    report.findings.sort(key=lambda f: (f.file, f.line, f.rule))
    return report


_FIX = "correct the file; `migrate up` refuses it as it is (exit 2)"


def _reason(err: MigrationFileError, path: str) -> str:
    """The error's text without the ``path:line:`` prefix the finding carries already."""
    text = str(err)
    prefix = f"{path}:{err.line}: " if err.line else f"{path}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def _folder_findings(folder: str, mine: list[str], read: dict[str, MigrationFile]) -> list[LintFinding]:
    entries = _folder_entries(folder)
    found: list[LintFinding] = []
    ids = {e.id for e in entries}
    for path in mine:
        migration = read[path]
        others = [e for e in entries if not _same(e.path, path)]
        for other in others:
            if other.id == migration.id:
                found.append(_finding(path, None, "duplicate-id", f"same migration id as {other.path}",
                                      "rename one of the two files"))
            elif migration.version is not None and other.version == migration.version:
                found.append(_finding(path, None, "duplicate-version",
                                      f"duplicate version {migration.version}: also used by {other.path}",
                                      "give the newer migration the next free version number"))
        line = next((d.line for d in migration.directives_named("depends")), None)
        for dep in migration.depends:
            if dep not in ids:
                found.append(_finding(path, line, "unknown-depends", f"depends on unknown migration '{dep}'",
                                      f"name an existing migration id (a file name in {folder or '.'} "
                                      "without its extension)"))
    return found


def _same(a: str, b: str) -> bool:
    return os.path.abspath(a) == os.path.abspath(b)
