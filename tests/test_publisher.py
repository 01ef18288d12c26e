"""A publisher that died between the broker's ack and Redis's: its changes still go out once."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import pytest
import redis
from kafka import KafkaProducer
from kafka.errors import KafkaError

from consumers import publisher as publisher_module
from consumers.already import event_id, published_ids, queued_at_ms
from consumers.publisher import HealthPublisher
from monitor.services import ensure_topics
from monitor.settings import Settings
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


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


class FakeProducer:
    """Records what the publisher sends; every wait runs to its timeout (the worst case)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.sent: list[bytes] = []

    def send(self, topic: str, key: bytes, value: bytes, headers: Any) -> FakeProducer:
        self.sent.append(key)
        return self

    def flush(self, timeout: float | None = None) -> None:
        self.clock.now += float("inf") if timeout is None else timeout

    get = flush

    def close(self, timeout: float | None = None) -> None:
        pass


Entries = list[tuple[str, str, bytes]]


def one_round(
    monkeypatch: pytest.MonkeyPatch,
    claimed: list[str],
    fresh: list[str],
    scan_seconds: float,
    taken_by_another: frozenset[str] = frozenset(),
) -> tuple[FakeProducer, dict[str, Any], list[str], float]:
    """One pass of the publisher loop over fakes: `claimed` entries come from a dead publisher
    (their topic scan takes `scan_seconds`; meanwhile another publisher claims the sync ids in
    `taken_by_another`), `fresh` ones from the group. Returns the producer, the options it was
    made with, the entry ids acknowledged and the seconds the pass took."""
    clock = Clock()
    producer, options, acked = FakeProducer(clock), {}, []
    renewed: list[int] = []

    def renew(client: Any, consumer: str, ids: list[str], held_ms: int) -> set[str]:
        renewed.append(held_ms)
        assert held_ms <= scan_seconds * 1000  # never more than the claim's real age
        lost = {e for e, sync_id, _ in entries(claimed, 1) if sync_id in taken_by_another}
        return set(ids) - lost

    def make_producer(
        bootstrap: str, security: dict[str, Any], bounds: dict[str, Any]
    ) -> FakeProducer:
        options.update(security, **bounds)
        return producer

    def scan(*args: Any) -> set[str]:
        clock.now += scan_seconds
        return set()

    def entries(ids: list[str], first: int) -> Entries:
        return [(f"{first + n}-0", sync_id, change(sync_id, n)) for n, sync_id in enumerate(ids)]

    def read(*args: Any, **kwargs: Any) -> Entries:
        publisher._stop.set()  # this pass is the last
        return entries(fresh, 100)

    monkeypatch.setattr(publisher_module, "make_producer", make_producer)
    monkeypatch.setattr(publisher_module, "published_ids", scan)
    monkeypatch.setattr(publisher_module, "time", clock, raising=False)
    publisher = HealthPublisher(Settings(kafka_create_topics=False), redis.Redis())
    monkeypatch.setattr(publisher.outbox, "ensure_group", lambda client: None)
    monkeypatch.setattr(publisher.outbox, "claim_stale", lambda *a: entries(claimed, 1))
    monkeypatch.setattr(publisher.outbox, "renew", renew)
    monkeypatch.setattr(publisher.outbox, "read", read)
    monkeypatch.setattr(publisher.outbox, "done", lambda client, ids: acked.extend(ids))
    start = clock.now
    publisher._loop()
    return producer, options, acked, clock.now - start


KAFKA_PYTHON_DEFAULTS = {
    "max_block_ms": 60_000,
    "request_timeout_ms": 30_000,
    "delivery_timeout_ms": 120_000,
}


