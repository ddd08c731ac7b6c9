"""Migration ids as users type them: the full id (``017_add_execution_bundle``), the file name
(``017_add_execution_bundle.sql``) or an unambiguous prefix (``017``, ``017_add``).

Every command that takes a migration id (``up --to``, ``down --to``, ``mark``, ``unmark``,
``rehash``) resolves it with :func:`resolve_id`, so a short id works everywhere or fails everywhere
with the same message.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from runner.errors import UsageError

_SUFFIXES = (".rollback.sql", ".sql", ".py")


def resolve_id(text: str, ids: Iterable[str], what: str = "migration") -> str:
    """The one id in ``ids`` that ``text`` names: itself, itself without a file suffix, or the only id
    starting with it. Raises UsageError (exit 2) naming ``what`` and listing the candidates when none
    or several match."""
    known = list(dict.fromkeys(ids))
    if text in known:
        return text
    stem = next((text[: -len(s)] for s in _SUFFIXES if text.endswith(s)), text)
    if stem in known:
        return stem
    if not stem.strip():
        raise UsageError(f"{what}: an empty migration id")
    # A version first: 017 (or 17) names 017_x, not 0170_y; else a prefix of the id.
    matches = [i for i in known if _version(i) == int(stem)] if stem.isdigit() else []
    matches = matches or [i for i in known if i.startswith(stem)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise UsageError(f"{what} {text}: ambiguous, matches {_list(matches)}; give more of the id")
    near = [i for i in known if stem.lower() in i.lower()]
    hint = f" (did you mean {_list(near)}?)" if near else ""
    raise UsageError(f"{what} {text}: no such migration in the migrations folder{hint}")


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
