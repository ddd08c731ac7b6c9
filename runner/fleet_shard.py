"""Sharding a fleet across processes that never talk to each other (Kubernetes Indexed Jobs, CI matrices).

Each target belongs to exactly one of K shards, chosen by rendezvous hashing of its name: the
shard whose hash of (shard, name) is highest. A target's shard depends only on its name and K,
so adding or removing targets never moves the others, and going from K to K+1 shards moves only
the targets the new shard wins (about 1/(K+1) of them).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TypeVar

from runner.errors import UsageError

INDEX_ENV = ("MIGRATE_SHARD_INDEX", "JOB_COMPLETION_INDEX")  # the first one set wins
COUNT_ENV = "MIGRATE_SHARD_COUNT"

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def owns(self, name: str) -> bool:
        return shard_of(name, self.count) == self.index


def _score(name: str, shard: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{shard}\x00{name}".encode()).digest()[:8], "big")


def shard_of(name: str, count: int) -> int:
    """The shard (0..count-1) of the target ``name``."""
    return max(range(count), key=lambda shard: _score(name, shard))


def _integer(value: str | int, source: str, minimum: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise UsageError(f"{source}: expected a whole number, got {value!r}") from None
    if number < minimum:
        raise UsageError(f"{source}: expected a number >= {minimum}, got {number}")
    return number


def resolve_shard(index: int | None, count: int | None, env: Mapping[str, str]) -> Shard | None:
    """The shard this process runs: flags first, then MIGRATE_SHARD_INDEX / JOB_COMPLETION_INDEX and
    MIGRATE_SHARD_COUNT; None when no sharding is asked for."""
    index_source = "--shard-index"
    if index is None:
        for variable in INDEX_ENV:
            if env.get(variable, "") != "":
                index, index_source = _integer(env[variable], variable, 0), variable
                break
    count_source = "--shard-count"
    if count is None and env.get(COUNT_ENV, "") != "":
        count, count_source = _integer(env[COUNT_ENV], COUNT_ENV, 1), COUNT_ENV
    if count is None and index is None:
        return None
    if count is None:
        raise UsageError(f"{index_source} is set ({index}) but the number of shards is not: give --shard-count K "
                         f"(or {COUNT_ENV}; in a Kubernetes Indexed Job, the Job's completions)")
    if count < 1:
        raise UsageError(f"{count_source}: expected a number >= 1, got {count}")
    if index is None:
        if count == 1:
            return Shard(0, 1)
        raise UsageError(f"{count_source} is {count} but no shard index: give --shard-index I "
                         f"(or JOB_COMPLETION_INDEX / MIGRATE_SHARD_INDEX)")
    if not 0 <= index < count:
        raise UsageError(f"{index_source}: shard index {index} is out of range for {count} shard(s) (0..{count - 1})")
    return Shard(index, count)


def in_shard(items: Iterable[T], shard: Shard | None, name_of=lambda item: item.name) -> Iterator[T]:
    """Only the items of ``shard`` (all of them without sharding)."""
    for item in items:
        if shard is None or shard.owns(name_of(item)):
            yield item
