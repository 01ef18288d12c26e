"""Key family `{prefix}:health:{id}`: the last evaluated health of each sync."""

from __future__ import annotations

from monitor.health import Health
from monitor.store.base import Client

TEMPLATE = "{prefix}:health:{id}"


class HealthViews:
    """Evaluated health, kept apart from the view because it depends on the clock."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def key(self, sync_id: str) -> str:
        return TEMPLATE.format(prefix=self.prefix, id=sync_id)

    def keys(self, sync_ids: list[str]) -> list[str]:
        return [self.key(i) for i in sync_ids]

    def get_many(self, client: Client, sync_ids: list[str]) -> list[Health | None]:
        if not sync_ids:
            return []
        raws = client.mget([self.key(i) for i in sync_ids])
        return [None if r is None else Health.model_validate_json(r) for r in raws]

    def put(self, pipe: Client, health: Health) -> None:
        pipe.set(self.key(health.sync_id), health.model_dump_json(exclude_defaults=True))

    def delete(self, pipe: Client, sync_id: str) -> None:
        pipe.delete(self.key(sync_id))
