"""The docs as a new user reads them: every relative link and #anchor of README.md and docs/*.md
resolves (GitHub heading slugs), and every command and option of `migrate --help` is in docs/cli.md."""

from __future__ import annotations

import re
from pathlib import Path

import click

from runner.cli import cli
from helpers import ROOT

_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _outside_fences(text: str) -> list[tuple[int, str]]:
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append((number, line))
    return lines


def github_slugs(text: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown text (duplicates get -1, -2, ...)."""
    slugs: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in _outside_fences(text):
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not heading:
            continue
        title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.group(1))
        slug = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        slugs.add(slug if count == 0 else f"{slug}-{count}")
    return slugs


def broken_links(page: Path) -> list[str]:
    broken = []
    for number, line in _outside_fences(page.read_text(encoding="utf-8")):
        for match in _LINK.finditer(line):
            target = match.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(ROOT)}:{number}: {target}"
            if not dest.exists():
                broken.append(f"{where}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in github_slugs(dest.read_text(encoding="utf-8")):
                broken.append(f"{where}: no such anchor")
    return broken


def test_slugs_follow_github() -> None:
    text = "# A `b`: c.py\n## Same\n## Same\n```\n# not a heading\n```\n"
    assert github_slugs(text) == {"a-b-cpy", "same", "same-1"}


def test_every_relative_link_and_anchor_of_readme_and_docs_resolves() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    problems = [problem for page in pages for problem in broken_links(page)]
    assert problems == []


def test_readme_stays_a_front_door() -> None:
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 170


def _commands(group: click.Group, path: tuple[str, ...] = ()):
    yield path, group
    with click.Context(group) as ctx:  # list_commands/get_command: some are loaded when named
        subs = [(name, group.get_command(ctx, name)) for name in group.list_commands(ctx)]
    for name, sub in subs:
        if isinstance(sub, click.Group):
            yield from _commands(sub, (*path, name))
        else:
            yield (*path, name), sub


def test_every_command_and_option_of_the_help_is_in_cli_md() -> None:
    doc = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    missing = []
    for path, command in _commands(cli):
        if path and f"migrate {' '.join(path)}" not in doc and f"`{path[-1]}`" not in doc:
            missing.append(" ".join(path))
        for param in command.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("--") and f"`{opt}" not in doc and f" {opt}" not in doc:
                    missing.append(f"{' '.join(path) or 'migrate'} {opt}")
    assert missing == []


def test_every_argument_of_the_help_is_named_as_in_cli_md() -> None:
    """`migrate check-files` without a file says "Missing argument 'FILE...'", as cli.md writes it."""
    doc = re.sub(r"[\[\]{}]", "", (ROOT / "docs" / "cli.md").read_text(encoding="utf-8"))
    differing = []
    for path, command in _commands(cli):
        for param in command.params:
            if isinstance(param, click.Argument):
                with click.Context(command) as ctx:
                    shown = re.sub(r"[\[\]{}]", "", param.make_metavar(ctx))
                if shown not in doc:
                    differing.append(f"migrate {' '.join(path)} {shown}")
    assert differing == []
