"""Views stored by the earlier split (name, provider, status and times in the seed part) read
and update correctly: an upgrade keeps every view without a rebuild."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import redis

from consumers.decode import RawMessage
from consumers.processor import Processor
from monitor.engine import VIEW_FIELDS, HealthEngine
from monitor.enums import HealthStatus, SyncStatus
from monitor.health import ThresholdBook, Thresholds, evaluate
from monitor.store.codec import FACTS, OLD_FACTS, SEED, pack, unpack
from monitor.store.health import HealthViews
from monitor.store.syncs import FACTS_PART, STORED_SEED, SyncViews
from monitor.views import SyncView
from tests.eventlib import cloudevent, encode, recent
from tests.test_health import DISABLED, NOW, STALE_ERROR, ready

TOPIC = "sync.lifecycle"
# The seed part before facts held everything health reads.
OLD_SEED = STORED_SEED | {
    "provider", "name", "status", "org_id", "collection_ids", "sync_frequency", "created_at",
    "known", "disabled_reason", "status_changed_at", "deleted_at",
}  # fmt: skip


def old_stored(view: SyncView) -> tuple[bytes, bytes]:
    """(seed, facts) as the earlier code wrote them."""
    seed = view.model_dump_json(include=OLD_SEED, exclude_defaults=True)
    facts = view.model_dump_json(
        include=set(SyncView.model_fields) - OLD_SEED - {"id"}, exclude_defaults=True
    )
    return pack(SEED, seed), pack(OLD_FACTS, facts)


def test_this_split_keeps_what_health_reads_out_of_the_seed() -> None:
    assert VIEW_FIELDS - {"id"} <= FACTS_PART
    view = ready(**DISABLED, disabled_reason="paused", org_id="org-9", name="Acme")
    syncs = SyncViews("layout")

    class Pipe:
        def __init__(self) -> None:
            self.values: dict[str, bytes] = {}

        def mset(self, values: dict[str, bytes]) -> None:
            self.values.update(values)

    pipe = Pipe()
    syncs.put_many(pipe, [(view, None)])
    seed = unpack(pipe.values[syncs.key(view.id)]).decode()
    facts = pipe.values[syncs.facts_key(view.id)]
    assert facts[:1] == FACTS
    for word in ("paused", "org-9", "Acme", "acme", "disabled"):
        assert word not in seed and word in unpack(facts).decode()


def test_a_sweep_reads_both_parts_again_for_old_views_only() -> None:
    old_view = ready(**STALE_ERROR, org_id="org-1", name="Old", sync_frequency="4h")
    new_view = ready(id="sync-2", **DISABLED, disabled_reason="paused by support")
    syncs = SyncViews("layout")
    old_seed, old_facts = old_stored(old_view)
    new_facts = pack(FACTS, new_view.model_dump_json(include=FACTS_PART, exclude_defaults=True))
    asked: list[list[str]] = []

    def mget(keys: list[str]) -> list[Any]:
        asked.append(keys)
        return [old_seed, old_facts]

    parts = syncs.parse_fields(["sync-1", "sync-2"], [old_facts, new_facts], VIEW_FIELDS, mget)
    assert asked == [syncs.keys(["sync-1"])]
    for part, full in zip(parts, (old_view, new_view), strict=True):
        assert part is not None
        for now in (NOW, NOW + timedelta(hours=5)):
            assert evaluate(part, now, Thresholds()) == evaluate(full, now, Thresholds())
    # An old view whose seed is gone (a tombstone's part expired first) is no view.
    gone = syncs.parse_fields(["sync-1"], [old_facts], VIEW_FIELDS, lambda keys: [None, None])
    assert gone == [None]
    # A view stored as one key (before facts existed) is read from its seed alone.
    single = pack(SEED, old_view.model_dump_json(exclude={"id"}, exclude_defaults=True))
    alone = syncs.parse_fields(["sync-1"], [None], VIEW_FIELDS, lambda keys: [single, None])
    assert alone[0] is not None
    assert evaluate(alone[0], NOW, Thresholds()) == evaluate(old_view, NOW, Thresholds())


def test_a_batch_between_the_two_reads_is_not_mixed_in(redis_url: str) -> None:
    """Real Redis: an old view read by a sweep, then rewritten in this split by a batch
    before the sweep reads again. The sweep must judge one consistent view, never the old
    facts joined with the new seed (that sync has no status, name or provider)."""
    client = redis.Redis.from_url(redis_url)
    prefix = f"layout-{uuid.uuid4().hex[:6]}"
    sync_id = "sync-race"
    recent(30)
    view = ready(id=sync_id, **DISABLED, disabled_reason="paused", name="Acme", org_id="org-1")
    seed, facts = old_stored(view)
    syncs = SyncViews(prefix)
    client.mset({syncs.key(sync_id): seed, syncs.facts_key(sync_id): facts})
    update = cloudevent("sync.updated", sync_id, {"metadata": {"team": "x"}}, minute=29)
    key, value, headers = encode(update)
    raced: list[int] = []

    def mget_after_a_batch(keys: list[str]) -> list[Any]:
        if not raced:
            batch = [RawMessage(TOPIC, 0, 0, key, value, headers)]
            raced.append(len(Processor(client, prefix, TOPIC).process(batch)[0].events))
        return list(client.mget(keys))

    first = client.mget(syncs.facts_keys([sync_id]))
    part = syncs.parse_fields([sync_id], first, VIEW_FIELDS, mget_after_a_batch)[0]
    assert raced == [1]
    assert client.get(syncs.facts_key(sync_id))[:1] == FACTS  # type: ignore[index]
    assert part is not None
    assert (part.status, part.name, part.org_id, part.provider) == (
        SyncStatus.DISABLED, "Acme", "org-1", "acme",
    )  # fmt: skip
    stored = syncs.get(client, sync_id)
    assert stored is not None and stored.metadata == {"team": "x"}
    assert evaluate(part, NOW, Thresholds()).status is HealthStatus.PAUSED


def test_full_parse_ignores_facts_left_in_an_old_seed() -> None:
    disabled = ready(**DISABLED, disabled_reason="paused by support")
    old_seed, _ = old_stored(disabled)
    enabled = ready()  # re-enabled later: no reason, and its facts now hold the status
    facts = pack(FACTS, enabled.model_dump_json(include=FACTS_PART, exclude_defaults=True))
    view = SyncViews.parse("sync-1", old_seed, facts)
    assert view is not None
    assert view.status is SyncStatus.ACTIVE and view.disabled_reason is None
    assert view == enabled


def test_the_processor_moves_an_old_view_to_this_split(redis_url: str) -> None:
    """Real Redis: an old view gets an event; the stored view, the API's read and health
    are those of a view that was never stored the old way."""
    client = redis.Redis.from_url(redis_url)
    prefix = f"layout-{uuid.uuid4().hex[:6]}"
    t0 = recent(30)
    sync_id = "sync-old"
    before = ready(id=sync_id, **DISABLED, disabled_reason="paused by support", created_at=t0)
    seed, facts = old_stored(before)
    syncs = SyncViews(prefix)
    client.mset({syncs.key(sync_id): seed, syncs.facts_key(sync_id): facts})
    assert syncs.get(client, sync_id) == before

    enable = cloudevent("sync.enabled", sync_id, minute=29)
    key, value, headers = encode(enable)
    Processor(client, prefix, TOPIC).process([RawMessage(TOPIC, 0, 0, key, value, headers)])
    after = syncs.get(client, sync_id)
    assert after is not None
    assert after.status is SyncStatus.ACTIVE and after.disabled_reason is None
    assert client.get(syncs.facts_key(sync_id))[:1] == FACTS  # type: ignore[index]

    engine = HealthEngine(prefix, ThresholdBook(Thresholds()))
    assert engine.evaluate_ids(client, [sync_id]) == 1
    stored = HealthViews(prefix).get_many(client, [sync_id])[0]
    assert stored is not None
    assert stored.status is not HealthStatus.PAUSED
    assert stored.status is evaluate(after, stored.evaluated_at).status
