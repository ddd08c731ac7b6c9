"""Read a migrations folder into ordered, validated MigrationFile records.

Formats: yoyo SQL (``X.sql`` with optional ``X.rollback.sql``), goose SQL
(``-- +goose Up``/``Down``) and yoyo Python (``step(...)``). Files are read as
UTF-8 whatever the locale. Order: numeric version prefix (``2_x`` before
``10_x``), files without one after those by name, then yoyo's stable
topological sort on ``depends``. Every problem is found before anything runs.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from runner import yoyo_adapter
from runner.errors import ConfigError, MigrationFileError
from runner.goose import is_goose, parse_goose
from runner.migration import POST_APPLY, MigrationFile
from runner.sqlfile import read_header, split_statements

_VERSION = re.compile(r"^(\d+)")
_CHUNK = 1 << 20
_TRUE = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def load_migrations(folder: Path, source: str | None = None) -> list[MigrationFile]:
    """All migrations in ``folder``, in the order they apply."""
    return load_folder(folder, source)[0]


def load_folder(folder: Path, source: str | None = None) -> tuple[list[MigrationFile], list[MigrationFile]]:
    """The migrations in ``folder`` (in the order they apply) and its post-apply hooks: as in yoyo,
    files whose name starts with ``post-apply`` (``post-apply.sql``, ``post-apply-grants.py``) are
    not migrations but run after every `migrate up` that applied something, in name order.

    A folder that does not exist is an error naming ``source`` (where its path came from, e.g.
    ``--migrations``): a wrong path must not read as "no migrations, at head"."""
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "not found"
        given = f"{source}: " if source else "default migrations folder (no --migrations, MIGRATE_MIGRATIONS or config key): "
        raise ConfigError(f"{given}migrations folder {what}: {folder}")
    paths, files = _migration_paths(folder)
    migrations = []
    hooks = []
    for path in paths:
        name = os.path.basename(path)
        read = read_migration(path, name.rsplit(".", 1)[0] + ".rollback.sql" in files)
        (hooks if name.startswith(POST_APPLY) else migrations).append(read)
    _check_unique(migrations)
    migrations.sort(key=lambda m: (m.version is None, m.version or 0, m.id))
    if any(m.depends for m in migrations):
        migrations = _sort_by_depends(migrations)
    return migrations, hooks


def _migration_paths(folder: Path) -> tuple[list[str], set[str]]:
    """Migration file paths sorted by name, and the names of all regular files (for .rollback.sql).

    ``os.scandir`` rather than ``Path.iterdir``: its entries know their type without a stat; plain
    strings rather than Path objects: a thousand files cost a tenth less to read.
    """
    names = []
    files = set()
    with os.scandir(folder) as entries:
        for entry in entries:
            name = entry.name
            is_file = entry.is_file()
            if is_file:
                files.add(name)
            if name.startswith((".", "_")) or not (is_file or entry.is_symlink()):
                continue
            if name.endswith(".rollback.sql") or not name.endswith((".sql", ".py")):
                continue
            names.append(name)
    base = str(folder)
    return [os.path.join(base, name) for name in sorted(names)], files


def _read_bytes(path: str | Path) -> bytes:
    """``path.read_bytes()`` without the buffered file object (half the cost for small files).

    Read until an empty read, in 1 MiB requests: for a thousand small files this measured faster
    than one read of the file's size (an extra fstat) and five times faster than stopping at the
    first short read."""
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(fd, _CHUNK):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_text(path: str | Path) -> str:
    """File content as text: UTF-8 (BOM removed), line endings normalised to LF."""
    try:
        data = _read_bytes(path)
    except OSError as err:
        raise MigrationFileError(str(path), f"cannot read file: {err.strerror}") from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise MigrationFileError(str(path), f"not valid UTF-8 (byte 0x{data[err.start]:02x})", line) from None
    if "\x00" in text:
        raise MigrationFileError(str(path), "contains a NUL byte", text.count("\n", 0, text.index("\x00")) + 1)
    return text.replace("\r\n", "\n").replace("\r", "\n")


def checksum(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_migration(path: str | Path, has_rollback_file: bool | None = None) -> MigrationFile:
    """Read and parse one migration file.

    ``has_rollback_file``: whether ``<stem>.rollback.sql`` is a file, if the caller knows.
    """
    path = str(path)
    text = read_text(path)
    name = os.path.basename(path)
    stem, suffix = name.rsplit(".", 1) if "." in name else (name, "")
    match = _VERSION.match(name)
    migration = MigrationFile(
        id=stem,
        path=path,
        format="python" if suffix == "py" else "sql",
        checksum=checksum(text),
        version=int(match.group(1)) if match else None,
        version_label=match.group(1) if match else None,
    )
    if suffix == "py":
        yoyo_adapter.load_python(migration, text)
        return migration
    migration.directives, migration.comment_words = read_header(text)
    if is_goose(text):
        goose = parse_goose(text, path)
        migration.format = "goose"
        migration.up, migration.down = goose.up, goose.down
        migration.transactional = goose.transactional
    else:
        migration.deferred["up"] = lambda: split_statements(text)
        rollback = path[:-len(name)] + stem + ".rollback.sql"
        if has_rollback_file or (has_rollback_file is None and os.path.isfile(rollback)):
            rollback_text = read_text(rollback)  # read now: a bad file is an error when the folder is read
            migration.deferred["down"] = lambda: split_statements(rollback_text)
    _apply_directives(migration)
    return migration


def _apply_directives(migration: MigrationFile) -> None:
    for directive in migration.directives:
        if directive.name == "transactional":
            value = _TRUE.get(directive.value.strip().lower())
            if value is None:
                raise MigrationFileError(
                    migration.path, f"transactional: expected true or false, got {directive.value!r}", directive.line
                )
            migration.transactional = migration.transactional and value
        elif directive.name == "depends":
            migration.depends += tuple(directive.value.split())


def _check_unique(migrations: list[MigrationFile]) -> None:
    by_version: dict[int, MigrationFile] = {}
    by_id: dict[str, MigrationFile] = {}
    for m in migrations:
        if m.id in by_id:
            raise MigrationFileError(m.path, f"same migration id as {by_id[m.id].path}")
        by_id[m.id] = m
        if m.version is not None:
            if m.version in by_version:
                raise MigrationFileError(m.path, f"duplicate version {m.version}: also used by {by_version[m.version].path}")
            by_version[m.version] = m


def _sort_by_depends(migrations: list[MigrationFile]) -> list[MigrationFile]:
    ids = {m.id: m for m in migrations}
    for m in migrations:
        for dep in m.depends:
            if dep not in ids:
                raise MigrationFileError(m.path, f"depends on unknown migration '{dep}'")
    graph = {m.id: {d for d in m.depends} for m in migrations}
    try:
        order = yoyo_adapter.topological_order([m.id for m in migrations], graph)
    except ValueError as cycle:
        raise MigrationFileError(migrations[0].path, f"circular depends among: {cycle}") from None
    return [ids[i] for i in order]
