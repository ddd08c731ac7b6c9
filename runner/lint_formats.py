"""Lint findings for CI: SARIF 2.1.0 (code scanning) and GitHub workflow-command annotations.

``migrate lint --format sarif`` and ``--format github`` (also ``migrate check-files``) render a
:class:`runner.lint.LintReport` here. Paths become relative to the repository root (the
``GITHUB_WORKSPACE`` of a workflow, else the nearest folder above the working directory holding
``.git``), which is what GitHub expects of a SARIF ``uri`` with ``uriBaseId: SRCROOT`` and of an
annotation's ``file=``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import quote

from runner.filecheck import RULES as FILE_RULES
from runner.lint import LintFinding, LintReport, RULES as LINT_RULES

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
SRCROOT = "SRCROOT"
FORMATS = ("sarif", "github")
# The page of the manual that explains a rule: lint rules in diagnosis.md, file checks in ci.md.
_LINT_PAGE = "diagnosis.md#lint-migrations-before-they-run"
_FILES_PAGE = "ci.md#check-migration-files"


@dataclass(frozen=True)
class Rule:
    """One rule as SARIF's ``reportingDescriptor`` describes it."""

    id: str
    description: str
    page: str  # docs page and anchor, relative to the docs folder


def catalog() -> list[Rule]:
    """Every rule ``lint`` and ``check-files`` can report, in a stable order."""
    return ([Rule(rid, text, _LINT_PAGE) for rid, text in LINT_RULES.items()]
            + [Rule(rid, text, _FILES_PAGE) for rid, text in FILE_RULES.items()])


def docs_url() -> str | None:
    """The published manual (the distribution's ``Project-URL: Documentation``), if it declares one."""
    try:
        urls = metadata.metadata("migrate-runner").get_all("Project-URL") or []
    except metadata.PackageNotFoundError:
        return None
    for entry in urls:
        label, _, url = entry.partition(",")
        if label.strip().lower() == "documentation" and url.strip():
            return url.strip().rstrip("/")
    return None


def _version() -> str:
    try:
        return metadata.version("migrate-runner")
    except metadata.PackageNotFoundError:
        return "0"


def find_root(start: Path | None = None, env: Mapping[str, str] | None = None) -> Path:
    """The repository root paths are reported against."""
    env = os.environ if env is None else env
    if env.get("GITHUB_WORKSPACE"):
        return Path(env["GITHUB_WORKSPACE"]).resolve()
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / ".git").exists():
            return folder
    return here


def relative_path(path: str, root: Path) -> str | None:
    """``path`` relative to ``root`` with forward slashes, or None when it lies outside."""
    try:
        return Path(path).resolve().relative_to(root).as_posix()
    except ValueError:
        return None


class _Columns:
    """The column a finding's statement starts at: the first non-blank character of its line."""

    def __init__(self) -> None:
        self._lines: dict[str, list[str]] = {}

    def __call__(self, path: str, line: int) -> int:
        if path not in self._lines:
            try:
                self._lines[path] = Path(path).read_text(encoding="utf-8-sig", errors="replace").split("\n")
            except OSError:
                self._lines[path] = []
        lines = self._lines[path]
        if not 1 <= line <= len(lines):
            return 1
        text = lines[line - 1]
        return len(text) - len(text.lstrip()) + 1 if text.strip() else 1


