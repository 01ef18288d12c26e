"""Seeded, realistic sync-engine event simulator behind `syncmon simulate`.

Pure part: `Fleet` (catalog, `monitor.simdata`), the engine (`monitor.simlife`), `history()` and
`LiveFeed` need no services and are deterministic for a seed. `run()` paces the live feed into
Kafka with KafkaProducer.
"""

from __future__ import annotations

import gc
import json
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from monitor.enums import EventType as ET
from monitor.simdata import Fleet, Profile, SimSync, new_uuid
from monitor.simlife import Engine, Ev, sync_life

__all__ = [
    "SOURCE",
    "Fleet",
    "LiveFeed",
    "Message",
    "Profile",
    "SimSync",
    "decode",
    "history",
    "iter_history",
    "live",
    "run",
]

log = logging.getLogger(__name__)

SOURCE = "//sync-engine/simulator"
_STRUCTURED = b"application/cloudevents+json"
_JSON = b"application/json"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

CREATION_SPAN = 0.25  # history: all syncs are created within the first quarter of events
LIVE_CREATE_WINDOW, LIVE_CREATE_GAP = 10.0, 0.5
RETRY_BACKOFF, MAX_BACKOFF = 0.5, 10.0  # seconds, doubling, while Kafka is unavailable
# run() starts the fleet this long in the past: the catch-up is sent at `rate` right away,
# so a demo shows finished backfills and failures at once and small runs end quickly
WARMUP_SECONDS = 300.0


@dataclass(slots=True)
class Message:
    """One Kafka record exactly as the producer sends it, so tests see the wire form."""

    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


def decode(msg: Message) -> dict[str, Any]:
    """Rebuild the CloudEvent from either mode, so tests check both the same way."""
    headers = dict(msg.headers)
    if "ce_specversion" not in headers:
        event: dict[str, Any] = json.loads(msg.value)
        return event
    event = {k[3:]: v.decode() for k, v in headers.items() if k.startswith("ce_")}
    event["sequence"] = int(event["sequence"])
    event["datacontenttype"] = headers["content-type"].decode()
    event["data"] = json.loads(msg.value)
    return event


def _utc(dt: datetime) -> datetime:
    """Treat naive datetimes as UTC so callers cannot shift the clock by accident."""
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


_dumps = json.JSONEncoder(separators=(",", ":")).encode  # reused: 200k events must be quick
# ids, times and subjects are our own uuids / RFC 3339 / provider names: no escaping needed
_ENVELOPE = (
    '{{"specversion":"1.0","id":"{}","source":"' + SOURCE + '","type":"{}","time":"{}",'
    '"subject":"{}","datacontenttype":"application/json","sequence":{},"data":{}}}'
).format


class _Encoder:
    """Turns (subject, type, data) into wire messages; owns ids, sequences and mode choice."""

    def __init__(self, seed: int, binary_ratio: float) -> None:
        if not 0.0 <= binary_ratio <= 1.0:
            raise ValueError("binary_ratio must be within [0, 1]")
        self._ids = random.Random(f"{seed}/ids")
        self._mode = random.Random(f"{seed}/mode")
        self._ratio = binary_ratio
        self._seq: dict[str, int] = {}
        self._sec = -1
        self._prefix = ""

    def time(self, epoch_us: int) -> str:
        """RFC 3339 UTC with 'Z'; caches the seconds prefix because strftime is slow."""
        sec, us = divmod(epoch_us, 1_000_000)
        if sec != self._sec:
            self._sec, self._prefix = sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        return f"{self._prefix}.{us:06d}Z"

    def encode(self, ev: Ev, when: str) -> Message:
        """Encode one event; times inside data match the event time, as the engine's would."""
        subject, etype, data = ev
        if etype is ET.SYNC_CREATED:
            data["created_at"] = data["updated_at"] = when
        elif etype is ET.SYNC_UPDATED:
            data["updated_at"] = when
        seq = self._seq.get(subject, 0) + 1
        self._seq[subject] = seq
        eid = new_uuid(self._ids)
        key = subject.encode()
        if self._ratio and self._mode.random() < self._ratio:
            headers = [
                ("ce_specversion", b"1.0"),
                ("ce_id", eid.encode()),
                ("ce_type", etype.value.encode()),
                ("ce_source", SOURCE.encode()),
                ("ce_time", when.encode()),
                ("ce_subject", key),
                ("ce_sequence", str(seq).encode()),
                ("content-type", _JSON),
            ]
            return Message(key, _dumps(data).encode(), headers)
        value = _ENVELOPE(eid, etype.value, when, subject, seq, _dumps(data))
        return Message(key, value.encode(), [("content-type", _STRUCTURED)])


