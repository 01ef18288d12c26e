"""The processing core: decode a batch, fold it onto the stored views, commit it atomically.

Kafka-free on purpose, so the benchmark and the tests drive exactly what the consumer runs.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import WatchError

from consumers.decode import DecodeError, RawMessage, decode, type_label
from monitor.engine import HealthEngine
from monitor.enums import EventType, Outcome
from monitor.events import Envelope, event_type
from monitor.fold import Position, step
from monitor.health import ThresholdBook, Thresholds
from monitor.store.counters import EventCounters
from monitor.store.due import DueIndex
from monitor.store.epoch import Epoch, Held, decode_epoch, new_epoch
from monitor.store.fences import Fences
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
    commit_offsets: dict[int, int] = field(default_factory=dict)


class FenceBehind(Exception):
    """Redis holds less of these partitions than this process wrote: it lost acknowledged
    writes (a failover to a replica that missed them, a restore), so the batch must wait
    until the events in between are replayed. Maps each partition to Redis's fence."""

    def __init__(self, fences: dict[int, int]) -> None:
        super().__init__(f"Redis is behind this process's writes on partitions {sorted(fences)}")
        self.fences = fences


class ViewCache:
    """Views this process wrote last, so a hot sync is not re-read and re-parsed every batch.

    Valid only while this process alone writes its partitions: cleared on any rebalance,
    on a lost WATCH and on any Redis error (then Redis may hold a write we did not see).
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._views: OrderedDict[str, SyncView] = OrderedDict()

    def get(self, sync_id: str) -> SyncView | None:
        view = self._views.get(sync_id)
        if view is not None:
            self._views.move_to_end(sync_id)
        return view

    def put(self, view: SyncView) -> None:
        if self.size <= 0:
            return
        self._views[view.id] = view
        self._views.move_to_end(view.id)
        while len(self._views) > self.size:
            self._views.popitem(last=False)

    def clear(self) -> None:
        self._views.clear()

    def __len__(self) -> int:
        return len(self._views)


class Processor:
    """Folds batches of one topic into Redis; each batch is one fenced transaction.

    Health is not evaluated here: every sync a batch touched is marked due now, and the
    health engine evaluates it right after (the consumer wakes the scheduler).
    """

    def __init__(
        self,
        client: Redis,
        prefix: str,
        topic: str,
        clock: Callable[[], datetime] = utcnow,
        cache_size: int = 50_000,
    ) -> None:
        self.client = client
        self.topic = topic
        self.clock = clock
        self.syncs = SyncViews(prefix)
        self.providers = ProviderViews(prefix)
        self.indexes = Indexes(prefix)
        self.fences = Fences(prefix)
        self.counters = EventCounters(prefix)
        self.due = DueIndex(prefix)
        self.engine = HealthEngine(prefix, ThresholdBook(Thresholds()), clock)
        self.cache = ViewCache(cache_size)
        self.epoch = Epoch(prefix)
        self._epoch: str | None = None  # the dataset the cache was filled from
        # The fence each partition had after this process's last write: the cache's warrant.
        # A fence found elsewhere means another process wrote those syncs meanwhile.
        self._fenced: dict[int, int] = {}

    def prepare(self, messages: Sequence[RawMessage]) -> Prepared:
        """Drops what Redis already holds (one round trip) and decodes the rest."""
        prepared = Prepared(self.topic)
        for m in messages:
            prepared.last_offsets[m.partition] = max(
                m.offset, prepared.last_offsets.get(m.partition, -1)
            )
        fences = self.fences.get_many(self.client, self.topic, prepared.last_offsets)
        self._check_behind(fences)  # before any dead letter of the batch is published
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
        watched = self.fences.keys(self.topic, sorted(prepared.last_offsets))
        watched += [self.epoch.key, self.epoch.hold_key]
        with self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(*watched)  # type: ignore[no-untyped-call]
                    result, views, fenced = self._fold_and_queue(pipe, prepared)
                    pipe.execute()
                except WatchError:
                    log.info("fence moved under a batch of %s; re-reading", self.topic)
                    self.cache.clear()
                    continue
                except Held:
                    pipe.reset()
                    time.sleep(HOLD_WAIT)
                    continue
                except Exception:
                    self.cache.clear()
                    raise
                self._fenced.update(fenced)
                for view in views:
                    self.cache.put(view)
                return result

    def process(self, messages: Sequence[RawMessage]) -> tuple[Prepared, BatchResult]:
        """prepare + write, for callers with no dead-letter producer to run in between."""
        prepared = self.prepare(messages)
        return prepared, self.write(prepared)

    def _check_epoch(self, raw_epoch: object, held: object) -> str:
        """Waits out a rebuild's switch-over; drops the cache if the dataset is not the same."""
        if held is not None:
            raise Held
        epoch = decode_epoch(raw_epoch)
        if epoch is None or epoch != self._epoch:
            if self._epoch is not None:
                log.warning("the Redis dataset changed under this process; dropping its cache")
            self.cache.clear()
            epoch = epoch or new_epoch()
        self._epoch = epoch
        return epoch

    def _check_behind(self, fences: dict[int, int]) -> None:
        """Folding on a fence behind this process's own writes would bury the lost events
        under a newer one: nothing would ever replay them. Redis's fences become the warrant;
        the consumer seeks back to them."""
        lost = {p: f for p, f in fences.items() if f < self._fenced.get(p, -1)}
        if lost:
            self._fenced.update(lost)
            self.cache.clear()  # it holds views newer than Redis's
            raise FenceBehind(lost)

    def _load(self, pipe: Pipeline, sync_ids: list[str]) -> dict[str, SyncView | None]:
        views: dict[str, SyncView | None] = {}
        missing = []
        for sync_id in sync_ids:
            cached = self.cache.get(sync_id)
            if cached is None:
                missing.append(sync_id)
            else:
                views[sync_id] = cached
        if missing:
            views.update(zip(missing, self.syncs.get_many(pipe, missing), strict=True))
        return views

    def _fold_and_queue(
        self, pipe: Pipeline, prepared: Prepared
    ) -> tuple[BatchResult, list[SyncView], dict[int, int]]:
        parts = sorted(prepared.last_offsets)
        keys = [*self.fences.keys(self.topic, parts), self.epoch.key, self.epoch.hold_key]
        *raw_fences, raw_epoch, held = pipe.mget(keys)  # one round trip for all three
        epoch = self._check_epoch(raw_epoch, held)
        fences = self.fences.parse(parts, raw_fences)
        self._check_behind(fences)
        if any(fences[p] != self._fenced.get(p) for p in parts):
            # Written by another process since our last write (a rebalance's successor while
            # this one stalled, say): views cached here may be older than Redis's.
            self.cache.clear()
        events = [
            (m, e, _is_provider(e)) for m, e in prepared.events if m.offset > fences[m.partition]
        ]
        old_syncs = self._load(pipe, sorted({e.subject for _, e, p in events if not p}))
        provider_names = sorted({e.subject for _, e, p in events if p})
        old_providers = dict(
            zip(provider_names, self.providers.get_many(pipe, provider_names), strict=True)
        )

        result = BatchResult()
        syncs: dict[str, SyncView | None] = dict(old_syncs)
        providers: dict[str, ProviderView | None] = dict(old_providers)
        counts = result.counts
        deleted: set[str] = set()  # syncs a `sync.deleted` of this batch removed
        for message, event, of_provider in events:
            at = Position(message.partition, message.offset)
            store: dict[str, SyncView | None] | dict[str, ProviderView | None]
            store = providers if of_provider else syncs
            outcome_step = step(store[event.subject], event, at)
            store[event.subject] = outcome_step.view  # type: ignore[assignment]
            counts[(type_label(event.type), outcome_step.outcome.value)] += 1
            if event.type == DELETED and outcome_step.outcome is Outcome.APPLIED:
                deleted.add(event.subject)
        for dead in prepared.dead:
            if dead.message.offset > fences[dead.message.partition]:
                counts[(dead.type_label, Outcome.INVALID.value)] += 1

        pipe.multi()
        self.epoch.claim(pipe, epoch)
        changes = [
            (view, old_syncs[i])
            for i, view in syncs.items()
            if view is not None and view is not old_syncs[i]
        ]
        self.syncs.put_many(pipe, changes)
        self.indexes.update_many(
            pipe, [(view.id, entries(old), entries(view)) for view, old in changes]
        )
        due_now: dict[int | None, list[str]] = {}
        for view, old in changes:
            live = not view.deleted and view.known
            if not live or view.id in deleted:  # gone, or created again: not the old health
                provider = old.provider if old is not None else None
                self.engine.forget(pipe, view.id, provider, view.applied.partition)
            if live:
                due_now.setdefault(view.applied.partition, []).append(view.id)
            result.touched.add(view.id)
        for partition, ids in due_now.items():
            self.due.schedule_many(pipe, partition, ids, EVALUATE_NOW)
        written = [view for view, _ in changes]
        for name, pview in providers.items():
            if pview is not None and pview is not old_providers[name]:
                self.providers.put(pipe, pview)
                result.providers.add(name)
        self.engine.request_fanout(pipe, result.providers)
        for partition, offset in prepared.last_offsets.items():
            if offset > fences[partition]:
                self.fences.put(pipe, self.topic, partition, offset)
            result.commit_offsets[partition] = offset + 1
        self.counters.add(pipe, counts)
        fenced = {p: max(fences[p], o) for p, o in prepared.last_offsets.items()}
        return result, written, fenced


HOLD_WAIT = 0.05  # seconds between looks at a rebuild's switch-over hold
EVALUATE_NOW = datetime.fromtimestamp(0, UTC)  # a deadline long past: due at the next tick
DELETED = EventType.SYNC_DELETED.value


def _is_provider(event: Envelope) -> bool:
    kind = event_type(event)
    return kind is not None and kind.is_provider_event
