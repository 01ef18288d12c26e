"""Key family `{prefix}:idx:{field}:{value}`: sorted sets that serve list filters and cursors.

Every member has score 0, so a set is ordered by sync id and `ZRANGEBYLEX` pages through
it from a cursor in O(log n + page) with no scan of all syncs.
"""

from __future__ import annotations

from collections.abc import Mapping

from monitor.store.base import Client, text
from monitor.views import SyncView

TEMPLATE = "{prefix}:idx:{field}:{value}"
ALL = "{prefix}:idx:all"
VALUES = "{prefix}:idx-values:{field}"  # which values a field has had, for summaries
FIELDS = ("provider", "status", "org_id", "stream_id", "health.status")
CHUNK = 512

Entries = frozenset[tuple[str, str]]


def entries(view: SyncView | None) -> Entries:
    """The (field, value) pairs of a live sync's own fields (health is the engine's)."""
    if view is None or view.deleted or not view.known:
        return frozenset()
    pairs = {
        ("provider", view.provider),
        ("status", view.status.value),
        ("org_id", view.org_id),
        ("stream_id", view.stream_id),
    }
    return frozenset((f, v) for f, v in pairs if v is not None)


class Indexes:
    """Maintains the filter indexes and answers filtered, cursor-paged id lists."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.all_key = ALL.format(prefix=prefix)

    def key(self, field: str, value: str) -> str:
        return TEMPLATE.format(prefix=self.prefix, field=field, value=value)

    def update(self, pipe: Client, sync_id: str, old: Entries, new: Entries, live: bool) -> None:
        for field, value in old - new:
            pipe.zrem(self.key(field, value), sync_id)
        for field, value in new - old:
            pipe.zadd(self.key(field, value), {sync_id: 0})
            if field == "provider":
                pipe.sadd(VALUES.format(prefix=self.prefix, field=field), value)
        if live:
            pipe.zadd(self.all_key, {sync_id: 0})
        else:
            pipe.zrem(self.all_key, sync_id)

    def values(self, client: Client, field: str) -> list[str]:
        raw = client.smembers(VALUES.format(prefix=self.prefix, field=field))
        return sorted(text(v) for v in raw)

    def count(self, client: Client, field: str | None = None, value: str | None = None) -> int:
        key = self.all_key if field is None or value is None else self.key(field, value)
        return int(client.zcard(key))

    def page(
        self, client: Client, filters: Mapping[str, str], after: str | None, limit: int
    ) -> tuple[list[str], bool]:
        """Up to `limit` ids after the cursor matching every filter, and whether more exist."""
        keys = [self.key(f, v) for f, v in filters.items()] or [self.all_key]
        if len(keys) > 1:
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.zcard(key)
            sizes = pipe.execute()
            keys = [k for _, k in sorted(zip(sizes, keys, strict=True))]
        driver, others = keys[0], keys[1:]
        found: list[str] = []
        start = f"({after}" if after is not None else "-"
        while len(found) <= limit:
            chunk = [text(m) for m in client.zrangebylex(driver, start, "+", 0, CHUNK)]
            if not chunk:
                break
            matched = chunk
            if others:
                pipe = client.pipeline(transaction=False)
                for key in others:
                    pipe.zmscore(key, chunk)
                scores = pipe.execute()
                matched = [m for i, m in enumerate(chunk) if all(s[i] is not None for s in scores)]
            found.extend(matched)
            start = f"({chunk[-1]}"
            if len(chunk) < CHUNK:
                break
        return found[:limit], len(found) > limit
