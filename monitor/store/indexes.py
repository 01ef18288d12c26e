"""Key family `{prefix}:idx:{field}:{value}`: what serves list filters and cursors.

`status` sets are sorted sets with score 0: ordered by sync id, and together they hold every
live sync, so `ZRANGEBYLEX` pages through all syncs from a cursor. The other fields are plain
sets (half the memory of a sorted set): a filtered page reads the smallest matching set, or,
when that set is large, walks the ordered status sets and checks membership. Either way a
request costs O(matching syncs) or O(page / density), never a scan of all syncs.
"""

from __future__ import annotations

from collections.abc import Mapping

from monitor.enums import SyncStatus
from monitor.store.base import Client, text
from monitor.views import SyncView

TEMPLATE = "{prefix}:idx:{field}:{value}"
HEALTH_TEMPLATE = "{prefix}:idx:health:{provider}:{status}"  # written by the health engine
VALUES = "{prefix}:idx-values:{field}"  # which values a field has had, for summaries
ORDERED = "status"
HEALTH = "health.status"
CHUNK = 512
SMALL_SET = 20_000  # up to this size a filtered page reads and sorts the whole set

Entries = frozenset[tuple[str, str]]


def entries(view: SyncView | None) -> Entries:
    """The (field, value) pairs of a live sync's own fields (health is the engine's)."""
    if view is None or view.deleted_at is not None or not view.known:
        return _NONE
    pairs = [("status", _STATUS_VALUES[view.status])]
    if view.provider is not None:
        pairs.append(("provider", view.provider))
    if view.org_id is not None:
        pairs.append(("org_id", view.org_id))
    if view.stream_id is not None:
        pairs.append(("stream_id", view.stream_id))
    return frozenset(pairs)


_NONE: Entries = frozenset()
_STATUS_VALUES = {s: s.value for s in SyncStatus}  # `.value` is a slow descriptor per event