# --------------------------------------------------------------------------- SARIF 2.1.0
def to_sarif(report: LintReport, root: Path, docs: str | None = None) -> dict[str, Any]:
    """The report as one SARIF 2.1.0 log with one run.

    ``docs``: base URL of the manual for each rule's ``helpUri`` (default: :func:`docs_url`; no
    ``helpUri`` when neither is known: SARIF wants an absolute URI there).
    """
    root = root.resolve()
    docs = docs if docs is not None else docs_url()
    rules = catalog()
    index = {rule.id: i for i, rule in enumerate(rules)}
    column = _Columns()
    results = []
    for finding in report.findings:
        result: dict[str, Any] = {
            "ruleId": finding.rule,
            "level": "error" if finding.severity == "error" else "warning",
            "message": {"text": f"{finding.message}. Fix: {finding.fix}" if finding.fix else finding.message},
            "locations": [{"physicalLocation": {
                "artifactLocation": _artifact(finding.file, root),
                "region": {"startLine": max(finding.line, 1), "startColumn": column(finding.file, finding.line)},
            }}],
        }
        if finding.rule in index:
            result["ruleIndex"] = index[finding.rule]
        results.append(result)
    notes = [{"level": "note", "message": {"text": f"{mid}: not linted (Python migration)"}}
             for mid in report.skipped]
    run: dict[str, Any] = {
        "tool": {"driver": {
            "name": "migrate",
            "semanticVersion": _version(),
            "rules": [_descriptor(rule, docs) for rule in rules],
        }},
        "originalUriBaseIds": {SRCROOT: {"uri": root.as_uri() + "/"}},
        "invocations": [{"executionSuccessful": True, "toolExecutionNotifications": notes}],
        "columnKind": "unicodeCodePoints",
        "results": results,
    }
    return {"$schema": SARIF_SCHEMA, "version": "2.1.0", "runs": [run]}


def _descriptor(rule: Rule, docs: str | None) -> dict[str, Any]:
    text = rule.description[:1].upper() + rule.description[1:]
    descriptor: dict[str, Any] = {
        "id": rule.id,
        "name": "".join(part.capitalize() for part in rule.id.split("-")),
        "shortDescription": {"text": text},
        "help": {"text": f"{text}. See docs/{rule.page.replace('#', ' (section ')}) in the migrate manual."},
        "defaultConfiguration": {"level": "error"},
    }
    if docs:
        descriptor["helpUri"] = f"{docs}/{rule.page}"
    return descriptor


def _artifact(path: str, root: Path) -> dict[str, Any]:
    relative = relative_path(path, root)
    if relative is None:
        return {"uri": Path(path).resolve().as_uri()}
    return {"uri": quote(relative), "uriBaseId": SRCROOT}


# --------------------------------------------------------------------------- GitHub annotations
def escape_data(text: str) -> str:
    """A workflow command's message, escaped as GitHub's runner unescapes it."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """A workflow command's property value (``file=``, ``title=``): also ``:`` and ``,``."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def annotation(finding: LintFinding, root: Path, column: int) -> str:
    """``::error file=...,line=...,col=...,title=...::message`` for one finding."""
    command = "error" if finding.severity == "error" else "warning"
    path = relative_path(finding.file, root) or finding.file
    props = {"file": path, "line": str(max(finding.line, 1)), "col": str(column),
             "title": f"migrate: {finding.rule}"}
    joined = ",".join(f"{key}={escape_property(value)}" for key, value in props.items())
    message = f"{finding.message}\nfix: {finding.fix}" if finding.fix else finding.message
    return f"::{command} {joined}::{escape_data(message)}"


def to_github(report: LintReport, root: Path) -> str:
    """One annotation per finding (Python migrations as notices), then the summary line."""
    root = root.resolve()
    column = _Columns()
    lines = [annotation(f, root, column(f.file, f.line)) for f in report.findings]
    lines += [f"::notice::{escape_data(mid)}: not linted (Python migration)" for mid in report.skipped]
    lines.append(report.as_text().rsplit("\n", 1)[-1])
    return "\n".join(lines)


def render(report: LintReport, fmt: str, root: Path | None = None) -> str:
    """The report in ``fmt`` (one of FORMATS) as the text to print."""
    import json

    root = root or find_root()
    if fmt == "sarif":
        return json.dumps(to_sarif(report, root), indent=2)
    if fmt == "github":
        return to_github(report, root)
    raise ValueError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
