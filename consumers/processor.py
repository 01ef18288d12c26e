"""The processing core: decode a batch, fold it onto the stored views, commit it atomically.

Kafka-free on purpose, so the benchmark and the tests drive exactly what the consumer runs.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import WatchError

from consumers.decode import DecodeError, RawMessage, decode, type_label
from monitor.engine import HealthEngine, incidents_of
from monitor.enums import Outcome
from monitor.events import Envelope, event_type
from monitor.fold import Position, step
from monitor.health import Health, ThresholdBook, Thresholds
from monitor.store.counters import EventCounters
from monitor.store.fences import Fences
from monitor.store.health import HealthViews
from monitor.store.indexes import Indexes, entries
from monitor.store.providers import ProviderViews
from monitor.store.syncs import SyncViews
from monitor.views import ProviderView, SyncView

log = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that cannot be read, and why."""

    message: RawMessage
    reason: str
    type_label: str


@dataclass(slots=True)
class Prepared:
    """A decoded batch: events to fold, dead letters to publish, offsets it covers."""

    topic: str
    events: list[tuple[RawMessage, Envelope]] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    last_offsets: dict[int, int] = field(default_factory=dict)


@dataclass(slots=True)
class BatchResult:
    """What one committed batch did."""

    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    touched: set[str] = field(default_factory=set)
    providers: set[str] = field(default_factory=set)
    health: dict[str, Health] = field(default_factory=dict)
    commit_offsets: dict[int, int] = field(default_factory=dict)


class Processor:
    """Folds batches of one topic into Redis; each batch is one fenced transaction."""

    def __init__(
        self,
        client: Redis,
        prefix: str,
        topic: str,
        clock: Callable[[], datetime] = utcnow,
        thresholds: ThresholdBook | None = None,
    ) -> None:
        self.client = client
        self.topic = topic
        self.clock = clock
        self.syncs = SyncViews(prefix)
        self.providers = ProviderViews(prefix)
        self.healths = HealthViews(prefix)
        self.indexes = Indexes(prefix)
        self.fences = Fences(prefix)
        self.counters = EventCounters(prefix)
        self.engine = HealthEngine(prefix, thresholds or ThresholdBook(Thresholds()), clock)

    def prepare(self, messages: Sequence[RawMessage]) -> Prepared:
        """Drops what Redis already holds (one round trip) and decodes the rest."""
        prepared = Prepared(self.topic)
        for m in messages:
            prepared.last_offsets[m.partition] = max(
                m.offset, prepared.last_offsets.get(m.partition, -1)
            )
        fences = self.fences.get_many(self.client, self.topic, prepared.last_offsets)
        for m in messages:
            if m.offset <= fences[m.partition]:
                continue
            try:
                prepared.events.append((m, decode(m)))
            except DecodeError as exc:
                prepared.dead.append(DeadLetter(m, exc.reason, exc.type_label))
        return prepared

    def write(self, prepared: Prepared) -> BatchResult:
        """Folds and commits the batch; retried from fresh reads if another writer raced."""
        watched = [self.fences.key(self.topic, p) for p in sorted(prepared.last_offsets)]
        watched += [self.healths.key(i) for i in _sync_ids(prepared.events)]
        with self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(*watched)  # type: ignore[no-untyped-call]
                    result = self._fold_and_queue(pipe, prepared)
                    pipe.execute()
                    return result
                except WatchError:
                    log.info("fence or health moved under a batch of %s; re-reading", self.topic)
                    continue

    def process(self, messages: Sequence[RawMessage]) -> tuple[Prepared, BatchResult]:
        """prepare + write, for callers with no dead-letter producer to run in between."""
        prepared = self.prepare(messages)
        return prepared, self.write(prepared)

    def _fold_and_queue(self, pipe: Pipeline, prepared: Prepared) -> BatchResult:
        parts = sorted(prepared.last_offsets)
        fences = self.fences.get_many(pipe, self.topic, parts)
        events = [(m, e) for m, e in prepared.events if m.offset > fences[m.partition]]
        sync_ids = _sync_ids(events)
        n = len(sync_ids)
        loaded = pipe.mget(self.syncs.keys(sync_ids) + self.healths.keys(sync_ids)) if n else []
        old_syncs = {i: self.syncs.parse(r) for i, r in zip(sync_ids, loaded[:n], strict=True)}
        old_health = {
            i: None if r is None else Health.model_validate_json(r)
            for i, r in zip(sync_ids, loaded[n:], strict=True)
        }
        old_providers = self.providers.all(pipe) if events else {}

        result = BatchResult()
        syncs: dict[str, SyncView | None] = dict(old_syncs)
        providers: dict[str, ProviderView | None] = dict(old_providers)
        for message, event in events:
            at = Position(message.partition, message.offset)
            store: dict[str, SyncView | None] | dict[str, ProviderView | None]
            store = providers if _is_provider(event) else syncs
            outcome_step = step(store.get(event.subject), event, at)
            store[event.subject] = outcome_step.view  # type: ignore[assignment]
            result.counts[(type_label(event.type), outcome_step.outcome.value)] += 1
        for dead in prepared.dead:
            if dead.message.offset > fences[dead.message.partition]:
                result.counts[(dead.type_label, Outcome.INVALID.value)] += 1
        current = {k: v for k, v in providers.items() if v is not None}

        pipe.multi()
        now = self.clock()
        for sync_id, view in syncs.items():
            old = old_syncs[sync_id]
            if view is None or view is old:
                continue
            self.syncs.put(pipe, view)
            live = not view.deleted and view.known
            self.indexes.update(pipe, sync_id, entries(old), entries(view), live)
            if live:
                incidents = incidents_of(current, view.provider)
                health = self.engine.stage(pipe, view, old_health[sync_id], incidents, now)
                result.health[sync_id] = health
            else:
                self.engine.forget(pipe, sync_id, old_health[sync_id], view.applied.partition)
            result.touched.add(sync_id)
        for name, pview in providers.items():
            if pview is not None and pview is not old_providers.get(name):
                self.providers.put(pipe, pview)
                result.providers.add(name)
        self.engine.request_fanout(pipe, result.providers)
        for partition, offset in prepared.last_offsets.items():
            if offset > fences[partition]:
                self.fences.put(pipe, self.topic, partition, offset)
            result.commit_offsets[partition] = offset + 1
        self.counters.add(pipe, result.counts)
        return result


def _sync_ids(events: Sequence[tuple[RawMessage, Envelope]]) -> list[str]:
    return sorted({e.subject for _, e in events if not _is_provider(e)})


def _is_provider(event: Envelope) -> bool:
    kind = event_type(event)
    return kind is not None and kind.is_provider_event
