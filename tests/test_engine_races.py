"""Batches racing the health engine: a sweep, a fan-out or a delete must not lose what they wrote.

Real Processor batches against the real redis-server, with the race forced at the exact
point between the engine's read and its write.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import redis

import monitor.engine as engine_module
from consumers.decode import RawMessage
from consumers.processor import Processor
from monitor.engine import TRIES, HealthEngine
from monitor.enums import HealthStatus
from monitor.health import ThresholdBook, Thresholds
from monitor.metrics import Selection, SyncmonCollector
from monitor.scheduler import HealthScheduler
from monitor.store.outbox import FIELD
from tests.eventlib import cloudevent, encode, lifecycle, recent, sync_created

PREFIX = "races"
TOPIC = "sync.lifecycle"
PARTITIONS = frozenset({0})


class Feed:
    """Folds events through a real Processor, each call one batch on partition 0."""

    def __init__(self, client: redis.Redis) -> None:
        self.processor = Processor(client, PREFIX, TOPIC)
        self.offsets = itertools.count()

    def __call__(self, *events: dict[str, Any]) -> None:
        messages = [RawMessage(TOPIC, 0, next(self.offsets), *encode(event)) for event in events]
        prepared, _ = self.processor.process(messages)
        assert not prepared.dead, prepared.dead

    @property
    def engine(self) -> HealthEngine:
        return self.processor.engine


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url) as conn:
        yield conn


@pytest.fixture
def feed(client: redis.Redis) -> Feed:
    recent()  # event times a few minutes back: a sync fed its lifecycle is healthy
    return Feed(client)


def status_of(engine: HealthEngine, client: redis.Redis, sync_id: str) -> HealthStatus | None:
    stored = engine.healths.get_many(client, [sync_id])[0]
    return None if stored is None else stored.status


def due_now(engine: HealthEngine, client: redis.Redis, sync_id: str) -> bool:
    return sync_id in engine.overdue(client, PARTITIONS)


def test_a_batch_during_a_sweep_keeps_its_sync_due_or_is_judged_by_the_sweep(
    client: redis.Redis, feed: Feed, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = HealthEngine(PREFIX, feed.processor.engine.book)
    feed(*lifecycle("x"), cloudevent("sync.disabled", "x", {"reason": "paused"}, minute=6.5))
    engine.sweep(client, PARTITIONS)
    assert status_of(engine, client, "x") is HealthStatus.PAUSED
    feed(cloudevent("sync.updated", "x", {"name": "renamed"}, minute=6.6))  # B1: due now
    assert due_now(engine, client, "x")

    real_all = engine.providers.all
    raced = 0

    def all_then_enable(pipe: Any) -> Any:
        nonlocal raced
        raced += 1
        if raced == 1:  # after the sweep read x's facts, before it writes: B2 re-enables x
            feed(cloudevent("sync.enabled", "x", {}, minute=6.7))
        return real_all(pipe)

    monkeypatch.setattr(engine.providers, "all", all_then_enable)
    engine.sweep(client, PARTITIONS)
    assert raced >= 1
    fresh = status_of(engine, client, "x") is not HealthStatus.PAUSED
    assert fresh or due_now(engine, client, "x"), "B2's mark was overwritten by a stale sweep"

    monkeypatch.setattr(engine.providers, "all", real_all)
    engine.sweep(client, PARTITIONS)  # the next tick
    assert status_of(engine, client, "x") is HealthStatus.HEALTHY
    changes: Any = client.xrange(engine.outbox.key)
    tos = [json.loads(e[1][b"event"])["data"]["to"] for e in changes if e[1][b"sync_id"] == b"x"]
    assert tos[-2:] == ["paused", "healthy"]  # the re-enable was published


def test_a_fanout_request_made_during_that_providers_fanout_is_served(
    client: redis.Redis,
    feed: Feed,
) -> None:
    engine = feed.engine
    ids = [f"s{i:02}" for i in range(50)]
    feed(*(e for sync_id in ids for e in lifecycle(sync_id, "acme")))
    scheduler = HealthScheduler(engine, client, lambda: PARTITIONS, interval=60)
    scheduler.tick()
    assert {status_of(engine, client, i) for i in ids} == {HealthStatus.HEALTHY}
    feed(cloudevent("provider.incident.opened", "acme", {"incident_id": "i1"}, minute=6.5))
    resolved = cloudevent("provider.incident.resolved", "acme", {"incident_id": "i1"}, minute=7)
    before_resolve: set[HealthStatus | None] = set()

    def in_two_chunks(sync_ids: list[str], found_in: dict[str, int]) -> int:
        half = len(sync_ids) // 2
        done = engine.evaluate_ids(client, sync_ids[:half], found_in)
        before_resolve.update(status_of(engine, client, i) for i in sync_ids[:half])
        feed(resolved)  # between two chunks of the fan-out: asks for another fan-out
        return done + engine.evaluate_ids(client, sync_ids[half:], found_in)

    assert engine.fan_out(client, evaluate=in_two_chunks) >= len(ids)
    assert before_resolve == {HealthStatus.WARN}  # the race happened: a chunk saw the incident

    scheduler.tick()  # the next tick (the resolve batch woke it)
    warn = [i for i in ids if status_of(engine, client, i) is not HealthStatus.HEALTHY]
    assert warn == [], f"still warn from a resolved incident: {warn}"
    assert engine.fan_out(client) == 0  # and nothing is left pending


def syncs_series(client: redis.Redis) -> dict[tuple[str, str], int]:
    text = SyncmonCollector(client, PREFIX, Selection(per_sync="none")).render().decode()
    found = re.findall(r'^syncmon_syncs\{provider="([^"]*)",health="([^"]*)"\} (\d+)$', text, re.M)
    return {(p, h): int(n) for p, h, n in found}


def test_a_sync_deleted_after_a_provider_change_leaves_no_health_index_entry(
    client: redis.Redis,
    feed: Feed,
) -> None:
    engine = feed.engine
    feed(*lifecycle("gone", "a"), *lifecycle("kept", "a"))
    engine.sweep(client, PARTITIONS)
    assert syncs_series(client)[("a", "healthy")] == 2
    feed(cloudevent("sync.updated", "gone", {"provider": "b"}, minute=6.5))  # not evaluated
    feed(cloudevent("sync.deleted", "gone", {}, minute=6.6))
    engine.sweep(client, PARTITIONS)
    engine.fan_out(client)

    for provider in ("a", "b", ""):
        for status in HealthStatus:
            key = engine.indexes.health_key(provider, status.value)
            assert not client.sismember(key, "gone"), key
    assert client.scard(engine.indexes.health_key("a", HealthStatus.HEALTHY.value)) == 1
    assert status_of(engine, client, "gone") is None
    series = syncs_series(client)
    assert series[("a", "healthy")] == 1
    assert sum(series.values()) == 1, series


def test_a_chunk_that_keeps_losing_its_watch_is_halved_and_each_change_queued_once(
    client: redis.Redis, feed: Feed, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = HealthEngine(PREFIX, feed.processor.engine.book)
    ids = [f"s{i}" for i in range(8)]
    feed(*(e for sync_id in ids for e in lifecycle(sync_id)))
    real_all = engine.providers.all
    reads = 0

    def all_then_touch(pipe: Any) -> Any:
        nonlocal reads
        reads += 1
        if reads <= TRIES:  # a batch changes a view of the whole chunk each time
            feed(cloudevent("sync.updated", "s5", {"name": f"n{reads}"}, minute=6.5))
        return real_all(pipe)

    monkeypatch.setattr(engine.providers, "all", all_then_touch)
    assert engine.evaluate_ids(client, ids) == len(ids)
    assert reads == TRIES + 2  # then its two halves, once each
    changes: Any = client.xrange(engine.outbox.key)
    assert sorted(e[1][b"sync_id"].decode() for e in changes) == ids
    assert {status_of(engine, client, i) for i in ids} == {HealthStatus.HEALTHY}


def test_fanout_requests_left_by_the_previous_version_are_served_once(
    client: redis.Redis,
    feed: Feed,
) -> None:
    engine = feed.engine
    feed(*lifecycle("s1", "acme"), *lifecycle("s2", "other"))
    engine.sweep(client, PARTITIONS)
    feed(cloudevent("provider.incident.opened", "acme", {"incident_id": "i1"}, minute=6.5))
    client.sadd(engine.fanout.legacy_key, "acme", "other")  # a set, as the old version wrote
    engine.request_fanout(client, ["acme"])  # and one request of this version
    assert set(engine.fanout.pending(client)) == {"acme", "other"}  # the batch asked too
    assert not client.exists(engine.fanout.legacy_key)
    evaluated: list[str] = []

    def record(sync_ids: list[str], found_in: dict[str, int]) -> int:
        evaluated.extend(sync_ids)
        return engine.evaluate_ids(client, sync_ids, found_in)

    assert engine.fan_out(client, evaluate=record) == 2
    assert sorted(evaluated) == ["s1", "s2"]
    assert status_of(engine, client, "s1") is HealthStatus.WARN
    assert engine.fanout.pending(client) == {}
    assert engine.fan_out(client) == 0


def test_a_request_made_after_another_process_served_the_same_provider_is_not_dropped(
    client: redis.Redis,
) -> None:
    """Two schedulers fan out at once: one serves and finishes, a new request comes, then the
    other finishes with what it read at the start. A count that restarted after a serve would
    look the same and drop the new request; tokens never repeat, so it stays."""
    book = ThresholdBook(Thresholds())
    one, other = HealthEngine(PREFIX, book), HealthEngine(PREFIX, book)
    one.request_fanout(client, ["acme"])
    read_by_one = one.fanout.pending(client)
    read_by_other = other.fanout.pending(client)
    assert read_by_one == read_by_other and set(read_by_one) == {"acme"}
    other.fanout.served(client, "acme", read_by_other["acme"])
    assert one.fanout.pending(client) == {}  # served: nothing left to read each tick
    one.request_fanout(client, ["acme"])  # an incident resolved meanwhile
    one.fanout.served(client, "acme", read_by_one["acme"])  # the slow fan-out finishes
    again = one.fanout.pending(client)
    assert set(again) == {"acme"} and again != read_by_one
    one.fanout.served(client, "acme", again["acme"])
    assert other.fanout.pending(client) == {}


def test_a_sync_deleted_and_created_again_in_one_batch_starts_its_health_anew(
    client: redis.Redis, feed: Feed
) -> None:
    """Split over two batches, the new sync's first change says `from: null`; in one batch the
    old sync's stored health carried over (its status, its count of changes, its since)."""
    engine = feed.engine
    feed(*lifecycle("x"))
    engine.sweep(client, PARTITIONS)
    assert status_of(engine, client, "x") is HealthStatus.HEALTHY
    client.delete(engine.outbox.key)
    feed(
        cloudevent("sync.deleted", "x", {}, minute=6.5),
        cloudevent("sync.created", "x", sync_created("x"), minute=6.6),
    )
    engine.sweep(client, PARTITIONS)
    changes: Any = client.xrange(engine.outbox.key)
    events = [json.loads(fields[FIELD]) for _, fields in changes]
    assert [(e["data"]["from"], e["data"]["to"]) for e in events] == [(None, "initializing")]
    assert events[0]["id"].startswith("x:1:")  # the new sync's first change


