"""The library side of issue 10's input items: resolve_id, duration ranges, per-source setting checks,
rename windows (the CLI side is tests/reliability/test_rel_inputs_targets.py)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from compat.declarations import DeclarationError, parse_rename, parse_until, window_problem
from runner.config import load_settings
from runner.durations import parse_duration, parse_lock_timeout
from runner.errors import ConfigError, UsageError
from runner.ids import resolve_id
from runner.urls import parse_url

IDS = ["001_create", "002_add", "017_add_bundle", "018_rename", "0170_other", "100_last"]


@pytest.mark.parametrize("text, expected", [
    ("017_add_bundle", "017_add_bundle"), ("017", "017_add_bundle"),
    ("17", "017_add_bundle"), ("0170", "0170_other"), ("017_add", "017_add_bundle"), ("1", "001_create"),
    ("100", "100_last"),
])
def test_resolve_id_accepts_an_unambiguous_prefix(text, expected):
    assert resolve_id(text, IDS) == expected


@pytest.mark.parametrize("text, needles", [
    ("0", ["ambiguous", "001_create", "002_add"]),
    ("add", ["no such migration", "did you mean 002_add, 017_add_bundle"]),
    ("999", ["no such migration"]),
    ("rename", ["no such migration", "did you mean 018_rename"]),
    ("", ["empty"]),
    ("017_add_bundle.sql", ["no such migration"]),  # a file name is not an id
])
def test_resolve_id_refuses_ambiguous_and_unknown(text, needles):
    with pytest.raises(UsageError) as err:
        resolve_id(text, IDS, "--to")
    assert err.value.exit_code == 2
    for needle in needles:
        assert needle in str(err.value)


@pytest.mark.parametrize("text", ["99999999999999d", "1e400", "3651d", "-1s", "9" * 40])
def test_durations_out_of_range_are_value_errors(text):
    with pytest.raises(ValueError):
        parse_duration(text, "--by")


def test_lock_timeout_range():
    assert parse_lock_timeout("2147483647ms") == timedelta(milliseconds=2_147_483_647)
    for bad in ("0s", "0", "0ms", "2147483648ms", "30d"):
        with pytest.raises(ValueError):
            parse_lock_timeout(bad)


def test_far_until_dates_are_declaration_errors():
    with pytest.raises(DeclarationError):
        parse_until("9999-12-31")
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert "in the past" in window_problem(parse_rename("rename t.a -> b until=2025-06-01"), now, timedelta(days=365))
    assert "max_window" in window_problem(parse_rename("rename t.a -> b window=400d"), now, timedelta(days=365))
    assert window_problem(parse_rename("rename t.a -> b window=14d"), now, timedelta(days=365)) is None


@pytest.mark.parametrize("flags, env, needle", [
    ({"database": ""}, {}, "--database"),
    ({}, {"DATABASE_URL": ""}, "DATABASE_URL (environment)"),
    ({}, {"DATABASE_URL": "sqlite:///x\x00.db"}, "control character"),
    ({"migrations": "\t"}, {}, "--migrations"),
    ({"lock_timeout": "0s"}, {}, "--lock-timeout"),
    ({}, {"MIGRATE_LOG_FORMAT": " "}, "MIGRATE_LOG_FORMAT"),
    ({"config": ""}, {}, "--config"),
])
def test_settings_name_the_source_of_a_bad_value(tmp_path: Path, flags, env, needle):
    with pytest.raises(ConfigError) as err:
        load_settings(flags, env=env, cwd=tmp_path)
    assert needle in str(err.value)


def test_settings_remember_their_sources(tmp_path: Path):
    settings = load_settings({"migrations": "m"}, env={"DATABASE_URL": "sqlite:///a.db"}, cwd=tmp_path)
    assert settings.sources == {"migrations": "--migrations", "database": "DATABASE_URL (environment)"}


def test_unknown_url_parameter_is_a_config_error():
    with pytest.raises(ConfigError, match="sslmod"):
        parse_url("postgresql://u@h/db?sslmod=require")
    assert parse_url("postgresql://u@h/db?sslmode=require&schema=app").search_path == "app"
