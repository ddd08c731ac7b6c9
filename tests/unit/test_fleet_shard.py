"""Sharding a fleet: each target in exactly one shard, stable when targets are added, defaults
from the environment (Kubernetes Indexed Jobs), bad values named."""

from __future__ import annotations

import pytest

from runner.errors import UsageError
from runner.fleet_shard import Shard, in_shard, resolve_shard, shard_of
from runner.fleet_targets import Target

NAMES = [f"tenant_{i}" for i in range(500)]


def test_every_target_is_in_exactly_one_shard_and_shards_are_balanced():
    for count in (1, 2, 3, 7):
        owners = {name: [i for i in range(count) if Shard(i, count).owns(name)] for name in NAMES}
        assert all(len(found) == 1 for found in owners.values())
        sizes = [sum(1 for found in owners.values() if found == [i]) for i in range(count)]
        assert min(sizes) > len(NAMES) / count / 2, sizes


def test_adding_targets_or_a_shard_moves_few_targets():
    before = {name: shard_of(name, 4) for name in NAMES}
    after = {name: shard_of(name, 4) for name in NAMES + [f"new_{i}" for i in range(100)]}
    assert all(after[name] == before[name] for name in NAMES)
    grown = {name: shard_of(name, 5) for name in NAMES}
    moved = [name for name in NAMES if grown[name] != before[name]]
    assert all(grown[name] == 4 for name in moved)  # only to the new shard
    assert len(moved) < len(NAMES) / 3


def test_in_shard_filters_a_stream():
    targets = [Target(name, "postgresql://h/db") for name in NAMES[:50]]
    parts = [list(in_shard(iter(targets), Shard(i, 3))) for i in range(3)]
    assert sorted(t.name for part in parts for t in part) == sorted(t.name for t in targets)
    assert list(in_shard(targets, None)) == targets


def test_resolve_shard_from_flags_and_environment():
    assert resolve_shard(None, None, {}) is None
    assert resolve_shard(1, 3, {}) == Shard(1, 3)
    assert resolve_shard(None, 3, {"JOB_COMPLETION_INDEX": "2"}) == Shard(2, 3)
    assert resolve_shard(None, None, {"JOB_COMPLETION_INDEX": "0", "MIGRATE_SHARD_COUNT": "2"}) == Shard(0, 2)
    assert resolve_shard(None, None, {"MIGRATE_SHARD_INDEX": "1", "JOB_COMPLETION_INDEX": "0",
                                      "MIGRATE_SHARD_COUNT": "2"}) == Shard(1, 2)
    assert resolve_shard(0, None, {"JOB_COMPLETION_INDEX": "1", "MIGRATE_SHARD_COUNT": "2"}) == Shard(0, 2)


@pytest.mark.parametrize("index, count, env, message", [
    (None, None, {"JOB_COMPLETION_INDEX": "1"}, "JOB_COMPLETION_INDEX is set (1) but the number of shards is not"),
    (3, 3, {}, "--shard-index: shard index 3 is out of range for 3 shard(s)"),
    (None, 2, {}, "--shard-count is 2 but no shard index"),
    (None, None, {"JOB_COMPLETION_INDEX": "x", "MIGRATE_SHARD_COUNT": "2"}, "JOB_COMPLETION_INDEX: expected a whole"),
    (None, None, {"JOB_COMPLETION_INDEX": "0", "MIGRATE_SHARD_COUNT": "0"},
     "MIGRATE_SHARD_COUNT: expected a number >= 1"),
    (0, 0, {}, "--shard-count: expected a number >= 1"),
])
def test_bad_shard_settings_are_named(index, count, env, message):
    with pytest.raises(UsageError) as err:
        resolve_shard(index, count, env)
    assert message in str(err.value)
