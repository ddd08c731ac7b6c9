"""Consumer contracts read from a consumer's SQLAlchemy models: ``migrate verify --consumer-models``.

``--consumer-models myapp.models:Base`` imports ``myapp.models`` (from the working
directory, then ``sys.path``), takes ``Base`` and turns what it maps into the
:class:`runner.contracts.Contract` a contract file would give, so it is checked
exactly like one (directly, then through active shims). Accepted objects:

- a declarative Base (``DeclarativeBase`` subclass or ``declarative_base()``):
  every class mapped in its registry, plus the tables of ``Base.metadata`` that
  no class maps (association tables), with all their columns;
- a ``registry``: its mapped classes;
- a ``MetaData``: every table, with all its columns;
- a mapped class: its own table(s);
- a module (``myapp.models``, no ``:``, or an attribute that is a module): the
  mapped classes found in it.

Per table, the columns are those its mapped classes map (a class's columns,
deferred ones included; those left out with ``exclude_properties`` are not;
joined and single-table inheritance add up). Expressions mapped with
``column_property(...)`` and classes mapped to a ``select()`` are not checked.
Tables are matched by name in the managed schema (a ``schema=`` on the model's
table is not looked at).

``strict_select_star`` is false: the ORM names the columns it selects and
inserts, so a column the database has and the model does not map breaks
nothing, while a mapped column the database lacks breaks every query of that
class ("column ... does not exist"). (Not checked: a new NOT NULL column without
a default breaks the ORM's INSERTs.)

A spec that cannot be used is a ConfigError (exit 2) naming it: malformed, a
module that cannot be imported (with the file and line where importing failed),
a missing attribute, an object that is none of the above, or one that maps no
table. Everything is read before the database is touched.
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
import sys
import traceback
import types
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Column, MetaData, Table
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import Mapper, registry

from runner.contracts import Contract, TableNeed
from runner.errors import ConfigError

__all__ = ["load_model_contract", "load_model_contracts"]

OPTION = "--consumer-models"
_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_ACCEPTED = "a SQLAlchemy declarative Base, registry, MetaData, mapped class or module of mapped classes"


def load_model_contracts(specs: Sequence[str]) -> list[Contract]:
    return [load_model_contract(spec) for spec in specs]


def load_model_contract(spec: str) -> Contract:
    """Import ``spec`` (``package.module:Attribute`` or ``package.module``) and turn its models into a Contract."""
    module_name, colon, attribute = spec.strip().partition(":")
    if not _DOTTED.match(module_name) or (colon and not _DOTTED.match(attribute)):
        raise ConfigError(f"{OPTION} {spec!r}: expected MODULE:ATTRIBUTE (e.g. myapp.models:Base) or MODULE")
    module = _import(spec, module_name)
    target: Any = module
    where = module_name
    for part in attribute.split(".") if colon else []:
        if not hasattr(target, part):
            hint = difflib.get_close_matches(part, [n for n in dir(target) if not n.startswith("__")], n=1)
            also = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise ConfigError(f"{OPTION} {spec}: {where} ({_shown(module)}) has no attribute '{part}'{also}")
        target = getattr(target, part)
        where = f"{where}.{part}"
    columns = _columns_of(spec, where, target)
    if not columns:
        raise ConfigError(f"{OPTION} {spec}: {where} ({_shown(module)}) maps no table")
    return Contract(_shown(module), spec,
                    tuple(TableNeed(table, tuple(cols), strict_select_star=False) for table, cols in columns.items()))


def _import(spec: str, module_name: str) -> types.ModuleType:
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path  # the `migrate` script's sys.path lacks it
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and (module_name == err.name or module_name.startswith(err.name + ".")):
            raise ConfigError(f"{OPTION} {spec}: cannot import module '{module_name}': no module named "
                              f"'{err.name}' in the working directory or on sys.path") from None
        raise ConfigError(f"{OPTION} {spec}: importing '{module_name}' failed at {_where(err)}: "
                          f"{_one_line(err)}") from None
    except SyntaxError as err:
        raise ConfigError(f"{OPTION} {spec}: importing '{module_name}' failed at {err.filename}:{err.lineno}: "
                          f"SyntaxError: {err.msg}") from None
    except (Exception, SystemExit) as err:  # noqa: BLE001 - the consumer's code: any error is bad input
        raise ConfigError(f"{OPTION} {spec}: importing '{module_name}' failed at {_where(err)}: "
                          f"{_one_line(err)}") from None
    finally:
        if added:
            sys.path.remove(cwd)


def _where(err: BaseException) -> str:
    frames = traceback.extract_tb(err.__traceback__)
    outside = [f for f in frames if "importlib" not in f.filename] or frames
    return f"{outside[-1].filename}:{outside[-1].lineno}" if outside else "?"


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _shown(module: types.ModuleType) -> str:
    """The module's file, relative to the working directory when inside it."""
    file = getattr(module, "__file__", None)
    if not file:
        return module.__name__
    try:
        return str(Path(file).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return file


# --------------------------------------------------------------------------- what the models map

def _columns_of(spec: str, where: str, target: Any) -> dict[str, list[str]]:
    """table name -> column names, in declaration order."""
    out: dict[str, list[str]] = {}
    if isinstance(target, MetaData):
        _add_tables(out, target.tables.values())
    elif isinstance(target, registry):
        _add_mappers(out, target.mappers)
    elif isinstance(target, types.ModuleType):
        _add_mappers(out, [m for m in (_mapper(v) for v in vars(target).values()) if m is not None])
    elif _mapper(target) is not None:
        _add_mappers(out, [_mapper(target)])
    elif isinstance(target, type) and isinstance(getattr(target, "registry", None), registry):
        _add_mappers(out, target.registry.mappers)
        mapped = {id(t) for m in target.registry.mappers for t in m.tables}
        metadata = getattr(target, "metadata", None)
        if isinstance(metadata, MetaData):
            _add_tables(out, [t for t in metadata.tables.values() if id(t) not in mapped])
    else:
        kind = type(target).__name__ if not isinstance(target, type) else f"class {target.__qualname__}"
        raise ConfigError(f"{OPTION} {spec}: {where} is {_article(kind)} {kind}, not {_ACCEPTED}")
    return out


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _mapper(value: Any) -> Mapper[Any] | None:
    if not isinstance(value, type):
        return None
    found = sa_inspect(value, raiseerr=False)
    return found if isinstance(found, Mapper) else None


def _add_tables(out: dict[str, list[str]], tables: Iterable[Table]) -> None:
    for table in tables:
        _add(out, table.name, [c.name for c in table.columns])


def _add_mappers(out: dict[str, list[str]], mappers: Iterable[Mapper[Any]]) -> None:
    # Mapper.columns is known without configuring the mappers: relationships are not resolved (their
    # targets may live in modules the application imports elsewhere).
    for mapper in sorted(mappers, key=lambda m: (m.class_.__module__, m.class_.__qualname__)):
        for column in mapper.columns:
            if isinstance(column, Column) and isinstance(column.table, Table):
                _add(out, column.table.name, [column.name])


def _add(out: dict[str, list[str]], table: str, names: list[str]) -> None:
    have = out.setdefault(table, [])
    have.extend(n for n in names if n not in have)
