"""Migration ids as users type them: the full id (``017_add_execution_bundle``), its version
(``017``, ``17``) or an unambiguous prefix (``017_add``). A file name (``017_x.sql``) is not an id.

Every command that takes a migration id (``up --to``, ``down --to``, ``mark``, ``unmark``,
``rehash``) resolves it with :func:`resolve_id`, so a short id works everywhere or fails everywhere
with the same message.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from runner.errors import UsageError


def resolve_id(text: str, ids: Iterable[str], what: str = "migration") -> str:
    """The one id in ``ids`` that ``text`` names: itself, the only id with that version number (when
    ``text`` is all digits), or the only id starting with it. Raises UsageError (exit 2) naming
    ``what`` and listing the candidates when none or several match."""
    known = list(dict.fromkeys(ids))
    if text in known:
        return text
    if not text.strip():
        raise UsageError(f"{what}: an empty migration id")
    matches = candidates(text, known)
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise UsageError(f"{what} {text}: ambiguous, matches {_list(matches)}; give more of the id")
    near = [i for i in known if text.lower() in i.lower()]
    hint = f" (did you mean {_list(near)}?)" if near else ""
    raise UsageError(f"{what} {text}: no such migration in the migrations folder{hint}")


def candidates(text: str, ids: Iterable[str]) -> list[str]:
    """The ids ``text`` may name: itself; else, when it is all digits, the ids of that version (017 or 17
    names 017_x, not 0170_y); else the ids starting with it."""
    known = list(dict.fromkeys(ids))
    if text in known:
        return [text]
    digits = text.isascii() and text.isdigit()
    matches = [i for i in known if _version(i) == int(text)] if digits else []
    return matches or [i for i in known if i.startswith(text)]


def resolve_ids(texts: Sequence[str], ids: Iterable[str], what: str = "migration") -> list[str]:
    """:func:`resolve_id` for each of ``texts`` (in order)."""
    known = list(ids)
    return [resolve_id(t, known, what) for t in texts]


def _version(migration_id: str) -> int | None:
    digits = len(migration_id) - len(migration_id.lstrip("0123456789"))
    return int(migration_id[:digits]) if digits else None


def _list(ids: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")
