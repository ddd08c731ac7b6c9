"""Declared shape changes: parse ``-- compat:`` directives and ``[[renames]]`` config entries.

Grammar of a directive value (the text after ``-- compat:``)::

    rename       [SCHEMA.]TABLE.OLD -> NEW [window=DURATION | until=DATE] [expose=old|both]
    add          [SCHEMA.]TABLE.COLUMN     [window=DURATION | until=DATE]
    drop         [SCHEMA.]TABLE.COLUMN     [window=DURATION | until=DATE] [refuse] [expr=SQL...]
    retype       [SCHEMA.]TABLE.COLUMN     [window=DURATION | until=DATE] [expr=SQL...]
    rename-table [SCHEMA.]OLD -> NEW       [window=DURATION | until=DATE]

``rename`` declares a column rename (:class:`RenameDeclaration`); the other verbs declare the
other shape changes of an existing table (:class:`ShapeDeclaration`): each opens a compatibility
window for the table, so consumers pinned at earlier versions keep seeing it as they knew it.
``expr=`` must come last and takes the rest of the line: the SQL expression (over the table's
columns after the migration) that older versions read in place of a dropped column (default
``NULL``) or of a retyped one (default: the column cast back to its old type); the result is
cast to the column's old type. ``refuse`` (drop only) makes the migration fail while an active
shim still shows the column, instead of filling it.

Identifiers follow PostgreSQL's rules:

* a bare identifier (``[A-Za-z_][A-Za-z0-9_$]*``, non-ASCII letters allowed)
  is folded to lower case (ASCII letters only, as PostgreSQL does), so
  ``Workflows.ExecutionBundle`` means ``workflows.executionbundle``;
* a double-quoted identifier is taken exactly, with ``""`` standing for one
  ``"``: ``"Work Flows"."Exec.Bundle" -> "containerImage"``. Quoted names may
  contain dots, spaces and ``->``.

``window=`` takes a duration (``90m``, ``36h``, ``14d``, ``2w``; see
:func:`runner.durations.parse_duration`); ``until=`` an ISO date
(``2026-12-31``: the shim stays through that day and expires at the following
midnight UTC) or an ISO timestamp with a time zone. Neither: the config's
``[compat] default_window``. ``expose=both`` makes the shim show the new name
too, right after the old one (see README.md for why that breaks strict
``SELECT *`` scanners). Options may come in any order, each at most once.

``[[renames]]`` config entries use the same identifier grammar for ``table``
(which may be ``schema.table``), ``old`` and ``new``: write
``old = '"ExecBundle"'`` to keep capitals.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

from runner.config import Settings
from runner.durations import format_duration, parse_duration
from runner.errors import ConfigError, MigrationFileError
from runner.migration import MigrationFile

EXPOSE_CHOICES = ("old", "both")
_BARE = re.compile(r"[^\W\d][\w$]*")
_OPTION = re.compile(r"([A-Za-z_]+)=(\S*)")


class DeclarationError(ValueError):
    """Raised by the parsers; callers turn it into a file or config error."""


class _Windowed:
    """What both kinds of declaration share: the table they name and the window of their shims."""

    schema: str | None
    table: str
    window: timedelta | None
    until: datetime | None

    @property
    def qualified_table(self) -> str:
        """The table as it would be written in a directive (quoted where needed)."""
        return qualified_name(self.schema, self.table)

    def _window_words(self) -> list[str]:
        """The ``window=``/``until=`` words of the canonical directive text."""
        words = []
        if self.window is not None:
            words.append(f"window={format_duration(self.window)}")
        if self.until is not None:
            words.append(f"until={self.until.isoformat()}")
        return words

    def expires_at(self, start: datetime, default_window: timedelta) -> datetime:
        """When a shim created at ``start`` for this declaration expires."""
        if self.until is not None:
            return self.until
        return start + (self.window if self.window is not None else default_window)


@dataclass(frozen=True)
class RenameDeclaration(_Windowed):
    """One declared column rename and its compatibility window.

    ``window`` and ``until`` are both None when the declaration relies on the
    default window. ``source`` says where it was declared (``path:line`` or
    ``config: [[renames]] #n``) for messages.
    """

    table: str
    old: str
    new: str
    schema: str | None = None
    window: timedelta | None = None
    until: datetime | None = None
    expose: str = "old"
    migration_id: str = ""
    source: str = ""

    @property
    def text(self) -> str:
        """The canonical directive text (what ``-- compat:`` would say)."""
        words = [f"rename {self.qualified_table}.{quote_ident(self.old)} -> {quote_ident(self.new)}",
                 *self._window_words()]
        if self.expose != "old":
            words.append(f"expose={self.expose}")
        return " ".join(words)


SHAPE_VERBS = ("add", "drop", "retype", "rename-table")


@dataclass(frozen=True)
class ShapeDeclaration(_Windowed):
    """One declared shape change other than a column rename (see the module docstring).

    ``column`` is the column (None for rename-table), ``new`` the new table name (rename-table),
    ``expr`` the SQL older versions read instead (drop/retype), ``refuse`` (drop): fail instead
    of filling a column an active shim shows.
    """

    kind: str
    table: str
    schema: str | None = None
    column: str | None = None
    new: str | None = None
    expr: str | None = None
    refuse: bool = False
    window: timedelta | None = None
    until: datetime | None = None
    migration_id: str = ""
    source: str = ""

    @property
    def text(self) -> str:
        """The canonical directive text."""
        if self.kind == "rename-table":
            words = [f"rename-table {self.qualified_table} -> {quote_ident(self.new or '')}"]
        else:
            words = [f"{self.kind} {self.qualified_table}.{quote_ident(self.column or '')}"]
        words += self._window_words()
        if self.refuse:
            words.append("refuse")
        if self.expr is not None:
            words.append(f"expr={self.expr}")
        return " ".join(words)


def qualified_name(schema: str | None, table: str) -> str:
    """``schema.table`` (or ``table``) as a directive writes it, quoted where needed."""
    return ".".join(quote_ident(p) for p in ([schema, table] if schema else [table]))


def quote_ident(name: str) -> str:
    """``name`` as it must be written in a directive: bare when it would fold to itself."""
    if re.fullmatch(r"[a-z_][a-z0-9_$]*", name):
        return name
    return '"' + name.replace('"', '""') + '"'


def fold(name: str) -> str:
    """Fold a bare identifier like PostgreSQL: ASCII letters to lower case only."""
    return "".join(c.lower() if "A" <= c <= "Z" else c for c in name)


def _identifier(text: str, pos: int) -> tuple[str, int]:
    """Read one identifier starting at ``pos``; return it and the position after it."""
    if pos < len(text) and text[pos] == '"':
        out: list[str] = []
        i = pos + 1
        while i < len(text):
            if text[i] == '"':
                if i + 1 < len(text) and text[i + 1] == '"':
                    out.append('"')
                    i += 2
                    continue
                if not out:
                    raise DeclarationError("empty quoted identifier \"\"")
                return "".join(out), i + 1
            out.append(text[i])
            i += 1
        raise DeclarationError(f"unterminated quoted identifier starting at column {pos + 1}")
    match = _BARE.match(text, pos)
    if not match:
        found = text[pos:pos + 12] or "end of line"
        raise DeclarationError(f"expected an identifier at column {pos + 1}, found {found!r}")
    return fold(match.group()), match.end()


def _dotted(text: str, pos: int) -> tuple[list[str], int]:
    """Read ``ident(.ident)*`` starting at ``pos``."""
    parts = []
    while True:
        name, pos = _identifier(text, pos)
        parts.append(name)
        if pos < len(text) and text[pos] == ".":
            pos += 1
            continue
        return parts, pos


def _skip_spaces(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def parse_identifier_path(text: str, min_parts: int, max_parts: int, what: str) -> list[str]:
    """Parse a whole string as ``ident(.ident)*`` with a bounded number of parts."""
    text = text.strip()
    parts, pos = _dotted(text, 0)
    if pos != len(text):
        raise DeclarationError(f"{what}: unexpected {text[pos:]!r} after {text[:pos]!r}")
    if not min_parts <= len(parts) <= max_parts:
        shape = "a name" if max_parts == 1 else "table or schema.table"
        raise DeclarationError(f"{what}: expected {shape}, got {text!r}")
    return parts


def parse_until(value: Any) -> datetime:
    """``until=`` value: a date (expires at the next midnight UTC) or an aware timestamp."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, date):
        return datetime.combine(value + timedelta(days=1), time(), tzinfo=timezone.utc)
    else:
        text = str(value).strip()
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            try:
                day = date.fromisoformat(text)
                return datetime.combine(day + timedelta(days=1), time(), tzinfo=timezone.utc)
            except ValueError:
                raise DeclarationError(f"until: {text!r} is not a valid date") from None
            except OverflowError:
                raise DeclarationError(f"until: {text!r} is too far in the future") from None
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise DeclarationError(
                f"until: expected a date like 2026-12-31 or a timestamp like 2026-12-31T18:00:00Z, got {text!r}"
            ) from None
    if parsed.tzinfo is None:
        raise DeclarationError(f"until: timestamp {value!s} needs a time zone (add Z or +00:00)")
    try:
        return parsed.astimezone(timezone.utc)
    except OverflowError:
        raise DeclarationError(f"until: {value!s} is too far in the future") from None


def window_problem(declaration: RenameDeclaration, now: datetime, max_window: timedelta) -> str | None:
    """What is wrong with the declaration's window at ``now`` (None: nothing): an ``until=`` already
    past (the shim would be born expired) or a window longer than ``max_window`` ([compat] max_window)."""
    limit = format_duration(max_window)
    if declaration.until is not None:
        if declaration.until <= now:
            return (f"until: the shim would expire {declaration.until:%Y-%m-%d %H:%M} UTC, which is in the past "
                    "(it would be expired as soon as it is created); give a later date or a window=")
        if declaration.until - now > max_window:
            return f"until={declaration.until:%Y-%m-%d} is more than [compat] max_window ({limit}) from now"
    if declaration.window is not None and declaration.window > max_window:
        return f"window={format_duration(declaration.window)} is longer than [compat] max_window ({limit})"
    return None


def _options(pairs: dict[str, Any]) -> dict[str, Any]:
    """Validate window/until/expose values; return RenameDeclaration keyword arguments."""
    out: dict[str, Any] = {}
    if "window" in pairs and "until" in pairs:
        raise DeclarationError("give either window= or until=, not both")
    if "window" in pairs:
        try:
            window = parse_duration(pairs["window"], "window")
        except ValueError as err:
            raise DeclarationError(str(err)) from None
        if window <= timedelta(0):
            raise DeclarationError("window: must be longer than zero")
        out["window"] = window
    if "until" in pairs:
        out["until"] = parse_until(pairs["until"])
    if "expose" in pairs:
        if pairs["expose"] not in EXPOSE_CHOICES:
            raise DeclarationError(f"expose: expected old or both, got {pairs['expose']!r}")
        out["expose"] = pairs["expose"]
    return out


def parse_rename(value: str, migration_id: str = "", source: str = "") -> RenameDeclaration:
    """Parse a directive value such as ``rename t.old -> new window=14d``.

    Raises :class:`DeclarationError` with a message saying what is wrong.
    """
    text = value.strip()
    verb, _, rest = text.partition(" ")
    if verb != "rename":
        raise DeclarationError(
            f"unknown compat directive {verb or text!r} (expected one of rename, add, drop, retype, rename-table; "
            "e.g. rename TABLE.OLD -> NEW window=14d)")
    start = len(text) - len(rest)
    pos = _skip_spaces(text, start)
    parts, pos = _dotted(text, pos)
    if len(parts) not in (2, 3):
        raise DeclarationError(
            f"expected [schema.]table.old_column before '->', got {text[start:pos].strip()!r}"
        )
    pos = _skip_spaces(text, pos)
    if not text.startswith("->", pos):
        raise DeclarationError(f"expected '->' at column {pos + 1}, found {text[pos:pos + 12] or 'end of line'!r}")
    pos = _skip_spaces(text, pos + 2)
    new, pos = _identifier(text, pos)
    if text[pos:] and not text[pos].isspace():
        raise DeclarationError(f"expected a space after the new name at column {pos + 1}")
    pairs: dict[str, str] = {}
    for word in text[pos:].split():
        match = _OPTION.fullmatch(word)
        if not match:
            raise DeclarationError(f"unexpected {word!r} (options are window=, until=, expose=)")
        key, val = match.groups()
        if key not in ("window", "until", "expose"):
            raise DeclarationError(f"unknown option {key!r} (options are window=, until=, expose=)")
        if key in pairs:
            raise DeclarationError(f"option {key}= given twice")
        if not val:
            raise DeclarationError(f"option {key}= needs a value")
        pairs[key] = val
    *table_parts, old = parts
    schema, table = (table_parts if len(table_parts) == 2 else [None, table_parts[0]])
    if old == new:
        raise DeclarationError(f"old and new names are the same ({old!r})")
    return RenameDeclaration(
        table=table, old=old, new=new, schema=schema, migration_id=migration_id, source=source,
        **_options(pairs),
    )


def parse_shape(value: str, migration_id: str = "", source: str = "") -> ShapeDeclaration:
    """Parse an ``add``/``drop``/``retype``/``rename-table`` directive value."""
    text = value.strip()
    verb, _, rest = text.partition(" ")
    if verb not in SHAPE_VERBS:
        raise DeclarationError(f"unknown compat directive {verb!r} (expected one of rename, {', '.join(SHAPE_VERBS)})")
    expr: str | None = None
    marker = re.search(r"(^|\s)expr=", text)
    if marker:
        if verb not in ("drop", "retype"):
            raise DeclarationError(f"expr= is for drop and retype, not {verb}")
        expr = text[marker.end():].strip()
        if not expr:
            raise DeclarationError("option expr= needs a value (an SQL expression, the rest of the line)")
        text = text[:marker.start()]
    start = len(verb)
    pos = _skip_spaces(text, start)
    parts, pos = _dotted(text, pos)
    new: str | None = None
    column: str | None = None
    if verb == "rename-table":
        if len(parts) not in (1, 2):
            raise DeclarationError(f"expected [schema.]table before '->', got {text[start:pos].strip()!r}")
        pos = _skip_spaces(text, pos)
        if not text.startswith("->", pos):
            raise DeclarationError(f"expected '->' at column {pos + 1}, found {text[pos:pos + 12] or 'end of line'!r}")
        new, pos = _identifier(text, _skip_spaces(text, pos + 2))
        table_parts = parts
    else:
        if len(parts) not in (2, 3):
            raise DeclarationError(f"expected [schema.]table.column after {verb}, got {text[start:pos].strip()!r}")
        *table_parts, column = parts
    if text[pos:] and not text[pos].isspace():
        raise DeclarationError(f"expected a space at column {pos + 1}")
    pairs: dict[str, str] = {}
    refuse = False
    for word in text[pos:].split():
        if word == "refuse" and verb == "drop":
            refuse = True
            continue
        match = _OPTION.fullmatch(word)
        if not match or match.group(1) not in ("window", "until"):
            extra = ", refuse, expr=" if verb == "drop" else ", expr=" if verb == "retype" else ""
            raise DeclarationError(f"unexpected {word!r} (options are window=, until={extra})")
        key, val = match.groups()
        if key in pairs:
            raise DeclarationError(f"option {key}= given twice")
        if not val:
            raise DeclarationError(f"option {key}= needs a value")
        pairs[key] = val
    schema, table = (table_parts if len(table_parts) == 2 else [None, table_parts[0]])
    if new is not None and new == table:
        raise DeclarationError(f"old and new names are the same ({table!r})")
    return ShapeDeclaration(kind=verb, table=table, schema=schema, column=column, new=new, expr=expr, refuse=refuse,
                            migration_id=migration_id, source=source, **_options(pairs))


def is_rename(value: str) -> bool:
    """Whether a directive value is a column rename (the other verbs are shape declarations)."""
    return value.strip().partition(" ")[0] not in SHAPE_VERBS


def shape_declarations(migration: MigrationFile) -> list[ShapeDeclaration]:
    """The add/drop/retype/rename-table directives of ``migration``; MigrationFileError for a bad one."""
    found: list[ShapeDeclaration] = []
    for directive in migration.directives_named("compat"):
        if is_rename(directive.value):
            continue
        source = f"{migration.path}:{directive.line}" if directive.line else migration.path
        try:
            found.append(parse_shape(directive.value, migration.id, source))
        except DeclarationError as err:
            raise MigrationFileError(migration.path, f"compat: {err}", directive.line or None) from None
    return found


def parse_config_entry(entry: dict[str, Any], index: int, where: str) -> RenameDeclaration:
    """Turn one ``[[renames]]`` table into a declaration; raises ConfigError naming the entry."""
    label = f"{where}: [[renames]] #{index}"
    try:
        table_parts = parse_identifier_path(str(entry["table"]), 1, 2, "table")
        (old,) = parse_identifier_path(str(entry["old"]), 1, 1, "old")
        (new,) = parse_identifier_path(str(entry["new"]), 1, 1, "new")
        if old == new:
            raise DeclarationError(f"old and new names are the same ({old!r})")
        options = {k: entry[k] for k in ("window", "until", "expose") if entry.get(k) is not None}
        kwargs = _options(options)
    except DeclarationError as err:
        raise ConfigError(f"{label}: {err}") from None
    schema, table = (table_parts if len(table_parts) == 2 else [None, table_parts[0]])
    return RenameDeclaration(
        table=table, old=old, new=new, schema=schema, migration_id=str(entry["migration"]),
        source=label, **kwargs,
    )


def _matches(migration: MigrationFile, name: str) -> bool:
    path = Path(migration.path)
    return name in (migration.id, path.name, path.stem)


def declarations_for(migration: MigrationFile, settings: Settings) -> list[RenameDeclaration]:
    """Every rename declared for ``migration``: its ``compat`` directives, then config entries.

    Raises MigrationFileError (naming file:line) for a bad directive and
    ConfigError for a bad config entry or a rename declared twice.
    """
    where = str(settings.config_path) if settings.config_path else "config"
    return declarations_from(migration, settings.renames, where)


def declarations_from(migration: MigrationFile, renames: Sequence[dict[str, Any]], where: str = "config"
                      ) -> list[RenameDeclaration]:
    """:func:`declarations_for` with the ``[[renames]]`` entries given directly (``where`` names their file)."""
    found: list[RenameDeclaration] = []
    for directive in migration.directives_named("compat"):
        if not is_rename(directive.value):
            continue
        source = f"{migration.path}:{directive.line}" if directive.line else migration.path
        try:
            found.append(parse_rename(directive.value, migration.id, source))
        except DeclarationError as err:
            raise MigrationFileError(migration.path, f"compat: {err}", directive.line or None) from None
    for index, entry in enumerate(renames, 1):
        if _matches(migration, str(entry.get("migration", ""))):
            declaration = parse_config_entry(entry, index, where)
            found.append(replace(declaration, migration_id=migration.id))
    seen: dict[tuple[str | None, str, str], RenameDeclaration] = {}
    for declaration in found:
        key = (declaration.schema, declaration.table, declaration.old)
        if key in seen:
            raise ConfigError(
                f"{declaration.source}: rename of {declaration.qualified_table}.{quote_ident(declaration.old)} "
                f"is already declared at {seen[key].source}"
            )
        seen[key] = declaration
    return found


def check_config_renames(settings: Settings, migrations: list[MigrationFile]) -> None:
    """Raise ConfigError for a ``[[renames]]`` entry that is malformed or names no migration.

    For ``migrate lint``/``verify``: config entries are otherwise only looked at
    when their migration is applied.
    """
    where = str(settings.config_path) if settings.config_path else "config"
    for index, entry in enumerate(settings.renames, 1):
        parse_config_entry(entry, index, where)
        if not any(_matches(m, str(entry["migration"])) for m in migrations):
            raise ConfigError(f"{where}: [[renames]] #{index}: no migration named {entry['migration']!r}")


def declared_renames(migration: MigrationFile, renames: Sequence[dict[str, Any]] = ()) -> list[RenameDeclaration]:
    """The renames ``migration`` declares, for diagnosis (doctor, contracts): like
    :func:`declarations_from`, but a directive or entry that does not parse is left out instead of
    raising (`migrate up` and `lint` report those)."""
    found: list[RenameDeclaration] = []
    for directive in migration.directives_named("compat"):
        if not is_rename(directive.value):
            continue
        try:
            found.append(parse_rename(directive.value, migration.id))
        except DeclarationError:
            continue
    for index, entry in enumerate(renames, 1):
        if _matches(migration, str(entry.get("migration", ""))):
            try:
                found.append(replace(parse_config_entry(entry, index, "config"), migration_id=migration.id))
            except (ConfigError, KeyError):
                continue
    return found
