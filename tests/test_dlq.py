"""Dead letters reach the DLQ topic; one too large for it goes without its value, never stuck."""

from __future__ import annotations

import threading
import time
from typing import Any

import redis
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from consumers.consumer import SyncConsumer
from consumers.decode import RawMessage
from consumers.dlq import (
    ERROR_HEADER,
    OFFSET_HEADER,
    OMITTED_HEADER,
    PARTITION_HEADER,
    DeadLetterPublisher,
)
from consumers.processor import DeadLetter
from monitor.services import RedisServer
from tests.eventlib import cloudevent, encode, sync_created
from tests.support import fast_settings, wait_for


def dead(offset: int, value: bytes) -> DeadLetter:
    message = RawMessage("src", 2, offset, b"k", value, [("h", b"1")])
    return DeadLetter(message, "not JSON", "unknown")


def read_all(bootstrap: str, topic: str, partitions: int, want: int) -> list[Any]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
    out: list[Any] = []
    for _ in range(50):
        out += [r for batch in consumer.poll(timeout_ms=200).values() for r in batch]
        if len(out) >= want:
            break
    consumer.close()
    return sorted(out, key=lambda r: dict(r.headers)[OFFSET_HEADER])


def test_a_dead_letter_too_large_for_the_dlq_goes_without_its_value(topics: Any) -> None:
    # the producer's limit stands in for a DLQ topic whose max.message.bytes is smaller than
    # the source topic's: either way the record is refused as too large, every time
    producer = KafkaProducer(bootstrap_servers=topics.bootstrap, acks="all", max_request_size=4096)
    publisher = DeadLetterPublisher(producer, topics.dlq)
    publisher.publish([dead(7, b"\x00small"), dead(8, b"x" * 10_000)])
    producer.close()

    small, large = read_all(topics.bootstrap, topics.dlq, topics.partitions, 2)
    assert small.value == b"\x00small" and OMITTED_HEADER not in dict(small.headers)
    headers = dict(large.headers)
    assert large.value is None and large.key == b"k"
    assert headers[OMITTED_HEADER] == b"10000 bytes, too large for the DLQ"
    assert headers[ERROR_HEADER] == b"not JSON" and headers["h"] == b"1"
    assert (headers[PARTITION_HEADER], headers[OFFSET_HEADER]) == (b"2", b"8")


class Commits:
    """Stands in for the KafkaConsumer only as far as `_handle` commits through it."""

    def __init__(self) -> None:
        self.offsets: list[dict[TopicPartition, Any]] = []

    def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        self.offsets.append(offsets)


def test_a_batch_retried_while_redis_refuses_writes_dead_letters_each_record_once(
    topics: Any,
) -> None:
    """Redis that reads but refuses writes (full at maxmemory, or a read-only replica after a
    failover) makes the consumer retry the batch; its dead letter was on the DLQ after the
    first try and must not be sent again on every retry."""
    server = RedisServer().start()
    try:
        client = redis.Redis.from_url(server.url)
        settings = fast_settings(topics, server.url, "dlq-once", retry_max_seconds=0.3)
        consumer = SyncConsumer(settings, client)
        good = encode(cloudevent("sync.created", "s1", sync_created("s1")))
        messages = [
            RawMessage(topics.lifecycle, 0, 0, good[0], good[1], good[2]),
            RawMessage(topics.lifecycle, 0, 1, b"s1", b"not json", []),
        ]
        producer = KafkaProducer(bootstrap_servers=topics.bootstrap, acks="all")
        commits = Commits()
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", 1)  # every write refused, reads answered
        handling = threading.Thread(
            target=consumer._handle,
            args=(commits, DeadLetterPublisher(producer, topics.dlq), messages),
        )
        handling.start()
        wait_for(lambda: consumer.state.redis_ok is False, 10, what="a refused write")
        time.sleep(1.5)  # several retries
        client.config_set("maxmemory", 0)
        handling.join(timeout=30)
        producer.close()
        assert not handling.is_alive()
        on_dlq = read_all(topics.bootstrap, topics.dlq, topics.partitions, 2)
        assert [dict(r.headers)[OFFSET_HEADER] for r in on_dlq] == [b"1"]
        assert [{tp.partition: o.offset for tp, o in c.items()} for c in commits.offsets] == [
            {0: 2}
        ]
    finally:
        server.stop()


class Seeks(Commits):
    """And as far as `_rewind` seeks through it."""

    def __init__(self) -> None:
        super().__init__()
        self.seeks: list[tuple[int, int]] = []

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp.partition, offset))


def test_a_batch_rewound_after_a_failover_dead_letters_each_record_once(topics: Any) -> None:
    """The primary dies mid-batch (writes refused, the dead letter already on the DLQ), the
    promoted replica lacks this process's last writes: the batch is rewound and read again,
    and its dead letter must not go out a second time."""
    server = RedisServer().start()
    try:
        client = redis.Redis.from_url(server.url)
        settings = fast_settings(topics, server.url, "dlq-rewind", retry_max_seconds=0.3)
        consumer = SyncConsumer(settings, client)
        created = encode(cloudevent("sync.created", "s1", sync_created("s1")))
        started = encode(cloudevent("sync.run.started", "s1", {"run_id": "r1"}))
        first = [RawMessage(topics.lifecycle, 0, 0, created[0], created[1], created[2])]
        second = [
            RawMessage(topics.lifecycle, 0, 1, started[0], started[1], started[2]),
            RawMessage(topics.lifecycle, 0, 2, b"s1", b"not json", []),
        ]
        producer = KafkaProducer(bootstrap_servers=topics.bootstrap, acks="all")
        dlq = DeadLetterPublisher(producer, topics.dlq)
        kafka = Seeks()
        consumer._handle(kafka, dlq, first)  # offset 0 written: this process's fence is 0
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", 1)  # the primary stops taking writes
        handling = threading.Thread(target=consumer._handle, args=(kafka, dlq, second))
        handling.start()
        wait_for(lambda: consumer.state.redis_ok is False, 10, what="a refused write")
        client.delete(*client.keys("dlq-rewind:fence:*"))  # the replica never saw offset 0
        client.config_set("maxmemory", 0)
        handling.join(timeout=30)
        assert not handling.is_alive()
        assert kafka.seeks == [(0, 1)]  # read the batch again (a partition lost whole)
        consumer._handle(kafka, dlq, second)  # what the next poll returns
        producer.close()
        on_dlq = read_all(topics.bootstrap, topics.dlq, topics.partitions, 2)
        assert [dict(r.headers)[OFFSET_HEADER] for r in on_dlq] == [b"2"]
        assert [{tp.partition: o.offset for tp, o in c.items()} for c in kafka.offsets] == [
            {0: 1},
            {0: 3},
        ]
    finally:
        server.stop()
