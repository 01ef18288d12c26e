"""Which health changes a dead publisher got onto the topic before it could acknowledge them.

Only entries reclaimed from a publisher that stopped answering are in doubt. Their outbox
ids carry the time they were queued, and nothing queued at T reached Kafka before T, so
reading each partition from T (less a clock-skew margin) to its end settles the doubt.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

SKEW_MS = 60_000  # producer clocks may run behind Redis's by this much
SCAN_TIMEOUT_S = 30.0


class ScanTimeout(KafkaError):  # type: ignore[misc]
    """The topic could not be read to its end; the entries stay in doubt, retried later."""


def queued_at_ms(entry_id: str) -> int:
    """A Redis stream id is `<ms>-<seq>`: when the entry was added."""
    return int(entry_id.split("-", 1)[0])


def event_id(event_json: bytes) -> str | None:
    try:
        value = json.loads(event_json)
    except ValueError:
        return None
    found = value.get("id") if isinstance(value, dict) else None
    return found if isinstance(found, str) else None


def published_ids(
    bootstrap: str,
    topic: str,
    since_ms: int,
    wanted: set[str],
    security: Mapping[str, Any] | None = None,
) -> set[str]:
    """The ids among `wanted` found on `topic` in records written since `since_ms`."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        client_id="syncmon-publisher-check",
        enable_auto_commit=False,
        **(security or {}),
    )
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return set()
        starts = consumer.offsets_for_times({tp: max(0, since_ms - SKEW_MS) for tp in tps})
        todo = [tp for tp in tps if starts.get(tp) is not None]
        if not todo:
            return set()
        consumer.assign(todo)
        for tp in todo:
            consumer.seek(tp, starts[tp].offset)
        return _scan(consumer, todo, wanted)
    finally:
        consumer.close()


def _scan(consumer: KafkaConsumer, tps: list[TopicPartition], wanted: set[str]) -> set[str]:
    """Reads to the end: past the end offsets, and until a poll brings nothing more."""
    ends = consumer.end_offsets(tps)
    found: set[str] = set()
    deadline = time.monotonic() + SCAN_TIMEOUT_S
    while True:
        records = consumer.poll(timeout_ms=300)
        for batch in records.values():
            for record in batch:
                got = event_id(record.value)
                if got in wanted:
                    found.add(got)
        at_end = all(consumer.position(tp) >= ends[tp] for tp in tps)
        if at_end and not records:
            return found
        if time.monotonic() > deadline:
            raise ScanTimeout(f"could not read {tps[0].topic} to its end in {SCAN_TIMEOUT_S}s")
