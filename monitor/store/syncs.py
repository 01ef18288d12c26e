"""Key families `{prefix}:sync:{id}` and `{prefix}:facts:{id}`: each sync's view, in two parts.

The seed's fields change rarely (created, updated, disabled); the facts change with every
event. Writing only what changed keeps the hot path's serialization small.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pydantic_core

from monitor.store.base import Client
from monitor.store.codec import FACTS, SEED, pack, unpack
from monitor.views import SyncView

TEMPLATE = "{prefix}:sync:{id}"
FACTS_TEMPLATE = "{prefix}:facts:{id}"
TOMBSTONE_TTL_SECONDS = 7 * 24 * 3600

# The part that changes rarely; everything else is a fact.
SEED_PART: set[str] = set(
    {
        "id", "provider", "stream_id", "name", "status", "org_id", "collection_ids",
        "rate_limit", "credential_id", "credential", "max_age_days", "sync_frequency",
        "metadata", "created_at", "updated_at", "known", "disabled_reason",
        "status_changed_at", "deleted_at",
    }
)  # fmt: skip
FACTS_PART: set[str] = set(SyncView.model_fields) - SEED_PART
STORED_SEED = SEED_PART - {"id"}  # the key holds the id


class SyncViews:
    """Reads and writes sync views; a deleted sync keeps a small tombstone for idempotence."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def key(self, sync_id: str) -> str:
        return TEMPLATE.format(prefix=self.prefix, id=sync_id)

    def facts_key(self, sync_id: str) -> str:
        return FACTS_TEMPLATE.format(prefix=self.prefix, id=sync_id)

    def keys(self, sync_ids: Iterable[str]) -> list[str]:
        """Both keys of each sync, pairwise: what `parse_many` takes back."""
        out: list[str] = []
        for i in sync_ids:
            out += (self.key(i), self.facts_key(i))
        return out

    @staticmethod
    def parse(sync_id: str, seed: bytes | None, facts: bytes | None) -> SyncView | None:
        """The view from its two stored parts (the id is the key's, not stored again)."""
        if seed is None:
            return None
        values: dict[str, Any] = pydantic_core.from_json(unpack(seed))
        if facts is not None:
            values.update(pydantic_core.from_json(unpack(facts)))
        values["id"] = sync_id
        return SyncView.model_validate(values)

    def parse_many(self, sync_ids: Sequence[str], raw: Sequence[Any]) -> list[SyncView | None]:
        """Views from `mget(keys(sync_ids))`."""
        return [self.parse(i, raw[2 * n], raw[2 * n + 1]) for n, i in enumerate(sync_ids)]

    def get(self, client: Client, sync_id: str) -> SyncView | None:
        return self.get_many(client, [sync_id])[0]

    def get_many(self, client: Client, sync_ids: list[str]) -> list[SyncView | None]:
        if not sync_ids:
            return []
        return self.parse_many(sync_ids, client.mget(self.keys(sync_ids)))

    def put_many(self, pipe: Client, changes: Sequence[tuple[SyncView, SyncView | None]]) -> None:
        """Queues the facts of each changed view, and its seed part only when that changed.

        One MSET for all live views keeps a batch to a handful of commands; tombstones get
        their own SET with an expiry.
        """
        live: dict[str, bytes] = {}
        for view, old in changes:
            values: dict[str, bytes] = {}
            if old is None or old.deleted != view.deleted or _seed_changed(view, old):
                seed = view.model_dump_json(include=STORED_SEED, exclude_defaults=True)
                values[self.key(view.id)] = pack(SEED, seed)
            facts = view.model_dump_json(include=FACTS_PART, exclude_defaults=True)
            values[self.facts_key(view.id)] = pack(FACTS, facts)
            if view.deleted:
                for key, value in values.items():
                    pipe.set(key, value, ex=TOMBSTONE_TTL_SECONDS)
            else:
                live.update(values)
        if live:
            pipe.mset(live)


def _seed_changed(view: SyncView, old: SyncView) -> bool:
    new_values, old_values = view.__dict__, old.__dict__
    return any(new_values[f] is not old_values[f] for f in SEED_PART)
