"""How shims are built on each database, one module per database.

:mod:`compat.hook` and :mod:`compat.lifecycle` are dialect-neutral: they ask the
:class:`ViewBuilder` of the database (:func:`for_database`) to find tables and their columns,
create, rebuild and drop shim views, and (where the database has roles) route roles.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from compat.declarations import RenameDeclaration
    from compat.model import Route, Shim
    from compat.registry import Registry
    from compat.shapes import TableShape, Touch
    from runner.config import Settings
    from runner.db import Database
    from runner.hooks import MigrationContext


@dataclass
class TableSnapshot:
    """A declared table as it was before the migration's statements: ``key`` identifies it across
    renames where the database can (PostgreSQL: its oid); ``columns`` are (name, column key)."""

    declarations: list[RenameDeclaration]
    name: str
    schema: str | None
    key: Any = None
    columns: list[tuple[str, Any]] = field(default_factory=list)


@dataclass
class Session:
    """A database session that is (or may be) using a shim."""

    pid: int
    user: str | None
    application_name: str | None
    client_addr: str | None
    state: str | None
    evidence: str

    def describe(self) -> str:
        app = self.application_name or "?"
        addr = self.client_addr or "local socket"
        return f"pid {self.pid} ({self.user}, {app}@{addr}, {self.state or 'unknown'}): {self.evidence}"

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "user": self.user, "application_name": self.application_name,
                "client_addr": self.client_addr, "state": self.state, "evidence": self.evidence}


class ViewBuilder(Protocol):
    """What the compat hook and the shim commands need from a database."""

    name: str
    search_path: bool  # consumers reach shims through their search_path (True) or by view name (False)

    def require_ours(self, db: Database, schema: str, registry: Registry, doing: str) -> None: ...
    def reserve(self, db: Database, schema: str) -> None: ...
    def grant_route(self, db: Database, role: str, schema: str, shims: list[Shim]) -> None: ...
    def location(self, settings: Settings, table: str, version: str) -> tuple[str | None, str]: ...
    def shim_name(self, schema: str | None, view: str) -> str: ...

    # the hook
    def snapshot(self, ctx: MigrationContext, group: list[RenameDeclaration]) -> TableSnapshot: ...
    def prepare_refresh(self, ctx: MigrationContext, active: list[Shim], touches: list[Touch] | None
                        ) -> list[tuple[Shim, Any]]: ...
    def verify(self, ctx: MigrationContext, snap: TableSnapshot) -> None: ...
    def rebuild(self, ctx: MigrationContext, registry: Registry, refresh: list[tuple[Shim, Any]],
                snapshots: list[TableSnapshot]) -> None: ...
    def create(self, ctx: MigrationContext, registry: Registry, snap: TableSnapshot, label: str,
               view_columns: list[tuple[str, str]]) -> tuple[str | None, str, list[dict[str, Any]]]: ...

    # shapes (compat.shapes): every shape change presented per pinned version
    shapes: bool
    rebuild_all: bool  # every shim view is dropped before a migration and rebuilt after it

    def shape_keys(self, db: Database, names: list[tuple[str | None, str]] | None) -> list[Any]: ...
    def shapes_of(self, db: Database, keys: list[Any]) -> dict[Any, TableShape]: ...
    def shapes_after(self, ctx: MigrationContext, before: dict[Any, TableShape]) -> dict[Any, TableShape]: ...
    def shim_bases(self, db: Database, shims: list[Shim]) -> dict[int, Any]: ...
    def detach(self, db: Database, shims: list[Shim]) -> None: ...
    def relation_exists(self, db: Database, schema: str, view: str) -> bool: ...
    def comment(self, name: str, as_of: str, migration_id: str) -> str: ...
    def build_shape(self, db: Database, *, schema: str | None, view: str, table: TableShape,
                    entries: list[dict[str, Any]], comment: str = "") -> list[dict[str, Any]]: ...

    # the shim commands
    def drop(self, db: Database, shim: Shim) -> str | None: ...
    def sessions_using(self, db: Database, shims: list[Shim], routes: list[Route]) -> tuple[list[Session], list[str]]: ...
    def foreign_objects(self, db: Database, settings: Settings, registry: Registry) -> list[tuple[str, str]]: ...


def drop_command(shim: Shim) -> str:
    """The command that removes ``shim`` (quoted for a shell where its name needs it)."""
    return f"migrate shims drop '{shim.name}'" if any(c in shim.name for c in ' "$') else f"migrate shims drop {shim.name}"


def blocked(where: str, what: str, shims: list[Shim]) -> str:
    """The refusal of a migration that would remove what active ``shims`` expose."""
    listed = ", ".join(f"{s.name} (version {s.as_of}, expires {s.expires_at:%Y-%m-%d %H:%M} UTC)" for s in shims)
    commands = "; ".join(drop_command(s) for s in shims)
    return (f"{where}: the migration {what}, which active shim {listed} exposes; nothing was applied. "
            f"Drop the shim first ({commands}) or wait until its consumers have moved on")


def for_database(db: Database) -> ViewBuilder:
    if db.dialect.name == "postgresql":
        from compat.dialects.postgresql import BUILDER
    else:
        from compat.dialects.sqlite import BUILDER
    return BUILDER
