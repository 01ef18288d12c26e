"""Key family `{prefix}:outbox`: health changes waiting to be published to Kafka.

Written in the same transaction as the health that changed, read through a Redis consumer
group so each entry goes to exactly one publisher, and deleted once the broker acknowledged it.
"""

from __future__ import annotations

from typing import Any

from redis.exceptions import ResponseError

from monitor.store.base import Client, Conn, text

TEMPLATE = "{prefix}:outbox"
GROUP = "publishers"
FIELD = b"event"


class Outbox:
    """A Redis stream of serialized `sync.health.changed` CloudEvents keyed by sync id."""

    def __init__(self, prefix: str) -> None:
        self.key = TEMPLATE.format(prefix=prefix)
        self.published_key = f"{self.key}:published"  # a hash: `count` of acknowledged entries

    def add(self, pipe: Client, sync_id: str, event_json: str) -> None:
        pipe.xadd(self.key, {"sync_id": sync_id, FIELD: event_json})

    def ensure_group(self, client: Conn) -> None:
        try:
            client.xgroup_create(self.key, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def claim_stale(self, client: Conn, consumer: str, idle_ms: int, count: int) -> list[Entry]:
        """Entries a dead publisher took but never acknowledged."""
        reply: Any = client.xautoclaim(self.key, GROUP, consumer, idle_ms, "0-0", count=count)
        return [_entry(e) for e in reply[1] if e and e[1]]

    def renew(self, client: Conn, consumer: str, ids: list[str], held_ms: int) -> set[str]:
        """Restarts the idle time of entries this consumer claimed `held_ms` ago, of those no
        one claimed since (an entry claimed by another has been idle for less)."""
        if not ids:
            return set()
        reply: Any = client.xclaim(
            self.key, GROUP, consumer, max(0, held_ms), list[Any](ids), justid=True
        )
        return {v.decode() if isinstance(v, bytes) else str(v) for v in reply}

    def read(self, client: Conn, consumer: str, count: int, block_ms: int) -> list[Entry]:
        reply: Any = client.xreadgroup(
            GROUP, consumer, {self.key: ">"}, count=count, block=block_ms
        )
        return [_entry(e) for _, entries in reply or [] for e in entries]

    def done(self, client: Conn, ids: list[str]) -> None:
        if ids:
            pipe = client.pipeline(transaction=True)
            pipe.xack(self.key, GROUP, *ids)
            pipe.xdel(self.key, *ids)
            pipe.hincrby(self.published_key, "count", len(ids))
            pipe.execute()

    def pending(self, client: Conn) -> int:
        return int(client.xlen(self.key))


Entry = tuple[str, str, bytes]  # (entry id, sync id, event JSON)


def _entry(raw: Any) -> Entry:
    entry_id, fields = raw
    return text(entry_id), text(fields[b"sync_id"]), bytes(fields[FIELD])
