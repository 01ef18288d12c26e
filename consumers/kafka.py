"""kafka-python plumbing shared by the consumer, the dead-letter producer and the tools."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

log = logging.getLogger(__name__)


def ensure_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    security: Mapping[str, Any] | None = None,
    timeout: float = 30.0,
) -> None:
    """Creates each missing topic with its partition count and waits until it is listed."""
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap, client_id="syncmon-admin", **(security or {})
    )
    try:
        existing = set(admin.list_topics())
        missing = [
            NewTopic(name, parts, 1) for name, parts in topics.items() if name not in existing
        ]
        if missing:
            try:
                admin.create_topics(missing)
                log.info("created topics %s", ", ".join(t.name for t in missing))
            except TopicAlreadyExistsError:
                pass
        deadline = time.monotonic() + timeout
        while not set(topics) <= set(admin.list_topics()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"topics {sorted(topics)} not listed after {timeout}s")
            time.sleep(0.1)
    finally:
        admin.close()


# A dead letter is forwarded unchanged whatever its size: the source topic may take records
# far over the 1 MiB syncmon reads, and kafka-python's default limit (1 MiB) would refuse one
# forever, halting its partition. The DLQ topic's own limit must match the source topic's.
MAX_REQUEST_BYTES = 64 << 20


def make_producer(
    bootstrap: str,
    security: Mapping[str, Any] | None = None,
    bounds: Mapping[str, Any] | None = None,
) -> KafkaProducer:
    """A producer that waits for every replica: dead letters and health events must not drop.

    `bounds`: time limits a caller needs (the health publisher's sends must settle in time)."""
    return KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        retries=5,
        linger_ms=5,
        client_id="syncmon",
        max_request_size=MAX_REQUEST_BYTES,
        **(security or {}),
        **(bounds or {}),
    )


def close_producer(producer: KafkaProducer, timeout: float, what: str) -> None:
    """Closes a producer even when records are still unsettled (a broker gone quiet).

    kafka-python's `close` flushes first and raises if that times out, leaving its sender
    thread running; a caller's own clean-up after it (leaving the consumer group) would be
    skipped. Unsettled records are not lost: what they came from was never acknowledged.
    """
    try:
        producer.close(timeout=timeout)
    except KafkaError as exc:
        log.warning(
            "%s closed with sends unsettled (%s); their source, never acknowledged, resends them",
            what,
            exc,
        )
        sender = getattr(producer, "_sender", None)
        if sender is not None:
            sender.force_close()
            sender.join(timeout)
