"""The Kafka consumer thread: poll, process, then commit, so Redis always leads the offsets."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import CommitFailedError, KafkaError, KafkaTimeoutError
from kafka.structs import MemberState, OffsetAndMetadata
from redis import Redis
from redis.exceptions import RedisError

from consumers.decode import RawMessage
from consumers.dlq import DeadLetterPublisher
from consumers.kafka import close_producer, ensure_topics, make_producer
from consumers.processor import BatchResult, FenceBehind, Prepared, Processor, ViewCache
from consumers.records import install_raw_names
from monitor.metrics import ProcessMetrics
from monitor.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(slots=True)
class ConsumerState:
    """What /readyz and the metrics report about the consumer."""

    started: bool = False
    redis_ok: bool = False
    kafka_ok: bool = False
    batches: int = 0
    events: int = 0
    last_error: str | None = None
    lag: dict[int, int] = field(default_factory=dict)


class Backoff:
    """Exponential backoff with a cap; waits on the stop event so shutdown is never delayed."""

    def __init__(self, stop: threading.Event, cap: float, first: float = 0.1) -> None:
        self.stop, self.cap, self.first, self.delay = stop, cap, first, first

    def wait(self) -> None:
        self.stop.wait(self.delay)
        self.delay = min(self.cap, self.delay * 2)

    def reset(self) -> None:
        self.delay = self.first


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Tracks owned partitions; processing is synchronous in the poll thread, so a revoke
    never finds a batch in flight."""

    def __init__(self, owned: set[int], cache: ViewCache) -> None:
        self.owned = owned
        self.cache = cache
        self.fresh: list[Any] = []  # assigned since the loop last looked: check them first

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.cache.clear()  # another process may write these syncs before we see them again
        self.owned.difference_update(tp.partition for tp in revoked)
        if revoked:
            log.info("partitions revoked: %s", sorted(tp.partition for tp in revoked))

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.cache.clear()
        self.owned.update(tp.partition for tp in assigned)
        self.fresh.extend(assigned)
        log.info("partitions assigned: %s", sorted(tp.partition for tp in assigned))


