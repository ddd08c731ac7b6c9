"""Compatibility windows: consumers pinned at a version keep seeing its tables' shapes.

A migration that changes the shape of an existing table (a column added, renamed, dropped or
retyped, a table renamed) declares it (``-- compat: rename table.old -> new window=14d``, ``add``,
``drop``, ``retype``, ``rename-table``; :func:`compat.python.rename_column` in a ``.py``
migration; ``[[renames]]`` config entries), or, with ``[compat] mode = "auto"``, needs no
declaration. The :class:`compat.hook.CompatHook` verifies declared changes and, in the same
transaction, gives every open window (a per-version compat schema on PostgreSQL, views named by a
template on SQLite) a view of the table in that version's exact shape (:mod:`compat.shapes`),
and records each in the ``_migrate_shims`` registry. :mod:`compat.lifecycle` lists, audits, extends and drops shims; :mod:`compat.routes`
routes lagging consumers to them.

This package import is deliberately cheap: nothing here imports psycopg or pglast; the
submodules import them where needed.
"""

__all__ = ["rename_column"]


def rename_column(*args, **kwargs):  # type: ignore[no-untyped-def]
    """Shortcut for :func:`compat.python.rename_column` (imported lazily)."""
    from compat.python import rename_column as _rename_column

    return _rename_column(*args, **kwargs)
