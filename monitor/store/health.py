"""Key family `{prefix}:health:{id}`: the last evaluated health of each sync."""

from __future__ import annotations

from typing import Any

import pydantic_core

from monitor.health import Health
from monitor.store.base import Client

TEMPLATE = "{prefix}:health:{id}"
NOT_STORED = {"checks", "credential", "provider", "sync_id"}


class HealthViews:
    """Evaluated health (status and history), apart from the view: it depends on the clock."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def key(self, sync_id: str) -> str:
        return TEMPLATE.format(prefix=self.prefix, id=sync_id)

    def keys(self, sync_ids: list[str]) -> list[str]:
        return [self.key(i) for i in sync_ids]

    @staticmethod
    def parse(sync_id: str, raw: bytes | str | None) -> Health | None:
        if raw is None:
            return None
        values: dict[str, Any] = pydantic_core.from_json(raw)
        values["sync_id"] = sync_id
        return Health.model_validate(values)

    def get_many(self, client: Client, sync_ids: list[str]) -> list[Health | None]:
        if not sync_ids:
            return []
        raws = client.mget([self.key(i) for i in sync_ids])
        return [self.parse(i, r) for i, r in zip(sync_ids, raws, strict=True)]

    def put(self, pipe: Client, health: Health) -> None:
        """Stores the status and its history (~150 B); what derives from the view, the
        incidents and the clock (checks, credential, provider) is recomputed when read."""
        stored = health.model_dump_json(exclude=NOT_STORED, exclude_defaults=True)
        pipe.set(self.key(health.sync_id), stored)

    def delete(self, pipe: Client, sync_id: str) -> None:
        pipe.delete(self.key(sync_id))
