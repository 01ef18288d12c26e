"""Key family `{prefix}:sync:{id}`: one JSON view per sync, tombstones expire."""

from __future__ import annotations

from collections.abc import Iterable

from monitor.store.base import Client
from monitor.views import SyncView

TEMPLATE = "{prefix}:sync:{id}"
TOMBSTONE_TTL_SECONDS = 7 * 24 * 3600


class SyncViews:
    """Reads and writes sync views; a deleted sync keeps a small tombstone for idempotence."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def key(self, sync_id: str) -> str:
        return TEMPLATE.format(prefix=self.prefix, id=sync_id)

    def keys(self, sync_ids: Iterable[str]) -> list[str]:
        return [self.key(i) for i in sync_ids]

    @staticmethod
    def parse(raw: bytes | str | None) -> SyncView | None:
        return None if raw is None else SyncView.model_validate_json(raw)

    def get(self, client: Client, sync_id: str) -> SyncView | None:
        return self.parse(client.get(self.key(sync_id)))

    def get_many(self, client: Client, sync_ids: list[str]) -> list[SyncView | None]:
        if not sync_ids:
            return []
        return [self.parse(raw) for raw in client.mget(self.keys(sync_ids))]

    def put(self, pipe: Client, view: SyncView) -> None:
        payload = view.model_dump_json(exclude_defaults=True)
        ttl = TOMBSTONE_TTL_SECONDS if view.deleted else None
        pipe.set(self.key(view.id), payload, ex=ttl)
