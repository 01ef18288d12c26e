"""Key family `{prefix}:fence:{topic}:{partition}`: the last offset whose effects are in Redis.

Every batch write WATCHes these keys and advances them in the same transaction, so a
replay or a consumer that lost its partition can never overwrite newer state.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from monitor.store.base import Client

TEMPLATE = "{prefix}:fence:{topic}:{partition}"


class Fences:
    """Per-partition high-water marks of applied offsets."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def key(self, topic: str, partition: int) -> str:
        return TEMPLATE.format(prefix=self.prefix, topic=topic, partition=partition)

    def get_many(self, client: Client, topic: str, partitions: Iterable[int]) -> dict[int, int]:
        """Applied offset per partition; -1 where nothing was applied yet."""
        parts = sorted(set(partitions))
        if not parts:
            return {}
        return self.parse(parts, client.mget(self.keys(topic, parts)))

    def keys(self, topic: str, partitions: Sequence[int]) -> list[str]:
        return [self.key(topic, p) for p in partitions]

    @staticmethod
    def parse(partitions: Sequence[int], raws: Sequence[Any]) -> dict[int, int]:
        """Offsets from an MGET of `keys(partitions)`; -1 where nothing was applied yet."""
        return {p: -1 if r is None else int(r) for p, r in zip(partitions, raws, strict=True)}

    def put(self, pipe: Client, topic: str, partition: int, offset: int) -> None:
        pipe.set(self.key(topic, partition), offset)