def test_a_send_is_settled_before_its_entry_can_be_claimed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Else a claimer reads the topic before a slow send lands, and sends the change again."""
    producer, options, acked, took = one_round(monkeypatch, [], ["a", "b"], 0)
    assert producer.sent == [b"a", b"b"] and acked == ["100-0", "101-0"]
    claim_ms = publisher_module.CLAIM_IDLE_MS
    bounds = {**KAFKA_PYTHON_DEFAULTS, **options}
    # kafka-python settles each record within delivery_timeout_ms of send(), in-flight included
    # (and refuses a delivery timeout below request_timeout_ms + linger_ms).
    assert bounds["delivery_timeout_ms"] >= bounds["request_timeout_ms"] + 5
    latest_landing_ms = (
        getattr(publisher_module, "SEND_START_MS", 0)
        + bounds["max_block_ms"]
        + bounds["delivery_timeout_ms"]
    )
    assert latest_landing_ms <= claim_ms - 5_000, (latest_landing_ms, claim_ms)
    assert took * 1000 <= claim_ms - 5_000, took  # flush and get together, to their timeouts


def test_entries_whose_topic_scan_used_their_claim_are_renewed_then_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A slow topic scan eats the claim's time: sending then could outlive the claim, and
    leaving them to a later claim would scan as long again, forever. The claim is renewed."""
    slow = publisher_module.CLAIM_IDLE_MS / 1000 / 2
    producer, _, acked, took = one_round(monkeypatch, ["a", "b"], ["c"], slow)
    assert producer.sent == [b"a", b"b", b"c"] and acked == ["1-0", "2-0", "100-0"]
    assert took * 1000 <= slow * 1000 + 2 * publisher_module.SETTLED_MS  # each send in bounds
    # one of them claimed by another publisher meanwhile: that one is its to send
    producer, _, acked, _ = one_round(monkeypatch, ["a", "b"], [], slow, frozenset({"a"}))
    assert producer.sent == [b"b"] and acked == ["2-0"]


def test_a_renewal_keeps_only_entries_no_one_claimed_since(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    outbox = Outbox(f"renew-{time.monotonic_ns()}")
    outbox.ensure_group(client)
    for n in range(2):
        outbox.add(client, f"s{n}", json.dumps({"id": f"s{n}:1"}))
    first, second = (e[0] for e in outbox.read(client, "dead", 10, block_ms=0))
    time.sleep(0.3)
    assert {e[0] for e in outbox.claim_stale(client, "me", 200, 10)} == {first, second}
    time.sleep(0.3)  # "me" scans the topic; meanwhile "other" claims the first entry
    client.xclaim(outbox.key, GROUP, "other", 200, [first], justid=True)
    assert outbox.renew(client, "me", [first, second], held_ms=250) == {second}
    owners = {e["message_id"].decode(): e["consumer"].decode() for e in pending(client, outbox)}
    assert owners == {first: "other", second: "me"}


def pending(client: redis.Redis, outbox: Outbox) -> list[Any]:
    reply: Any = client.xpending_range(outbox.key, GROUP, "-", "+", 10)
    return list(reply)


def test_a_producer_with_unsettled_sends_is_still_closed() -> None:
    """kafka-python's close raises when its flush times out and leaves its sender running;
    the publisher and the consumer close theirs after it (the consumer then leaves its group)."""
    from consumers.kafka import close_producer, make_producer
    from monitor.services import Broker

    broker = Broker().start()
    try:
        ensure_topics(broker.bootstrap, {"unsettled": 1})
        producer = make_producer(broker.bootstrap, None, {"request_timeout_ms": 60_000})
        producer.send("unsettled", b"first").get(timeout=30)  # metadata known, broker answers
        broker.pause()  # a broker gone quiet: TCP open, nothing answered
        producer.send("unsettled", b"second")
        with pytest.raises(KafkaError):  # what close alone does
            producer.flush(timeout=0.5)
        started = time.monotonic()
        close_producer(producer, 0.5, "test producer")
        assert time.monotonic() - started < 5
        assert not producer._sender.is_alive()
    finally:
        broker.resume()
        broker.stop()
