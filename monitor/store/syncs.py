"""Key families `{prefix}:sync:{id}` and `{prefix}:facts:{id}`: each sync's view, in two parts.

The seed part holds what only the API shows (credential, metadata, rate limit): it changes
rarely, so the hot path seldom rewrites it. The facts hold everything health reads, so a
health sweep reads and decompresses one small value per sync, not both.

Facts packed with the `OLD_FACTS` tag come from the earlier split, when the seed part also
held the sync's name, provider, status and times: for those the seed is read too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from functools import cache
from typing import Any

import pydantic_core
from pydantic import BaseModel, ConfigDict, create_model

from monitor.store.base import Client
from monitor.store.codec import FACTS, OLD_FACTS, SEED, pack, unpack
from monitor.views import Applied, SyncView, trusted

TEMPLATE = "{prefix}:sync:{id}"
FACTS_TEMPLATE = "{prefix}:facts:{id}"
TOMBSTONE_TTL_SECONDS = 7 * 24 * 3600

# What health never reads and changes rarely; everything else is a fact.
SEED_PART: set[str] = set(
    {
        "id", "stream_id", "rate_limit", "credential_id", "credential", "max_age_days",
        "metadata", "updated_at",
    }
)  # fmt: skip
FACTS_PART: set[str] = set(SyncView.model_fields) - SEED_PART
STORED_SEED = SEED_PART - {"id"}  # the key holds the id
Reader = Callable[[list[str]], Sequence[Any]]  # MGET: the values of these keys, in order


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
        seed = TEMPLATE.format(prefix=self.prefix, id="")
        facts = FACTS_TEMPLATE.format(prefix=self.prefix, id="")
        out: list[str] = []
        for i in sync_ids:
            out += (seed + i, facts + i)
        return out

    def facts_keys(self, sync_ids: Iterable[str]) -> list[str]:
        head = FACTS_TEMPLATE.format(prefix=self.prefix, id="")
        return [head + i for i in sync_ids]

    @staticmethod
    def parse(sync_id: str, seed: bytes | None, facts: bytes | None) -> SyncView | None:
        """The view from its two stored parts (the id is the key's, not stored again)."""
        if seed is None:
            return None
        values: dict[str, Any] = pydantic_core.from_json(unpack(seed))
        if facts is not None:
            if facts[:1] != OLD_FACTS:  # a seed of the earlier split may hold stale facts
                values = {k: v for k, v in values.items() if k in STORED_SEED}
            values.update(pydantic_core.from_json(unpack(facts)))
        values["id"] = sync_id
        return SyncView.model_validate(values)

    def parse_many(self, sync_ids: Sequence[str], raw: Sequence[Any]) -> list[SyncView | None]:
        """Views from `mget(keys(sync_ids))`."""
        return [self.parse(i, raw[2 * n], raw[2 * n + 1]) for n, i in enumerate(sync_ids)]

    def parse_fields(
        self,
        sync_ids: Sequence[str],
        facts: Sequence[Any],
        fields: frozenset[str],
        mget: Reader,
    ) -> list[SyncView | None]:
        """Views from `mget(facts_keys(sync_ids))` holding only `fields`, all facts (of
        `applied`, only its partition): a fraction of the cost when the rest is never read,
        as in a health sweep.

        A sync whose facts are missing or of the earlier split is read again, both parts in
        one `mget` (atomic: a batch rewriting it in between cannot pair old facts with a new
        seed), and parsed from that read. Reading any other field of a view raises
        AttributeError.
        """
        model = _subset(fields)
        applied = "applied" in fields
        view_set, applied_set = set(fields | {"id"}), {"partition"}  # shared: frozen models
        again = [i for i, f in zip(sync_ids, facts, strict=True) if f is None or f[:1] == OLD_FACTS]
        reread: dict[str, tuple[Any, Any]] = {}
        if again:
            both = mget(self.keys(again))
            reread = {i: (both[2 * n], both[2 * n + 1]) for n, i in enumerate(again)}
        views: list[SyncView | None] = []
        for sync_id, raw in zip(sync_ids, facts, strict=True):
            if sync_id in reread:
                seed, raw = reread[sync_id]
                if seed is None:
                    views.append(None)
                    continue
                if raw is None or raw[:1] == OLD_FACTS:  # the seed holds some facts too
                    document = _joined(unpack(seed), raw and unpack(raw))
                else:
                    document = unpack(raw)
            else:  # facts of this split: all a sweep reads
                document = unpack(raw)
            part = model.model_validate_json(document)
            values = part.__dict__  # the part is thrown away: its values become the view's
            values["id"] = sync_id
            if applied:
                partition = {"partition": values["applied"].partition}
                values["applied"] = trusted(Applied, partition, applied_set)
            views.append(trusted(SyncView, values, view_set))
        return views

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


class _Partition(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    partition: int | None = None


@cache
def _subset(fields: frozenset[str]) -> type[BaseModel]:
    """A model of some view fields: validating JSON with it skips the others unparsed."""
    unknown = fields - set(SyncView.model_fields)
    if unknown:
        raise ValueError(f"not fields of a sync view: {sorted(unknown)}")
    if fields & STORED_SEED:
        raise ValueError(f"not facts: {sorted(fields & STORED_SEED)}")
    definitions: dict[str, Any] = {
        f: (SyncView.model_fields[f].annotation, SyncView.model_fields[f])
        for f in sorted(fields - {"id", "applied"})
    }
    if "applied" in fields:
        definitions["applied"] = (_Partition, _Partition())
    config = ConfigDict(frozen=True, extra="ignore")
    return create_model("SyncViewPart", __config__=config, **definitions)


def _joined(seed: bytes, facts: bytes | None) -> bytes:
    """One JSON object of the two stored parts (they share no key)."""
    if facts is None:
        return seed
    if seed[-1:] != b"}" or facts[:1] != b"{":  # not as `model_dump_json` writes them
        seed, facts = seed.strip(), facts.strip()
    if facts == b"{}":
        return seed
    if seed == b"{}":
        return facts
    return b"".join((seed[:-1], b",", facts[1:]))


def _seed_changed(view: SyncView, old: SyncView) -> bool:
    new_values, old_values = view.__dict__, old.__dict__
    return any(new_values[f] is not old_values[f] for f in SEED_PART)
