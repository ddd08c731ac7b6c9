"""Records describing migration files as read from disk."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal

Format = Literal["sql", "goose", "python"]
# The name prefix of yoyo's post-apply hooks: files that are not migrations (runner.sources.load_folder).
POST_APPLY = "post-apply"


@dataclass(frozen=True)
class Statement:
    """One SQL statement and the 1-based line of the file it starts on.

    ``exact``: split by PostgreSQL's grammar, so certainly one statement (not so for a goose
    StatementBegin/End block, or a file only sqlparse could split).
    """

    sql: str
    line: int
    exact: bool = True


@dataclass(frozen=True)
class Directive:
    """A header directive such as ``-- compat: rename t.a -> b window=14d``.

    ``line`` is 0 for directives declared from Python code or config.
    """

    name: str
    value: str
    line: int


@dataclass
class MigrationFile:
    """One migration on disk.

    ``version`` is the numeric prefix of the file name (``17`` for
    ``017_add.sql``) and ``version_label`` its text (``"017"``); both are None
    for a file without one. ``checksum`` is the SHA-256 of the file's content
    (UTF-8 BOM removed, line endings normalised to LF).
    """

    id: str
    path: str
    format: Format
    checksum: str
    version: int | None
    version_label: str | None
    transactional: bool = True
    depends: tuple[str, ...] = ()
    directives: list[Directive] = field(default_factory=list)
    # The header's other comments shaped like a directive (``-- word: ...``), as (word, line):
    # runner.preflight refuses a pending file where one is a misspelt directive.
    comment_words: list[tuple[str, int]] = field(default_factory=list)
    # What runner.sources has not split yet: direction ("up", "down") -> the function that splits
    # it. ``up``/``down`` split on first use, so a no-op `migrate up` splits none of the applied
    # files (nor imports PostgreSQL's parser to do so: bench/bench_runner.py).
    deferred: dict[str, Callable[[], list[Statement]]] = field(default_factory=dict, repr=False, compare=False)
    up: list[Statement] = field(default_factory=list)
    down: list[Statement] = field(default_factory=list)
    # For Python migrations: the loaded yoyo steps (runner.yoyo_adapter), and whether any has a rollback.
    python_steps: list[Any] = field(default_factory=list)
    python_rollback: bool = False

    def statements(self, direction: str) -> list[Statement]:
        """The SQL statements ``direction`` runs: ``down`` for a rollback, else ``up`` (apply, and a
        post-apply hook)."""
        return self.down if direction == "rollback" else self.up

    def directives_named(self, name: str) -> list[Directive]:
        return [d for d in self.directives if d.name == name]

    @property
    def has_down(self) -> bool:
        return bool(self.down) or self.python_rollback


def _statements(direction: str) -> property:
    """``MigrationFile.up``/``down``: the statements, split from the file on first use."""
    stored = "_" + direction

    def get(self: MigrationFile) -> list[Statement]:
        split = self.deferred.pop(direction, None)
        if split is not None:
            setattr(self, stored, split())
        return getattr(self, stored)

    def put(self: MigrationFile, statements: list[Statement]) -> None:
        self.__dict__.get("deferred", {}).pop(direction, None)
        setattr(self, stored, statements)

    return property(get, put)


# After the dataclass is made: its __init__ assigns the fields, through these properties.
MigrationFile.up = _statements("up")  # type: ignore[assignment]
MigrationFile.down = _statements("down")  # type: ignore[assignment]
