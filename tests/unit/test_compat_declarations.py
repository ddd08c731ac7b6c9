"""Parsing ``-- compat: rename`` directives and ``[[renames]]`` config entries."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from compat.declarations import (
    DeclarationError,
    check_config_renames,
    declarations_for,
    parse_rename,
    quote_ident,
)
from runner.config import Settings, load_settings
from runner.errors import ConfigError, MigrationFileError
from compat_support import migration


def test_basic_directive():
    d = parse_rename("rename remediation_workflow_catalog.execution_bundle -> container_image window=14d")
    assert (d.schema, d.table, d.old, d.new) == (None, "remediation_workflow_catalog", "execution_bundle", "container_image")
    assert d.window == timedelta(days=14) and d.until is None and d.expose == "old"


def test_schema_qualified_options_any_order_and_no_spaces_around_arrow():
    d = parse_rename("rename app.t.a->b expose=both until=2026-12-31")
    assert (d.schema, d.table, d.old, d.new, d.expose) == ("app", "t", "a", "b", "both")
    # a date means "through that day": expires at the next midnight UTC
    assert d.until == datetime(2027, 1, 1, tzinfo=timezone.utc)


def test_until_timestamp_needs_zone():
    d = parse_rename("rename t.a -> b until=2026-12-31T18:30:00Z")
    assert d.until == datetime(2026, 12, 31, 18, 30, tzinfo=timezone.utc)
    with pytest.raises(DeclarationError, match="time zone"):
        parse_rename("rename t.a -> b until=2026-12-31T18:30:00")


def test_bare_identifiers_fold_to_lower_case_quoted_ones_do_not():
    d = parse_rename('rename App.WorkFlows."Exec.Bundle" -> "container Image" window=1h')
    assert (d.schema, d.table, d.old, d.new) == ("app", "workflows", "Exec.Bundle", "container Image")
    d = parse_rename('rename "We""ird"."a->b" -> c')
    assert (d.table, d.old, d.new) == ('We"ird', "a->b", "c")


def test_non_ascii_letters_are_not_folded():
    d = parse_rename("rename Tàble.Ölfeld -> neu")
    assert (d.table, d.old) == ("tàble", "Ölfeld")


def test_default_window_is_none_until_applied():
    d = parse_rename("rename t.a -> b")
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert d.window is None and d.expires_at(start, timedelta(days=14)) == start + timedelta(days=14)


@pytest.mark.parametrize(
    "text, message",
    [
        ("drop t.a", "unknown compat directive 'drop'"),
        ("rename t -> b", r"expected \[schema.\]table.old_column"),
        ("rename a.b.c.d -> e", r"expected \[schema.\]table.old_column"),
        ("rename t.a b", "expected '->'"),
        ("rename t.a -> ", "expected an identifier"),
        ("rename t.a -> b window=14x", "window: expected a duration"),
        ("rename t.a -> b window=0s", "longer than zero"),
        ("rename t.a -> b window=1d until=2026-01-01", "either window= or until="),
        ("rename t.a -> b expose=new", "expose: expected old or both"),
        ("rename t.a -> b colour=red", "unknown option 'colour'"),
        ("rename t.a -> b window=1d window=2d", "given twice"),
        ("rename t.a -> b window=", "needs a value"),
        ('rename t."a -> b', "unterminated quoted identifier"),
        ("rename t.a -> a", "the same"),
        ("rename t.a -> b,window=1d", "expected a space"),
        ("rename t.a -> b until=2026-02-30", "not a valid date"),
    ],
)
def test_errors(text, message):
    with pytest.raises(DeclarationError, match=message):
        parse_rename(text)


def test_directive_error_names_file_and_line():
    m = migration("018_x", "SELECT 1", ["rename t.a -> b window=14d", "rename t.c -> d window=forever"])
    with pytest.raises(MigrationFileError) as err:
        declarations_for(m, Settings())
    assert str(err.value).startswith("migrations/018_x.sql:2: compat: window: expected a duration")
    assert err.value.exit_code == 2


def test_declarations_carry_source_and_migration():
    m = migration("018_x", "SELECT 1", ["rename t.a -> b window=14d"])
    (d,) = declarations_for(m, Settings())
    assert d.source == "migrations/018_x.sql:1" and d.migration_id == "018_x"


def test_config_entries_match_by_id_or_file_name(tmp_path: Path):
    (tmp_path / "migrate.toml").write_text(
        '[[renames]]\nmigration = "0005_goose_rename.sql"\ntable = "app.Jobs"\nold = \'"BundleRef"\'\n'
        'new = "image"\nwindow = "36h"\n\n'
        '[[renames]]\nmigration = "0006_other"\ntable = "t"\nold = "a"\nnew = "b"\nuntil = 2026-12-31\n'
    )
    settings = load_settings(cwd=tmp_path)
    m5 = migration("0005_goose_rename", "SELECT 1", fmt="goose")
    (d,) = declarations_for(m5, settings)
    assert (d.schema, d.table, d.old, d.new, d.window) == ("app", "jobs", "BundleRef", "image", timedelta(hours=36))
    assert d.source.endswith("migrate.toml: [[renames]] #1") and d.migration_id == "0005_goose_rename"
    (d6,) = declarations_for(migration("0006_other", "SELECT 1"), settings)
    assert d6.until == datetime(2027, 1, 1, tzinfo=timezone.utc)  # TOML date
    check_config_renames(settings, [m5, migration("0006_other", "SELECT 1")])
    with pytest.raises(ConfigError, match=r"\[\[renames\]\] #2: no migration named '0006_other'"):
        check_config_renames(settings, [m5])


def test_bad_config_entry_is_a_config_error(tmp_path: Path):
    (tmp_path / "migrate.toml").write_text(
        '[[renames]]\nmigration = "018_x"\ntable = "a.b.c"\nold = "x"\nnew = "y"\n'
    )
    settings = load_settings(cwd=tmp_path)
    with pytest.raises(ConfigError, match=r"migrate.toml: \[\[renames\]\] #1: table: expected table or schema.table"):
        declarations_for(migration("018_x", "SELECT 1"), settings)


def test_same_rename_declared_twice_is_refused():
    settings = Settings(renames=[{"migration": "018_x", "table": "t", "old": "a", "new": "b"}])
    m = migration("018_x", "SELECT 1", ["rename t.a -> b window=1d"])
    with pytest.raises(ConfigError, match=r"already declared at migrations/018_x.sql:1"):
        declarations_for(m, settings)


_names = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=20).filter(
    lambda s: s.strip() == s and s != ""
)


@given(schema=st.one_of(st.none(), _names), table=_names, old=_names, new=_names,
       window=st.integers(min_value=1, max_value=10**7), expose=st.sampled_from(["old", "both"]))
def test_canonical_text_round_trips(schema, table, old, new, window, expose):
    if old == new:
        return
    text = f"rename {'.'.join(quote_ident(p) for p in ([schema] if schema else []) + [table, old])} -> " \
           f"{quote_ident(new)} window={window}s expose={expose}"
    d = parse_rename(text)
    assert (d.schema, d.table, d.old, d.new, d.expose) == (schema, table, old, new, expose)
    assert d.window == timedelta(seconds=window)
    assert parse_rename(d.text) == d
