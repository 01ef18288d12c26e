"""Dead letters: unreadable messages go, unchanged, to the DLQ topic with three headers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kafka import KafkaProducer
from kafka.errors import MessageSizeTooLargeError

from consumers.decode import Headers
from consumers.processor import DeadLetter

ERROR_HEADER = "syncmon_error"
PARTITION_HEADER = "syncmon_source_partition"
OFFSET_HEADER = "syncmon_source_offset"
OMITTED_HEADER = "syncmon_value_omitted"


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
        """Raises if any dead letter was not acknowledged, so the batch is retried, not lost.

        One the DLQ topic refuses as too large would be refused forever and stop its
        partition; it goes without its value instead, the headers saying where to read it.
        """
        too_large = [d for d, error in zip(dead, self._send(dead), strict=True) if error]
        if too_large:
            self._send(too_large, omit_value=True)

    def _send(self, dead: Sequence[DeadLetter], omit_value: bool = False) -> list[bool]:
        """Sends and waits; True where a record was refused as too large (by the producer's
        own limit at once, or by the broker's after the send). Without its value a record
        is small: a refusal then is an error, raised."""
        futures: list[Any] = []
        for d in dead:
            headers = dead_letter_headers(d)
            if omit_value:
                size = len(d.message.value or b"")
                headers.append((OMITTED_HEADER, f"{size} bytes, too large for the DLQ".encode()))
            value = None if omit_value else d.message.value
            try:
                futures.append(
                    self.producer.send(self.topic, key=d.message.key, value=value, headers=headers)
                )
            except MessageSizeTooLargeError:
                if omit_value:
                    raise
                futures.append(None)
        self.producer.flush(timeout=self.timeout)
        refused = []
        for future in futures:
            try:
                if future is not None:
                    future.get(timeout=self.timeout)
                refused.append(future is None)
            except MessageSizeTooLargeError:
                if omit_value:
                    raise
                refused.append(True)
        return refused
