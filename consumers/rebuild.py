"""`syncmon rebuild`: replay the topic from its first offset into a scratch database, then swap.

For when Redis lost its data: the live consumer goes on from its committed offsets, so the
history before the loss is missing until this replays it. The API keeps serving the live
data throughout; the swap is one atomic step (see monitor/store/switch.py).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from kafka import KafkaConsumer, TopicPartition
from redis import ConnectionPool, Redis

from consumers.decode import RawMessage
from consumers.processor import Processor
from consumers.records import install_raw_names
from monitor.engine import HealthEngine
from monitor.settings import Settings
from monitor.store.base import text
from monitor.store.epoch import Epoch
from monitor.store.fences import Fences
from monitor.store.indexes import Indexes
from monitor.store.switch import NOT_CAUGHT_UP, carried_patterns, swap_in

log = logging.getLogger(__name__)

HOLD_MS = 15_000  # writers wait at most this long should the rebuild die mid-switch
SWITCH_ATTEMPTS = 10


class RebuildError(RuntimeError):
    """The rebuild cannot start or finish; the message says what to do."""


@dataclass(frozen=True, slots=True)
class Report:
    events: int
    seconds: float
    carried: int
    live_db: int
    scratch_db: int


class Progress:
    """A progress bar with rate and ETA: redrawn in place on a terminal, a line every few
    seconds otherwise (so a log keeps a readable history)."""

    def __init__(self, out: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self.out = out
        self.clock = clock
        self.tty = out.isatty()
        self.started = clock()
        self._last = float("-inf")

    def update(self, done: int, total: int, final: bool = False) -> None:
        now = self.clock()
        if not final and now - self._last < (0.2 if self.tty else 2.0):
            return
        self._last = now
        line = progress_line(done, total, now - self.started)
        self.out.write(f"\r{line}" if self.tty else f"{line}\n")
        if final and self.tty:
            self.out.write("\n")
        self.out.flush()


def progress_line(done: int, total: int, elapsed: float, width: int = 30) -> str:
    """`rebuild [#####-----]  50.0%  10,000/20,000 events  2,000 ev/s  ETA 0:05`"""
    total = max(total, done, 1)
    filled = int(width * done / total)
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = "--:--" if rate <= 0 else _clock((total - done) / rate)
    return (
        f"rebuild [{'#' * filled}{'-' * (width - filled)}] {100 * done / total:5.1f}%  "
        f"{done:,}/{total:,} events  {rate:,.0f} ev/s  ETA {eta}"
    )


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def on_db(client: Redis, db: int) -> Redis:
    """The same server, credentials and TLS as `client`, another database."""
    pool = client.connection_pool
    kwargs = {**pool.connection_kwargs, "db": db}
    return Redis(connection_pool=ConnectionPool(connection_class=pool.connection_class, **kwargs))


class Rebuild:
    """One replay of the topic into `scratch_db`, then the switch-over."""

    def __init__(
        self, settings: Settings, live: Redis, scratch_db: int | None, out: TextIO = sys.stderr
    ) -> None:
        self.settings = settings
        self.live = live
        self.live_db = int(live.connection_pool.connection_kwargs.get("db", 0) or 0)
        self.scratch_db = (self.live_db + 1) % 16 if scratch_db is None else scratch_db
        if self.scratch_db == self.live_db:
            raise RebuildError(f"scratch database {self.scratch_db} is the live one; pick another")
        self.scratch = on_db(live, self.scratch_db)
        self.progress = Progress(out)
        self.done = 0
        prefix = settings.redis_prefix
        self.fences = Fences(prefix)
        self.epoch = Epoch(prefix)

    def run(self) -> Report:
        started = time.monotonic()
        keys = self.scratch.dbsize()
        if keys:
            raise RebuildError(
                f"scratch database {self.scratch_db} holds {keys} keys; empty it "
                f"or pass --scratch-db naming an empty database"
            )
        self.epoch.start_new(self.scratch)  # live writers see it after the swap: caches go
        consumer = self._consumer()
        try:
            tps = self._partitions(consumer)
            begin = consumer.beginning_offsets(tps)
            processor = Processor(
                self.scratch,
                self.settings.redis_prefix,
                self.settings.kafka_topic,
                cache_size=self.settings.view_cache_size,
            )
            ends = consumer.end_offsets(tps)
            self._replay(consumer, processor, tps, begin, {tp: ends[tp] - 1 for tp in tps})
            carried = self._switch(consumer, processor, tps, begin)
        finally:
            consumer.close()
        self.scratch.flushdb(asynchronous=True)  # now the pre-rebuild data
        self._forget_vanished()
        self.progress.update(self.done, self.done, final=True)
        return Report(self.done, time.monotonic() - started, carried, self.live_db, self.scratch_db)

    def _consumer(self) -> KafkaConsumer:
        s = self.settings
        install_raw_names()  # as the live consumer reads them
        return KafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap_servers,
            group_id=None,
            client_id="syncmon-rebuild",
            enable_auto_commit=False,
            max_poll_records=s.kafka_max_batch,
            fetch_max_wait_ms=min(500, s.kafka_poll_timeout_ms),
            **s.kafka_security(),
        )

    def _partitions(self, consumer: KafkaConsumer) -> list[TopicPartition]:
        topic = self.settings.kafka_topic
        deadline = time.monotonic() + 30
        while (parts := consumer.partitions_for_topic(topic)) is None:
            if time.monotonic() > deadline:
                servers = self.settings.kafka_bootstrap_servers
                raise RebuildError(f"topic {topic} not found on {servers}")
            time.sleep(0.2)
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        return tps

    def _replay(
        self,
        consumer: KafkaConsumer,
        processor: Processor,
        tps: list[TopicPartition],
        begin: dict[Any, int],
        until: dict[TopicPartition, int],
    ) -> None:
        """Applies every offset up to and including `until` on each partition."""
        while any(consumer.position(tp) <= until[tp] for tp in tps):
            records = consumer.poll(timeout_ms=500, max_records=self.settings.kafka_max_batch)
            messages = [
                RawMessage(r.topic, r.partition, r.offset, r.key, r.value, list(r.headers or []))
                for batch in records.values()
                for r in batch
            ]
            if messages:
                processor.process(messages)
                self.done += len(messages)
            total = sum(max(consumer.highwater(tp) or 0, until[tp] + 1) - begin[tp] for tp in tps)
            self.progress.update(self.done, total)

    def _switch(
        self,
        consumer: KafkaConsumer,
        processor: Processor,
        tps: list[TopicPartition],
        begin: dict[Any, int],
    ) -> int:
        """Holds live writers, catches up to exactly what they wrote, swaps; retried if the
        hold ran out first."""
        topic = self.settings.kafka_topic
        parts = [tp.partition for tp in tps]
        keys = self.fences.keys(topic, parts)
        for attempt in range(1, SWITCH_ATTEMPTS + 1):
            self.epoch.hold(self.live, HOLD_MS)
            try:
                live = self.fences.get_many(self.live, topic, parts)
                until = {tp: live[tp.partition] for tp in tps}
                self._replay(consumer, processor, tps, begin, until)
                rebuilt = self.fences.get_many(self.scratch, topic, parts)
                carried = swap_in(
                    self.live,
                    self.live_db,
                    self.scratch_db,
                    keys,
                    [rebuilt[p] for p in parts],
                    self.settings.redis_prefix,
                )
            except BaseException:
                self.epoch.release(self.live)
                raise
            if carried != NOT_CAUGHT_UP:  # the hold went away with the old data
                log.info("switched to the rebuilt data on attempt %d", attempt)
                return carried
            log.warning("live writers moved past the rebuild during the hold; catching up")
        self.epoch.release(self.live)
        raise RebuildError(f"could not catch up with the live consumer in {SWITCH_ATTEMPTS} tries")

    def _forget_vanished(self) -> None:
        """Health carried over for a sync the full history deletes (or never created)."""
        prefix = self.settings.redis_prefix
        indexes = Indexes(prefix)
        alive: set[str] = set()
        for key in indexes.all_keys:
            alive.update(text(m) for m in self.live.zrange(key, 0, -1))
        carried: set[str] = set()
        health_index = carried_patterns(prefix)[1]
        for key in self.live.scan_iter(match=health_index, count=1000):
            carried.update(text(m) for m in self.live.smembers(key))
        vanished = sorted(carried - alive)
        if vanished:
            engine = HealthEngine(prefix, self.settings.thresholds())
            engine.evaluate_ids(self.live, vanished)