class Indexes:
    """Maintains the filter indexes and answers filtered, cursor-paged id lists."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        # Every live sync is in exactly one status set: together they list all syncs.
        self.all_keys = [self.key(ORDERED, s.value) for s in SyncStatus]

    def key(self, field: str, value: str) -> str:
        return TEMPLATE.format(prefix=self.prefix, field=field, value=value)

    def health_key(self, provider: str | None, status: str) -> str:
        """Health is indexed per provider and status: counts by both are one SCARD each."""
        return HEALTH_TEMPLATE.format(prefix=self.prefix, provider=provider or "", status=status)

    def move_health(
        self,
        pipe: Client,
        sync_id: str,
        old: tuple[str | None, str] | None,
        new: tuple[str | None, str] | None,
    ) -> None:
        """Moves a sync between (provider, status) health sets; None is no set."""
        if old == new:
            return
        if old is not None:
            pipe.srem(self.health_key(*old), sync_id)
        if new is not None:
            pipe.sadd(self.health_key(*new), sync_id)

    def update(self, pipe: Client, sync_id: str, old: Entries, new: Entries) -> None:
        self.update_many(pipe, [(sync_id, old, new)])

    def update_many(self, pipe: Client, changes: list[tuple[str, Entries, Entries]]) -> None:
        """Queues one removal and one addition per index key, however many syncs moved."""
        removals: dict[tuple[str, str], list[str]] = {}
        additions: dict[tuple[str, str], list[str]] = {}
        for sync_id, old, new in changes:
            if old == new:
                continue
            for entry in old - new:
                removals.setdefault(entry, []).append(sync_id)
            for entry in new - old:
                additions.setdefault(entry, []).append(sync_id)
        for (field, value), ids in removals.items():
            if field == ORDERED:
                pipe.zrem(self.key(field, value), *ids)
            else:
                pipe.srem(self.key(field, value), *ids)
        for (field, value), ids in additions.items():
            if field == ORDERED:
                pipe.zadd(self.key(field, value), dict.fromkeys(ids, 0))
            else:
                pipe.sadd(self.key(field, value), *ids)
        providers = {value for field, value in additions if field == "provider"}
        if providers:
            pipe.sadd(VALUES.format(prefix=self.prefix, field="provider"), *providers)

    def values(self, client: Client, field: str) -> list[str]:
        raw = client.smembers(VALUES.format(prefix=self.prefix, field=field))
        return sorted(text(v) for v in raw)

    def members(self, client: Client, field: str, value: str) -> list[str]:
        """Every sync id under one value of an unordered field (e.g. a provider's syncs)."""
        return sorted(text(m) for m in client.smembers(self.key(field, value)))

    def page(
        self, client: Client, filters: Mapping[str, str], after: str | None, limit: int
    ) -> tuple[list[str], bool]:
        """Up to `limit` ids after the cursor matching every filter, and whether more exist."""
        drivers = [self.key(ORDERED, filters[ORDERED])] if ORDERED in filters else self.all_keys
        checks = self._groups(client, filters)
        if checks:
            pipe = client.pipeline(transaction=False)
            for group in checks:
                for key in group:
                    pipe.scard(key)
            sizes = iter(pipe.execute())
            totals = [sum(int(next(sizes)) for _ in group) for group in checks]
            size, smallest = min(zip(totals, range(len(checks)), strict=True))
            if size <= SMALL_SET:
                return self._from_set(client, checks[smallest], drivers, checks, after, limit)
        return self._walk(client, drivers, checks, after, limit)

    def _groups(self, client: Client, filters: Mapping[str, str]) -> list[list[str]]:
        """Each filter as the keys whose union is its set (health spans the providers)."""
        groups = [
            [self.key(f, v)] for f, v in filters.items() if f not in (ORDERED, HEALTH, "provider")
        ]
        provider, health = filters.get("provider"), filters.get(HEALTH)
        if health is not None:
            providers = [provider] if provider is not None else self.values(client, "provider")
            groups.append([self.health_key(p, health) for p in providers])
        elif provider is not None:
            groups.append([self.key("provider", provider)])
        return groups

    def _from_set(
        self,
        client: Client,
        source: list[str],
        drivers: list[str],
        checks: list[list[str]],
        after: str | None,
        limit: int,
    ) -> tuple[list[str], bool]:
        """Reads the smallest filter set whole, keeps what every other filter matches."""
        members = (text(x) for x in (client.sunion(source) if source else ()))
        ids = sorted(m for m in members if after is None or m > after)
        others = [group for group in checks if group is not source]
        found: list[str] = []
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            ok = self._matches(client, chunk, others, drivers)
            found.extend(m for m, keep in zip(chunk, ok, strict=True) if keep)
            if len(found) > limit:
                break
        return found[:limit], len(found) > limit

    def _matches(
        self, client: Client, chunk: list[str], groups: list[list[str]], drivers: list[str]
    ) -> list[bool]:
        """For each id: in some key of every group and (if given) in one of the drivers."""
        pipe = client.pipeline(transaction=False)
        for group in groups:
            for key in group:
                pipe.smismember(key, chunk)
        for key in drivers:
            pipe.zmscore(key, chunk)
        replies = iter(pipe.execute())
        keep = [True] * len(chunk)
        for group in groups:
            hits = [next(replies) for _ in group]
            keep = [k and any(h[i] for h in hits) for i, k in enumerate(keep)]
        scores = list(replies)
        if scores:
            keep = [k and any(s[i] is not None for s in scores) for i, k in enumerate(keep)]
        return keep

    def _walk(
        self,
        client: Client,
        drivers: list[str],
        checks: list[list[str]],
        after: str | None,
        limit: int,
    ) -> tuple[list[str], bool]:
        """Pages through the ordered status sets, keeping ids that every filter set holds."""
        found: list[str] = []
        start = after
        while len(found) <= limit:
            lower = f"({start}" if start is not None else "-"
            pipe = client.pipeline(transaction=False)
            for key in drivers:
                pipe.zrangebylex(key, lower, "+", 0, CHUNK)
            chunk = sorted(text(m) for batch in pipe.execute() for m in batch)[:CHUNK]
            if not chunk:
                break
            ok = self._matches(client, chunk, checks, []) if checks else [True] * len(chunk)
            found.extend(m for m, keep in zip(chunk, ok, strict=True) if keep)
            start = chunk[-1]
            if len(chunk) < CHUNK:
                break
        return found[:limit], len(found) > limit
