"""Compare the migrations on disk with the recorded history."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from runner.history import AppliedMigration
from runner.migration import MigrationFile


@dataclass(frozen=True)
class AppliedEntry:
    id: str
    applied_at: str
    applied_by: str


@dataclass(frozen=True)
class Modified:
    id: str
    path: str
    recorded_checksum: str
    file_checksum: str


@dataclass
class Status:
    """``at_head``: nothing pending. ``clean``: additionally nothing modified or missing."""

    applied: list[AppliedEntry] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    modified: list[Modified] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    head: str | None = None

    @property
    def at_head(self) -> bool:
        return not self.pending

    @property
    def clean(self) -> bool:
        return not (self.pending or self.modified or self.missing)

    def to_dict(self) -> dict[str, Any]:
        return {
            "applied": [asdict(a) for a in self.applied],
            "pending": self.pending,
            "modified": [m.id for m in self.modified],
            "missing": self.missing,
            "head": self.head,
            "at_head": self.at_head,
        }


def compute(files: list[MigrationFile], applied: list[AppliedMigration]) -> Status:
    on_disk = {m.id: m for m in files}
    recorded = {a.migration_id: a for a in applied}
    status = Status(head=files[-1].id if files else None)
    for a in applied:
        status.applied.append(AppliedEntry(a.migration_id, a.applied_at.isoformat(), a.applied_by))
        m = on_disk.get(a.migration_id)
        if m is None:
            status.missing.append(a.migration_id)
        elif m.checksum != a.checksum:
            status.modified.append(Modified(m.id, m.path, a.checksum, m.checksum))
    status.pending = [m.id for m in files if m.id not in recorded]
    return status


def drift_lines(status: Status) -> list[str]:
    """One line per modified or missing migration, with the way out."""
    lines = [
        f"{m.path}: {m.id} changed since it was applied (recorded sha256 {m.recorded_checksum[:12]}, "
        f"file {m.file_checksum[:12]}): restore the file, or record the new content with `migrate rehash {m.id}`"
        for m in status.modified
    ]
    lines += [
        f"{mid}: recorded as applied but its file is missing: restore it, or forget it with `migrate unmark {mid}`"
        for mid in status.missing
    ]
    return lines
