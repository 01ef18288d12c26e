"""A publisher that died between the broker's ack and Redis's: its changes still go out once."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import pytest
import redis
from kafka import KafkaProducer

from consumers import publisher as publisher_module
from consumers.already import event_id, published_ids, queued_at_ms
from consumers.publisher import HealthPublisher
from monitor.services import ensure_topics
from monitor.store.outbox import GROUP, Outbox
from tests.faultlib import read_topic
from tests.support import fast_settings

PREFIX = "pub"


def change(sync_id: str, n: int) -> bytes:
    return json.dumps({"id": f"{sync_id}:{n}", "type": "sync.health.changed"}).encode()


def test_stream_ids_and_event_ids_are_read_back() -> None:
    assert queued_at_ms("1795797794055-3") == 1795797794055
    assert event_id(change("s", 2)) == "s:2"
    assert event_id(b"not json") is None
    assert event_id(b'["id"]') is None


def test_entries_a_dead_publisher_sent_are_acknowledged_not_sent_again(
    topics: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    health_topic = f"{topics.lifecycle}.health"
    ensure_topics(topics.bootstrap, {health_topic: 3})
    settings = fast_settings(topics, redis_url, PREFIX, health_topic=health_topic)
    client = redis.Redis.from_url(redis_url)
    outbox = Outbox(PREFIX)
    outbox.ensure_group(client)
    for n, sync_id in enumerate(["a", "b", "c", "d"], start=1):
        outbox.add(client, sync_id, change(sync_id, n).decode())
    taken = outbox.read(client, "dead-publisher", count=10, block_ms=100)
    assert [e[1] for e in taken] == ["a", "b", "c", "d"]
    # it got a and c onto the topic, then died before acknowledging anything
    producer = KafkaProducer(bootstrap_servers=topics.bootstrap, acks="all")
    for _, sync_id, event in taken:
        if sync_id in {"a", "c"}:
            producer.send(health_topic, key=sync_id.encode(), value=event)
    producer.flush()
    producer.close()
    since = queued_at_ms(taken[0][0])
    wanted = {"a:1", "b:2", "c:3", "d:4"}
    found = published_ids(topics.bootstrap, health_topic, since, wanted)
    assert found == {"a:1", "c:3"}

    monkeypatch.setattr(publisher_module, "CLAIM_IDLE_MS", 500)
    survivor = HealthPublisher(settings, client)
    survivor.start()
    try:
        deadline = time.monotonic() + 60
        while outbox.pending(client) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert outbox.pending(client) == 0
        assert client.xpending(outbox.key, GROUP)["pending"] == 0
    finally:
        survivor.stop()
    assert survivor.published == 2  # b and d; a and c were already there
    assert int(client.hget(outbox.published_key, "count") or 0) == 4
    records = read_topic(topics.bootstrap, health_topic, 3, headers=True)
    on_topic = Counter(value["id"] for *_, value, _ in records)
    assert on_topic == {"a:1": 1, "b:2": 1, "c:3": 1, "d:4": 1}
    by_us = [h for *_, value, h in records if value["id"] in ("b:2", "d:4")]
    # CloudEvents Kafka binding: structured mode says so in its content-type header
    assert by_us == [[("content-type", b"application/cloudevents+json; charset=UTF-8")]] * 2
