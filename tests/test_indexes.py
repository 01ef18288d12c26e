"""List indexes against real Redis: every filter combination pages exactly like a full scan."""

from __future__ import annotations

import itertools
import random

import pytest
import redis

from monitor.enums import SyncStatus
from monitor.store import indexes as idx
from monitor.store.indexes import Indexes, entries
from monitor.views import SyncView


@pytest.fixture
def populated(redis_url: str) -> tuple[redis.Redis, Indexes, list[SyncView]]:
    client = redis.Redis.from_url(redis_url)
    rng = random.Random(4)
    views = [
        SyncView(
            id=f"sync-{i:04d}",
            provider=rng.choice(["stripe", "hubspot", "github"]),
            org_id=rng.choice(["org-a", "org-b", "org-c", "org-d"]),
            stream_id=f"stream-{i % 50}",
            status=rng.choice([SyncStatus.ACTIVE, SyncStatus.ACTIVE, SyncStatus.DISABLED]),
        )
        for i in range(1200)
    ]
    index = Indexes("t")
    pipe = client.pipeline()
    index.update_many(pipe, [(v.id, frozenset(), entries(v)) for v in views])
    pipe.execute()
    return client, index, views


def all_pages(
    client: redis.Redis, index: Indexes, filters: dict[str, str], limit: int
) -> list[str]:
    out: list[str] = []
    after = None
    while True:
        ids, more = index.page(client, filters, after, limit)
        out += ids
        if not more:
            return out
        assert len(ids) == limit
        after = ids[-1]


FILTERS = [
    {},
    {"provider": "stripe"},
    {"status": "disabled"},
    {"org_id": "org-b", "status": "active"},
    {"provider": "github", "org_id": "org-c"},
    {"stream_id": "stream-7"},
    {"stream_id": "stream-7", "provider": "hubspot", "status": "active"},
    {"provider": "nope"},
]


@pytest.mark.parametrize("small_set", [0, 20_000])  # walk the ordered sets / read the set
@pytest.mark.parametrize("filters", FILTERS)
def test_paging_equals_a_full_scan(
    populated: tuple[redis.Redis, Indexes, list[SyncView]],
    filters: dict[str, str],
    small_set: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client, index, views = populated
    monkeypatch.setattr(idx, "SMALL_SET", small_set)
    monkeypatch.setattr(idx, "CHUNK", 64)  # several chunks per page
    expected = sorted(
        v.id
        for v in views
        if all(
            (v.status.value if f == "status" else getattr(v, f)) == value
            for f, value in filters.items()
        )
    )
    for limit in (1, 7, 100, 5000):
        assert all_pages(client, index, filters, limit) == expected


def test_moves_and_removals_keep_indexes_exact(
    populated: tuple[redis.Redis, Indexes, list[SyncView]],
) -> None:
    client, index, views = populated
    moved = [
        v.model_copy(update={"provider": "stripe", "status": SyncStatus.ACTIVE})
        for v in views[:300]
    ]
    pipe = client.pipeline()
    index.update_many(
        pipe, [(n.id, entries(o), entries(n)) for o, n in zip(views, moved, strict=False)]
    )
    index.update_many(pipe, [(v.id, entries(v), frozenset()) for v in views[300:400]])  # deleted
    pipe.execute()
    current = {v.id: v for v in itertools.chain(moved, views[400:])}
    expected = sorted(i for i, v in current.items() if v.provider == "stripe")
    assert all_pages(client, index, {"provider": "stripe"}, 50) == expected
    assert all_pages(client, index, {}, 333) == sorted(current)
