"""Dead letters: unreadable messages go, unchanged, to the DLQ topic with three headers."""

from __future__ import annotations

from collections.abc import Sequence

from kafka import KafkaProducer

from consumers.decode import Headers
from consumers.processor import DeadLetter

ERROR_HEADER = "syncmon_error"
PARTITION_HEADER = "syncmon_source_partition"
OFFSET_HEADER = "syncmon_source_offset"


def dead_letter_headers(dead: DeadLetter) -> Headers:
    """The original headers plus why and where the message was read."""
    return [
        *dead.message.headers,
        (ERROR_HEADER, dead.reason.encode()),
        (PARTITION_HEADER, str(dead.message.partition).encode()),
        (OFFSET_HEADER, str(dead.message.offset).encode()),
    ]


class DeadLetterPublisher:
    """Publishes a batch's dead letters and waits for the broker before the batch commits."""

    def __init__(self, producer: KafkaProducer, topic: str, timeout: float = 30.0) -> None:
        self.producer = producer
        self.topic = topic
        self.timeout = timeout

    def publish(self, dead: Sequence[DeadLetter]) -> None:
        """Raises if any dead letter was not acknowledged, so the batch is retried, not lost."""
        futures = [
            self.producer.send(
                self.topic,
                key=d.message.key,
                value=d.message.value,
                headers=dead_letter_headers(d),
            )
            for d in dead
        ]
        self.producer.flush(timeout=self.timeout)
        for future in futures:
            future.get(timeout=self.timeout)