class SyncConsumer:
    """Runs the consume loop in a thread until `stop()`; retries Kafka and Redis forever."""

    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        on_batch: Callable[[BatchResult], None] | None = None,
        metrics: ProcessMetrics | None = None,
    ) -> None:
        self.metrics = metrics
        self.settings = settings
        self.redis = redis
        self.processor = Processor(
            redis, settings.redis_prefix, settings.kafka_topic, cache_size=settings.view_cache_size
        )
        self._owned: set[int] = set()
        self.on_batch = on_batch
        self.state = ConsumerState()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer: KafkaConsumer | None = None
        # (partition, offset) of dead letters published for batches not yet in Redis
        self._dead_sent: set[tuple[int, int]] = set()

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="syncmon-consumer", daemon=True)
        self._thread.start()
        self.state.started = True

    def stop(self, timeout: float = 30.0) -> None:
        """Finishes the batch in hand, commits it and leaves the group."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def owned_partitions(self) -> frozenset[int]:
        """The partitions whose syncs this process evaluates on time."""
        return frozenset(self._owned)

    @property
    def in_group(self) -> bool:
        consumer = self._consumer
        if consumer is None:
            return False
        try:
            stable = consumer.group_metadata().state == MemberState.STABLE
            return bool(stable and not consumer._coordinator.coordinator_unknown())
        except Exception:  # a snapshot of a closing consumer
            return False

    @property
    def kafka_connected(self) -> bool:
        """The broker answers: a session is up and its group coordinator is known.

        A frozen broker keeps its TCP connections open, so no socket error ever says it: the
        coordinator is marked dead once heartbeats go unanswered for a session timeout
        (`_request_timeout_ms` bounds the wait for each one), which this reads live, even
        while the poll thread is blocked in a commit.
        """
        consumer = self._consumer
        if consumer is None or not self.state.kafka_ok:
            return False
        try:
            return not consumer._coordinator.coordinator_unknown()
        except Exception:  # a snapshot of a closing consumer
            return False

    # -- loop -----------------------------------------------------------------------------

    def _run(self) -> None:
        backoff = Backoff(self._stop, self.settings.retry_max_seconds)
        while not self._stop.is_set():
            try:
                self._session()
                return
            except _Abandoned:
                return
            except KafkaError as exc:
                self.state.kafka_ok = False
                self.state.last_error = f"kafka: {exc}"
                log.warning("kafka unavailable (%s); retrying in %.1fs", exc, backoff.delay)
                backoff.wait()
            except Exception:
                log.exception("consumer crashed; restarting in %.1fs", backoff.delay)
                backoff.wait()

    def _session(self) -> None:
        s = self.settings
        security = s.kafka_security()
        if s.kafka_create_topics:
            ensure_topics(
                s.kafka_bootstrap_servers,
                {
                    s.kafka_topic: s.kafka_topic_partitions,
                    s.kafka_dlq_topic: s.kafka_topic_partitions,
                },
                security,
            )
        install_raw_names()  # a header name that is not UTF-8 must not stop a partition
        consumer = KafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap_servers,
            group_id=s.kafka_group_id,
            client_id="syncmon",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=s.kafka_session_timeout_ms,
            heartbeat_interval_ms=max(500, s.kafka_session_timeout_ms // 5),
            max_poll_interval_ms=s.kafka_max_poll_interval_ms,
            max_poll_records=s.kafka_max_batch,
            fetch_max_wait_ms=min(500, s.kafka_poll_timeout_ms),
            request_timeout_ms=_request_timeout_ms(s),
            **security,
        )
        self._consumer = consumer
        dlq = DeadLetterPublisher(
            make_producer(s.kafka_bootstrap_servers, security), s.kafka_dlq_topic
        )
        listener = _Listener(self._owned, self.processor.cache)
        try:
            consumer.subscribe([s.kafka_topic], listener=listener)
            self.state.kafka_ok = True
            while not self._stop.is_set():
                records = consumer.poll(
                    timeout_ms=s.kafka_poll_timeout_ms, max_records=s.kafka_max_batch
                )
                self.state.kafka_ok = True
                if listener.fresh:
                    behind = self._realign(consumer, listener.fresh)
                    listener.fresh = []
                    records = {tp: r for tp, r in records.items() if tp.partition not in behind}
                messages = [
                    RawMessage(
                        r.topic, r.partition, r.offset, r.key, r.value, list(r.headers or [])
                    )
                    for batch in records.values()
                    for r in batch
                ]
                if messages:
                    self._handle(consumer, dlq, messages)
                self._measure_lag(consumer)
        finally:
            self._consumer = None
            self._owned.clear()
            self.processor.cache.clear()
            close_producer(dlq.producer, 5, "dead-letter producer")
            consumer.close(autocommit=False, timeout_ms=5000)
            log.info("consumer closed and left group %s", s.kafka_group_id)

    def _realign(self, consumer: KafkaConsumer, assigned: list[Any]) -> set[int]:
        """Partitions where Redis holds less than the group committed, sought back to Redis's
        fence so the missing events are applied (the fences make the replay harmless).

        Offsets are committed only once a batch is in Redis, so this means Redis lost writes
        it had acknowledged: a failover to a replica that had not received them, or a restore
        from a backup. A Redis that holds nothing of a partition is a loss for `syncmon
        rebuild` instead, which replays without serving a half-empty view.
        """
        topic = self.settings.kafka_topic
        parts = [tp.partition for tp in assigned]
        fences = self._until_redis_answers(
            lambda: self.processor.fences.get_many(self.redis, topic, parts), "reading fences"
        )
        behind: set[int] = set()
        for tp in assigned:
            committed = consumer.committed(tp)
            fence = fences[tp.partition]
            if committed is None or committed <= fence + 1:
                continue
            if fence < 0:
                log.error(
                    "Redis holds nothing of partition %d, which the group committed up to %d: "
                    "if Redis lost its data, run `syncmon rebuild`",
                    tp.partition,
                    committed,
                )
                continue
            log.warning(
                "Redis is behind the group on partition %d (applied up to offset %d, committed "
                "%d; a failover lost writes?): replaying the %d events in between",
                tp.partition,
                fence,
                committed,
                committed - fence - 1,
            )
            consumer.seek(tp, fence + 1)
            behind.add(tp.partition)
        if behind:
            self.processor.cache.clear()
        return behind

    def _rewind(
        self, consumer: KafkaConsumer, messages: list[RawMessage], fences: dict[int, int]
    ) -> None:
        """Redis lost writes while this process ran (no rebalance to trigger `_realign`):
        nothing of the batch was written; its partitions are read again, those Redis lost
        from its fence on, so the lost events are applied before anything newer."""
        first: dict[int, int] = {}
        for m in messages:
            first[m.partition] = min(m.offset, first.get(m.partition, m.offset))
        topic = self.settings.kafka_topic
        for partition, start in sorted(first.items()):
            fence = fences.get(partition)
            if fence is not None and fence < 0:
                log.error(
                    "Redis lost everything of partition %d while this process was writing it: "
                    "if Redis lost its data, run `syncmon rebuild`",
                    partition,
                )
            elif fence is not None and fence + 1 < start:
                log.warning(
                    "Redis lost writes on partition %d while this process ran (it holds offsets "
                    "up to %d, this batch starts at %d; a failover?): replaying the %d events "
                    "in between",
                    partition,
                    fence,
                    start,
                    start - fence - 1,
                )
                start = fence + 1
            consumer.seek(TopicPartition(topic, partition), start)

    def _measure_lag(self, consumer: KafkaConsumer) -> None:
        """Highwater (from the last fetch) minus position, for each partition owned now."""
        lag: dict[int, int] = {}
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            position = consumer.position(tp, timeout_ms=0)
            if high is not None and position is not None:
                lag[tp.partition] = max(0, high - position)
        self.state.lag = lag

    def _handle(
        self, consumer: KafkaConsumer, dlq: DeadLetterPublisher, messages: list[RawMessage]
    ) -> None:
        """Writes the batch (retrying until Redis takes it) and then commits its offsets."""
        started = time.perf_counter()
        sent = self._dead_sent  # dead letters the broker took: not again on a retry or rewind

        def attempt() -> tuple[Prepared, BatchResult]:
            prepared = self.processor.prepare(messages)
            dead = [d for d in prepared.dead if _at(d.message) not in sent]
            if dead:
                dlq.publish(dead)
                sent.update(_at(d.message) for d in dead)
            return prepared, self.processor.write(prepared)

        try:
            prepared, result = self._until_redis_answers(attempt, "writing a batch")
        except FenceBehind as behind:
            self._rewind(consumer, messages, behind.fences)
            return
        # in Redis now: its fences keep these offsets from being decoded again
        done = result.commit_offsets
        sent.difference_update([a for a in sent if a[0] in done and a[1] < done[a[0]]])
        self._commit(consumer, result)
        self.state.batches += 1
        self.state.events += len(messages)
        if self.metrics is not None:
            self.metrics.batch_duration.observe(time.perf_counter() - started)
            now = datetime.now(UTC)
            for _, event in prepared.events:
                self.metrics.event_age.observe(max(0.0, (now - event.time).total_seconds()))
        if self.on_batch is not None:
            self.on_batch(result)

    def _until_redis_answers(self, work: Callable[[], T], doing: str) -> T:
        """`work()`, retried with backoff while Redis fails it; shutdown abandons it (offsets
        then stay uncommitted, so nothing is skipped)."""
        backoff = Backoff(threading.Event(), self.settings.retry_max_seconds)
        while True:
            try:
                done = work()
            except RedisError as exc:
                self.state.redis_ok = False
                self.state.last_error = f"redis: {exc}"
                if self._stop.is_set():
                    log.warning("stopping while %s; its offsets stay uncommitted", doing)
                    raise _Abandoned from exc
                log.warning(
                    "redis unavailable (%s); retrying %s in %.1fs", exc, doing, backoff.delay
                )
                backoff.wait()
                continue
            self.state.redis_ok = True
            return done

    def _commit(self, consumer: KafkaConsumer, result: BatchResult) -> None:
        offsets = {
            TopicPartition(self.settings.kafka_topic, p): OffsetAndMetadata(o, "", -1)
            for p, o in result.commit_offsets.items()
        }
        try:
            consumer.commit(offsets)
        except CommitFailedError as exc:
            # Lost the partition in a rebalance; the Redis fences already hold the truth.
            log.warning("offset commit failed after rebalance: %s", exc)
        except KafkaTimeoutError as exc:
            # The broker stopped answering (frozen, partitioned). The batch is in Redis and its
            # fence drops a redelivery, so the next commit simply covers these offsets too.
            # Keeping the session (rather than tearing it down) avoids leaving a ghost member
            # the group must wait out before it can rebalance once the broker is back.
            log.warning("offset commit timed out (%s); the next commit covers it", exc)


def _request_timeout_ms(settings: Settings) -> int:
    """How long any one Kafka request may go unanswered: the session timeout, capped at 30 s.

    kafka-python's default (30 s) is also how long a heartbeat sent to a frozen broker (alive
    TCP, no answers) waits before it fails, and only a failed heartbeat lets the session
    expire: with it, readiness never noticed a 20 s freeze. Bounded by the session timeout, the
    coordinator is marked dead about one session timeout after the broker froze (6 s in the
    tests). Must exceed fetch_max_wait_ms (at most 500 ms; the session timeout is >= 1 s).
    """
    return min(settings.kafka_session_timeout_ms, 30_000)


class _Abandoned(Exception):
    """Shutdown arrived while Redis was down: leave without committing."""


def _at(message: RawMessage) -> tuple[int, int]:
    return message.partition, message.offset
