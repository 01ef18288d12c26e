"""Key family `{prefix}:due:{partition}`: when each sync's health could next change by itself.

Sorted by deadline (epoch seconds), one set per partition, so a tick reads only the syncs now
due in the partitions its process owns, never all syncs.
"""

from __future__ import annotations

from datetime import datetime

from monitor.store.base import Client

TEMPLATE = "{prefix}:due:{partition}"
NO_PARTITION = -1


class DueIndex:
    """Health deadlines per partition."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def key(self, partition: int | None) -> str:
        p = NO_PARTITION if partition is None else partition
        return TEMPLATE.format(prefix=self.prefix, partition=p)

    def schedule(
        self, pipe: Client, partition: int | None, sync_id: str, when: datetime | None
    ) -> None:
        if when is None:
            pipe.zrem(self.key(partition), sync_id)
        else:
            pipe.zadd(self.key(partition), {sync_id: when.timestamp()})

    def schedule_many(
        self, pipe: Client, partition: int | None, sync_ids: list[str], when: datetime
    ) -> None:
        """One ZADD for many syncs with the same deadline."""
        if sync_ids:
            score = when.timestamp()
            pipe.zadd(self.key(partition), dict.fromkeys(sync_ids, score))
