"""Key family `{prefix}:health:{id}`: the last evaluated health of each sync."""

from __future__ import annotations

from typing import Any

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field

from monitor.health import EpochMs, Health
from monitor.store.base import Client

TEMPLATE = "{prefix}:health:{id}"
NOT_STORED = {"checks", "credential", "provider", "sync_id"}


class SyncRow(BaseModel):
    """What `/metrics` needs of a sync beyond its health, kept beside it with short keys so
    a scrape reads one small value per sync (and no view)."""

    model_config = ConfigDict(frozen=True)

    p: str | None = None  # provider
    o: str | None = None  # org_id
    n: str | None = None  # name
    f: str | None = None  # sync_frequency
    ls: EpochMs | None = None  # last success
    le: EpochMs | None = None  # last event
    bc: int = 0  # initial backfill complete
    br: float | None = None  # backfill progress ratio
    cf: int = 0  # consecutive failures
    cr: int = 0  # credential failed
    ck: dict[str, str] = Field(default_factory=dict)  # checks that are not healthy


class StoredHealth(Health):
    """The stored form: health plus its metrics row."""

    m: SyncRow | None = None


class HealthViews:
    """Evaluated health (status and history), apart from the view: it depends on the clock."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def key(self, sync_id: str) -> str:
        return TEMPLATE.format(prefix=self.prefix, id=sync_id)

    def keys(self, sync_ids: list[str]) -> list[str]:
        return [self.key(i) for i in sync_ids]

    @staticmethod
    def parse(sync_id: str, raw: bytes | str | None) -> StoredHealth | None:
        if raw is None:
            return None
        values: dict[str, Any] = pydantic_core.from_json(raw)
        values["sync_id"] = sync_id
        return StoredHealth.model_validate(values)

    def get_many(self, client: Client, sync_ids: list[str]) -> list[StoredHealth | None]:
        if not sync_ids:
            return []
        raws = client.mget([self.key(i) for i in sync_ids])
        return [self.parse(i, r) for i, r in zip(sync_ids, raws, strict=True)]

    def put(self, pipe: Client, health: Health, row: SyncRow | None = None) -> None:
        """Stores the status, its history and the metrics row; what derives from the view,
        the incidents and the clock (checks, credential, provider) is recomputed when read."""
        full = StoredHealth.model_construct(**health.__dict__, m=row)
        stored = full.model_dump_json(exclude=NOT_STORED, exclude_defaults=True)
        pipe.set(self.key(health.sync_id), stored)

    def delete(self, pipe: Client, sync_id: str) -> None:
        pipe.delete(self.key(sync_id))
