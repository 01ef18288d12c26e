"""Redis unreachable mid-stream: the consumer waits, commits nothing unstored, loses nothing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from monitor.app import create_app
from monitor.services import RedisServer
from monitor.simulate import history
from monitor.store.counters import EventCounters
from tests.eventlib import cloudevent, encode, expected_fold, produce_records, stored_state
from tests.faultlib import counted, read_topic, wait_counted
from tests.support import fast_settings

PREFIX = "outage"


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, since the test freezes it."""
    server = RedisServer().start()
    yield server
    server.stop()


def test_redis_down_then_back_loses_nothing(topics: Any, own_redis: RedisServer) -> None:
    wire = history(
        syncs=30, events=1200, seed=11, start=datetime(2026, 4, 1, tzinfo=UTC), step_seconds=5
    )
    records = [(m.key, m.value, m.headers) for m in wire]
    settings = fast_settings(
        topics, own_redis.url, PREFIX, kafka_max_batch=100, retry_max_seconds=1.0
    )
    probe = redis.Redis.from_url(own_redis.url, socket_timeout=2)

    def counted() -> int:
        return sum(EventCounters(PREFIX).read(probe).values())

    with TestClient(create_app(settings)) as client:
        first = produce_records(topics.bootstrap, topics.lifecycle, records[:600])
        deadline = time.monotonic() + 60
        while counted() < 600 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert counted() == 600

        own_redis.pause()
        try:
            second = produce_records(topics.bootstrap, topics.lifecycle, records[600:])
            time.sleep(2)
            ready = client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["redis"] is False
            assert client.get("/v1/syncs").status_code == 503
            assert client.get("/healthz").status_code == 200
        finally:
            own_redis.resume()

        deadline = time.monotonic() + 60
        while counted() < len(records) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert counted() == len(records)
        assert client.get("/readyz").status_code == 200

    expected_views, expected_counts = expected_fold(first + second)
    stored_views, stored_counts = stored_state(own_redis.url, PREFIX, list(expected_views))
    assert stored_counts == expected_counts
    assert [k for k, v in expected_views.items() if stored_views[k] != v] == []


Snapshot = list[tuple[Any, int, Any]]


def snapshot_of(client: redis.Redis) -> Snapshot:
    return [(key, client.pttl(key), client.dump(key)) for key in client.keys("*")]


def roll_back(client: redis.Redis, snapshot: Snapshot) -> None:
    """Redis as a replica that missed the writes since `snapshot` has it, in one step."""
    with client.pipeline(transaction=True) as pipe:
        pipe.flushdb()
        for key, ttl, dumped in snapshot:
            if dumped is not None:  # not gone between KEYS and DUMP (a drained outbox entry)
                pipe.restore(key, max(ttl, 0), dumped, replace=True)
        pipe.execute()


def assert_the_pure_fold(url: str, prefix: str, produced: list[Any]) -> None:
    expected_views, expected_counts = expected_fold(produced)
    stored_views, stored_counts = stored_state(url, prefix, list(expected_views))
    assert stored_counts == expected_counts
    assert [k for k, v in expected_views.items() if stored_views[k] != v] == []


def test_redis_rolled_back_behind_the_committed_offsets_is_caught_up_by_replay(
    topics: Any, own_redis: RedisServer
) -> None:
    """A failover to a replica that missed the last writes (or a restore from a backup)
    leaves Redis behind the offsets the group committed: on its next assignment the consumer
    seeks back to Redis's fences, so nothing in between is lost and nothing counted twice."""
    wire = history(
        syncs=20, events=800, seed=17, start=datetime(2026, 4, 2, tzinfo=UTC), step_seconds=5
    )
    records = [(m.key, m.value, m.headers) for m in wire]
    settings = fast_settings(topics, own_redis.url, "rollback", kafka_max_batch=100)
    probe = redis.Redis.from_url(own_redis.url, socket_timeout=2)

    with TestClient(create_app(settings)):
        produced = produce_records(topics.bootstrap, topics.lifecycle, records[:400])
        wait_counted(probe, "rollback", 400, 60)
        snapshot = snapshot_of(probe)
        produced += produce_records(topics.bootstrap, topics.lifecycle, records[400:])
        wait_counted(probe, "rollback", 800, 60)
    roll_back(probe, snapshot)  # with the consumer stopped
    assert counted(probe, "rollback") == 400

    with TestClient(create_app(settings)):
        wait_counted(probe, "rollback", 800, 60)
        time.sleep(1)  # nothing more arrives
        assert counted(probe, "rollback") == 800
    assert_the_pure_fold(own_redis.url, "rollback", produced)


def test_redis_rolled_back_under_a_running_consumer_is_caught_up_by_replay(
    topics: Any, own_redis: RedisServer
) -> None:
    """The same loss while the consumer runs on, with no rebalance to trigger a realignment:
    its next batch finds Redis's fence behind its own writes, seeks back, and replays."""
    wire = history(
        syncs=20, events=900, seed=19, start=datetime(2026, 4, 3, tzinfo=UTC), step_seconds=5
    )
    records = [(m.key, m.value, m.headers) for m in wire]
    settings = fast_settings(topics, own_redis.url, "rollrun", kafka_max_batch=100)
    probe = redis.Redis.from_url(own_redis.url, socket_timeout=2)

    with TestClient(create_app(settings)):
        produced = produce_records(topics.bootstrap, topics.lifecycle, records[:400])
        wait_counted(probe, "rollrun", 400, 60)
        snapshot = snapshot_of(probe)
        produced += produce_records(topics.bootstrap, topics.lifecycle, records[400:800])
        wait_counted(probe, "rollrun", 800, 60)
        roll_back(probe, snapshot)  # while the consumer runs
        assert counted(probe, "rollrun") == 400
        # with a dead letter in the first batch after the loss, which is read twice (the
        # batch is dropped and replayed) and must still go to the DLQ once
        poison = encode({k: v for k, v in cloudevent("sync.created", "s-x").items() if k != "time"})
        produced += produce_records(topics.bootstrap, topics.lifecycle, [poison, *records[800:]])
        wait_counted(probe, "rollrun", 901, 60)
        time.sleep(1)  # nothing more arrives
        assert counted(probe, "rollrun") == 901
    dead = read_topic(topics.bootstrap, topics.dlq, topics.partitions)
    assert len(dead) == 1
    assert_the_pure_fold(own_redis.url, "rollrun", produced)