def iter_history(
    syncs: int,
    events: int,
    seed: int,
    start: datetime,
    step_seconds: float,
    binary_ratio: float = 0.1,
) -> Iterator[Message]:
    """Stream `history()` so benchmarks need not hold every message at once."""
    if syncs < 1 or events < 0 or step_seconds < 0:
        raise ValueError("need syncs >= 1, events >= 0, step_seconds >= 0")
    start = _utc(start)
    fleet = Fleet(syncs, seed, epoch=start)
    eng = Engine(fleet, seed, now=0.0)
    enc = _Encoder(seed, binary_ratio)
    eng.add_providers(fleet.providers, 0.0)
    n_create = min(syncs, events)
    span = events if n_create == events else max(n_create, int(events * CREATION_SPAN))
    start_us = (start - _EPOCH) // timedelta(microseconds=1)
    step_us = step_seconds * 1e6
    pending: deque[Ev] = deque()
    created = next_slot = 0
    for i in range(events):
        when = enc.time(start_us + round(i * step_us))
        if pending:
            yield enc.encode(pending.popleft(), when)
            continue
        if created < n_create and next_slot <= i:
            actor = sync_life(eng, fleet.syncs[created])
            created += 1
            next_slot = created * span // n_create
            evs = next(actor)[1]
            eng.schedule(actor, eng.now)
        else:
            evs = eng.pop(events - i)[1]
        pending.extend(evs[1:])
        yield enc.encode(evs[0], when)


def history(
    syncs: int,
    events: int,
    seed: int,
    start: datetime,
    step_seconds: float,
    binary_ratio: float = 0.1,
) -> list[Message]:
    """Exactly `events` messages at `start + i*step_seconds`; ordering follows simulated time."""
    # The result holds ~2 tracked objects per event; pausing the cyclic GC while it grows
    # saves about a third of the time on 200k events (the engine's few cycles wait till later).
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return list(iter_history(syncs, events, seed, start, step_seconds, binary_ratio))
    finally:
        if was_enabled:
            gc.enable()


class LiveFeed:
    """Wall-clock simulation: `poll(now)` returns what the fleet would have emitted by now."""

    def __init__(
        self, syncs: int, seed: int, start: datetime | None = None, binary_ratio: float = 0.1
    ) -> None:
        start = _utc(start or datetime.now(UTC))
        t0 = start.timestamp()
        self.fleet = Fleet(syncs, seed, epoch=start)
        self._eng = Engine(self.fleet, seed, now=t0)
        self._enc = _Encoder(seed, binary_ratio)
        gap = min(LIVE_CREATE_GAP, LIVE_CREATE_WINDOW / max(syncs, 1))
        for k, s in enumerate(self.fleet.syncs):
            self._eng.schedule(sync_life(self._eng, s), t0 + k * gap)
        self._eng.add_providers(self.fleet.providers, t0)

    def next_due(self) -> float | None:
        """Epoch seconds of the next event, so callers can sleep instead of spin."""
        return self._eng.heap[0][0] if self._eng.heap else None

    def poll(self, now: datetime | float, limit: int | None = None) -> list[Message]:
        """Everything due at `now` (about `limit` at most); event time is the due time."""
        ts = now if isinstance(now, float | int) else _utc(now).timestamp()
        out: list[Message] = []
        heap, eng, enc = self._eng.heap, self._eng, self._enc
        while heap and heap[0][0] <= ts and (limit is None or len(out) < limit):
            due, evs = eng.pop(len(heap[0][2]))
            when = enc.time(round(due * 1e6))
            out.extend(enc.encode(ev, when) for ev in evs)
        return out