def test_a_sync_whose_evaluation_raises_is_set_aside_and_the_others_go_on(
    client: redis.Redis, feed: Feed, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """One sync's evaluation raising (a rule's bug, a date overflow) stopped the whole sweep
    and, as it stayed due first, every later one: no sync's health changed any more."""
    engine = feed.engine
    ids = ["a", "bad", "c"]
    feed(*(e for sync_id in ids for e in lifecycle(sync_id)))
    real = engine_module.next_deadline

    def failing(view: Any, *args: Any) -> Any:
        if view.id == "bad":
            raise OverflowError("date value out of range")
        return real(view, *args)

    monkeypatch.setattr(engine_module, "next_deadline", failing)
    assert engine.sweep(client, PARTITIONS) == 2
    assert status_of(engine, client, "a") is status_of(engine, client, "c") is HealthStatus.HEALTHY
    assert status_of(engine, client, "bad") is None  # nothing half-written
    changes: Any = client.xrange(engine.outbox.key)
    assert sorted(e[1][b"sync_id"].decode() for e in changes) == ["a", "c"]
    assert "health of sync bad not evaluated" in caplog.text
    assert not due_now(engine, client, "bad")  # set aside for a minute, not first in line
    later = engine.clock() + engine_module.SET_ASIDE
    assert client.zscore(engine.due.key(0), "bad") == pytest.approx(later.timestamp(), abs=5)
    monkeypatch.setattr(engine_module, "next_deadline", real)
    monkeypatch.setattr(engine, "clock", lambda: later)
    engine.sweep(client, PARTITIONS)
    assert status_of(engine, client, "bad") is not None
