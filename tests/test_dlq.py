"""Dead letters reach the DLQ topic; one too large for it goes without its value, never stuck."""

from __future__ import annotations

from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from consumers.decode import RawMessage
from consumers.dlq import (
    ERROR_HEADER,
    OFFSET_HEADER,
    OMITTED_HEADER,
    PARTITION_HEADER,
    DeadLetterPublisher,
)
from consumers.processor import DeadLetter


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