def live(
    syncs: int,
    seed: int,
    binary_ratio: float = 0.1,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[Message]:
    """Endless live stream: yields messages as they fall due on `clock`, sleeping in between."""
    feed = LiveFeed(syncs, seed, clock(), binary_ratio)
    while True:
        now = clock().timestamp()
        batch = feed.poll(now)
        yield from batch
        if not batch:
            nd = feed.next_due()
            sleep(1.0 if nd is None else min(1.0, max(0.0, nd - now)))


class _TokenBucket:
    """Caps the average send rate; the small burst keeps any one second near `rate`."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate * 0.05)
        self.tokens = 1.0
        self.last = time.monotonic()

    def take(self) -> float:
        """Take a token and return 0, or return how long to wait for one."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class _Deliveries:
    """Collects producer callbacks (sender thread) for the main loop to act on."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.delivered = 0
        self._failed: list[tuple[int, Message]] = []
        self.last_error: BaseException | None = None

    def ok(self, _metadata: Any) -> None:
        """Count an acknowledged record."""
        with self._lock:
            self.delivered += 1

    def failed(self, index: int, msg: Message, exc: BaseException) -> None:
        """Keep a record the producer gave up on, to send it again in order."""
        with self._lock:
            self._failed.append((index, msg))
            self.last_error = exc

    def take_failed(self) -> list[tuple[int, Message]]:
        """Failed records in original send order."""
        with self._lock:
            failed, self._failed = self._failed, []
        return sorted(failed, key=lambda f: f[0])


def _connect(
    bootstrap_servers: str,
    stop: threading.Event,
    deadline: float | None,
    security: Mapping[str, Any] | None = None,
) -> Any:
    """Build the producer, retrying with backoff while the broker is not up yet."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    backoff = RETRY_BACKOFF
    while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
        try:
            return KafkaProducer(
                bootstrap_servers=bootstrap_servers,
                client_id="syncmon-simulator",
                acks="all",
                linger_ms=5,
                allow_auto_create_topics=False,
                max_block_ms=5000,
                bootstrap_timeout_ms=5000,
                **(security or {}),
            )
        except KafkaError as exc:
            log.warning(
                "kafka %s unavailable (%s); retrying in %.1fs", bootstrap_servers, exc, backoff
            )
            stop.wait(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)
    return None


def _send(
    producer: Any,
    topic: str,
    index: int,
    msg: Message,
    deliveries: _Deliveries,
    stop: threading.Event,
    deadline: float | None,
) -> bool:
    """Hand one record to the producer; if its buffer or metadata is stuck, back off and retry."""
    from kafka.errors import KafkaTimeoutError

    backoff = RETRY_BACKOFF
    while True:
        try:
            future = producer.send(topic, key=msg.key, value=msg.value, headers=msg.headers)
        except KafkaTimeoutError as exc:
            log.warning("kafka send blocked (%s); retrying in %.1fs", exc, backoff)
            if stop.wait(backoff) or (deadline is not None and time.monotonic() >= deadline):
                return False
            backoff = min(backoff * 2, MAX_BACKOFF)
            continue
        future.add_callback(deliveries.ok)
        future.add_errback(deliveries.failed, index, msg)
        return True


def _drain(producer: Any, topic: str, deliveries: _Deliveries, index: int) -> None:
    """Flush, resending what failed a few times, then close; never raises."""
    from kafka.errors import KafkaError

    for attempt in range(3):
        try:
            producer.flush(timeout=10)
        except KafkaError as exc:
            log.warning("kafka flush incomplete (%s)", exc)
        failed = deliveries.take_failed()
        if not failed:
            break
        log.warning(
            "%d event(s) undelivered at shutdown (%s); retry %d/3",
            len(failed),
            deliveries.last_error,
            attempt + 1,
        )
        time.sleep(RETRY_BACKOFF * 2**attempt)
        for _, msg in failed:
            index += 1
            try:
                future = producer.send(topic, key=msg.key, value=msg.value, headers=msg.headers)
                future.add_callback(deliveries.ok)
                future.add_errback(deliveries.failed, index, msg)
            except KafkaError as exc:
                log.warning("kafka send failed at shutdown (%s)", exc)
    try:
        producer.close(timeout=5)
    except KafkaError as exc:
        log.warning("kafka close failed (%s); dropping undelivered events", exc)
        # kafka-python's close() raises before stopping its sender thread, which then
        # retries in the background and tracebacks from __del__; stop it ourselves.
        sender = getattr(producer, "_sender", None)
        if sender is not None:
            sender.force_close()
        producer._closed = True


def run(
    bootstrap_servers: str,
    topic: str,
    syncs: int,
    rate: float,
    seed: int | None,
    duration: float | None,
    max_events: int | None,
    binary_ratio: float = 0.1,
    stop: threading.Event | None = None,
    *,
    warmup: float = WARMUP_SECONDS,
    security: Mapping[str, Any] | None = None,
) -> int:
    """Produce the live simulation to Kafka at <= `rate` events/s; returns records acked.

    `security`: kafka-python SSL/SASL options, as `Settings.kafka_security()` gives them.
    """
    if rate <= 0 or syncs < 1 or warmup < 0:
        raise ValueError("need rate > 0, syncs >= 1 and warmup >= 0")
    stop = stop if stop is not None else threading.Event()
    if seed is None:
        seed = random.SystemRandom().randrange(2**31)
    deadline = None if duration is None else time.monotonic() + duration
    log.info(
        "simulating %d syncs, seed %d, <= %.1f events/s to %s/%s",
        syncs,
        seed,
        rate,
        bootstrap_servers,
        topic,
    )
    producer = _connect(bootstrap_servers, stop, deadline, security)
    if producer is None:
        return 0
    feed = LiveFeed(syncs, seed, datetime.now(UTC) - timedelta(seconds=warmup), binary_ratio)
    bucket, deliveries = _TokenBucket(rate), _Deliveries()
    backlog: deque[tuple[int, Message]] = deque()
    low, chunk = max(64, int(rate)), max(256, int(rate) * 2)
    produced = index = 0  # produced: handed over and not failed; index: send order
    fail_backoff, seen_delivered, next_report = RETRY_BACKOFF, 0, time.monotonic() + 10
    last_ack = next_stall_warn = time.monotonic()
    try:
        while not stop.is_set():
            now = time.monotonic()
            if (deadline is not None and now >= deadline) or (
                max_events is not None and produced >= max_events
            ):
                break
            if now >= next_report:
                log.info("simulator: %d events acknowledged", deliveries.delivered)
                next_report = now + 10
            failed = deliveries.take_failed()
            if failed:
                log.warning(
                    "%d event(s) not delivered (%s); resending in %.1fs",
                    len(failed),
                    deliveries.last_error,
                    fail_backoff,
                )
                backlog.extendleft(reversed(failed))
                produced -= len(failed)
                stop.wait(fail_backoff)
                fail_backoff = min(fail_backoff * 2, MAX_BACKOFF)
                continue
            if deliveries.delivered != seen_delivered:
                seen_delivered, fail_backoff, last_ack = deliveries.delivered, RETRY_BACKOFF, now
            elif produced > seen_delivered and now - last_ack > 5 and now >= next_stall_warn:
                log.warning(
                    "kafka has acknowledged nothing for %.0fs (%d events in flight); "
                    "the producer keeps retrying",
                    now - last_ack,
                    produced - seen_delivered,
                )
                next_stall_warn = now + 10
            if len(backlog) < low:
                for msg in feed.poll(time.time(), limit=chunk):
                    index += 1
                    backlog.append((index, msg))
            if not backlog:
                nd = feed.next_due()
                wait = 0.5 if nd is None else min(0.5, max(0.001, nd - time.time()))
                stop.wait(wait)
                continue
            wait = bucket.take()
            if wait > 0:
                stop.wait(wait)
                continue
            idx, msg = backlog.popleft()
            if _send(producer, topic, idx, msg, deliveries, stop, deadline):
                produced += 1
            else:
                backlog.appendleft((idx, msg))
    finally:
        _drain(producer, topic, deliveries, index)
    log.info("simulator stopped: %d events acknowledged", deliveries.delivered)
    return deliveries.delivered
