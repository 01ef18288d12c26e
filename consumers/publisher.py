"""Publishes queued health changes to Kafka: each outbox entry once, deleted after the ack."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

from kafka.errors import KafkaError
from redis import Redis
from redis.exceptions import RedisError

from consumers.already import event_id, published_ids, queued_at_ms
from consumers.consumer import Backoff
from consumers.kafka import close_producer, ensure_topics, make_producer
from monitor.settings import Settings
from monitor.store.outbox import Entry, Outbox

log = logging.getLogger(__name__)
# CloudEvents Kafka binding: structured mode is told apart from binary mode by this header.
STRUCTURED = [("content-type", b"application/cloudevents+json; charset=UTF-8")]

CLAIM_IDLE_MS = 30_000  # an entry taken by a publisher that died is re-published after this
BATCH = 500

# A send must be settled (acknowledged, or failed for good: never retried again) before its
# entry can be claimed, else the claimer reads the topic too early, misses the record, and the
# change goes out twice. From the moment entries are taken (read or claimed): sends start
# within SEND_START_MS, each send() blocks (metadata, buffer) at most MAX_BLOCK_MS, and the
# producer settles each record within DELIVERY_TIMEOUT_MS of send(), in-flight ones included.
SEND_START_MS = 7_000
MAX_BLOCK_MS = 3_000
REQUEST_TIMEOUT_MS = 8_000  # one produce request; kafka-python wants delivery >= this + linger
DELIVERY_TIMEOUT_MS = 12_000  # kafka-python's default, 120 s, would outlive the claim
SETTLED_MS = SEND_START_MS + MAX_BLOCK_MS + DELIVERY_TIMEOUT_MS
MARGIN_MS = 8_000  # pauses (GC, scheduling) and the Redis round trip
if SETTLED_MS + MARGIN_MS > CLAIM_IDLE_MS:
    raise RuntimeError(f"a health send may take {SETTLED_MS} ms, too close to CLAIM_IDLE_MS")
RENEW_SLACK_MS = 1_000  # Redis's clock and ours measure the claim's age a little apart
PRODUCER_BOUNDS = {
    "max_block_ms": MAX_BLOCK_MS,
    "request_timeout_ms": REQUEST_TIMEOUT_MS,
    "delivery_timeout_ms": DELIVERY_TIMEOUT_MS,
}


class HealthPublisher:
    """A thread: read the outbox through a Redis consumer group, produce, wait, acknowledge.

    A process that dies between the broker's ack and the Redis ack leaves its entries in
    doubt; another takes them over after CLAIM_IDLE_MS and first reads the topic for their
    event ids (`<sync>:<n>`), so what already got there is acknowledged, not sent again.
    """

    def __init__(self, settings: Settings, redis: Redis) -> None:
        self.settings = settings
        self.redis = redis
        self.outbox = Outbox(settings.redis_prefix)
        self.name = f"{socket.gethostname()}-{os.getpid()}"
        self.published = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._producer: Any = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="syncmon-publisher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        backoff = Backoff(self._stop, self.settings.retry_max_seconds)
        while not self._stop.is_set():
            try:
                self._loop()
            except (KafkaError, RedisError, OSError) as exc:
                log.warning("health publisher paused (%s); retrying in %.1fs", exc, backoff.delay)
                backoff.wait()
            except Exception:
                log.exception("health publisher crashed; restarting in %.1fs", backoff.delay)
                backoff.wait()
        if self._producer is not None:
            close_producer(self._producer, 5, "health publisher")

    def _loop(self) -> None:
        s = self.settings
        if self._producer is None:
            security = s.kafka_security()
            if s.kafka_create_topics:
                ensure_topics(
                    s.kafka_bootstrap_servers, {s.health_topic: s.kafka_topic_partitions}, security
                )
            self._producer = make_producer(s.kafka_bootstrap_servers, security, PRODUCER_BOUNDS)
        self.outbox.ensure_group(self.redis)
        while not self._stop.is_set():
            claimed = time.monotonic()
            stale = self.outbox.claim_stale(self.redis, self.name, CLAIM_IDLE_MS, BATCH)
            unsent = self._not_yet_published(stale)
            if unsent:
                # The topic scan may have used most of the claim: renew it before sending
                # (a later claim would scan as long again, and never get to send).
                taken = time.monotonic()
                held_ms = int((taken - claimed) * 1000) - RENEW_SLACK_MS
                kept = self.outbox.renew(self.redis, self.name, [e[0] for e in unsent], held_ms)
                if len(kept) < len(unsent):
                    log.warning(
                        "%d health changes claimed from a dead publisher could not be renewed "
                        "(another publisher took them, or the claim was slow): left to a claim",
                        len(unsent) - len(kept),
                    )
                self._publish([e for e in unsent if e[0] in kept], taken)
            taken = time.monotonic()
            self._publish(self.outbox.read(self.redis, self.name, BATCH, block_ms=200), taken)

    def _not_yet_published(self, stale: list[Entry]) -> list[Entry]:
        """Of the entries a dead publisher held, those the topic does not have yet."""
        if not stale:
            return []
        ids = {entry_id: event_id(event) for entry_id, _, event in stale}
        s = self.settings
        found = published_ids(
            s.kafka_bootstrap_servers,
            s.health_topic,
            min(queued_at_ms(entry_id) for entry_id, _, _ in stale),
            {i for i in ids.values() if i is not None},
            s.kafka_security(),
        )
        sent = [entry_id for entry_id, _, _ in stale if ids[entry_id] in found]
        if sent:
            self.outbox.done(self.redis, sent)
            log.info("%d health changes a dead publisher had sent: acknowledged", len(sent))
        return [e for e in stale if ids[e[0]] not in found]

    def _publish(self, entries: list[Entry], taken: float) -> None:
        """Sends and waits within SETTLED_MS of `taken` (see above); an entry whose send could
        not start in time (Kafka slow to take the ones before) is not sent: a later claim
        settles it."""
        sent: list[str] = []
        futures = []
        for entry_id, sync_id, event in entries:
            if time.monotonic() - taken > SEND_START_MS / 1000:
                log.warning(
                    "%d health changes held too long to send before their claim expires; "
                    "left to a later claim",
                    len(entries) - len(sent),
                )
                break
            futures.append(
                self._producer.send(
                    self.settings.health_topic,
                    key=sync_id.encode(),
                    value=event,
                    headers=STRUCTURED,
                )
            )
            sent.append(entry_id)
        if not sent:
            return
        settled_by = taken + SETTLED_MS / 1000
        self._producer.flush(timeout=max(0.0, settled_by - time.monotonic()))
        for future in futures:  # all done once flush returns: get() does not wait
            future.get(timeout=max(0.0, settled_by - time.monotonic()))
        self.outbox.done(self.redis, sent)
        self.published += len(sent)
