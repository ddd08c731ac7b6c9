"""Compatibility shims for declared column renames.

A migration that renames a column declares it (``-- compat: rename
table.old -> new window=14d``, :func:`compat.python.rename_column` in a ``.py``
migration, or a ``[[renames]]`` config entry). The :class:`compat.hook.CompatHook`
verifies the rename and, in the same transaction, creates a view with the
previous version's exact shape in a per-version compat schema (PostgreSQL) or a
view named by a template (SQLite), and records it in the ``_migrate_shims``
registry. :mod:`compat.lifecycle` lists, audits, extends and drops shims; :mod:`compat.routes`
routes lagging consumers to them.

This package import is deliberately cheap: nothing here imports psycopg or pglast; the
submodules import them where needed.
"""

__all__ = ["rename_column"]


def rename_column(*args, **kwargs):  # type: ignore[no-untyped-def]
    """Shortcut for :func:`compat.python.rename_column` (imported lazily)."""
    from compat.python import rename_column as _rename_column

    return _rename_column(*args, **kwargs)
