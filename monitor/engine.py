"""The health engine: evaluates syncs, stores health and queues each status change exactly once.

Every write is queued in one transaction that WATCHes the health and view keys it read, so
two evaluators racing on one sync (a rebalance, a tick beside a batch) record one change, and
a batch's "evaluate now" is never overwritten by a deadline judged from the view before it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import WatchError

from monitor.enums import CredentialStatus, HealthStatus
from monitor.health import (
    OK,
    RULE_FIELDS,
    Check,
    Health,
    History,
    ThresholdBook,
    Verdict,
    assess,
    health_of,
    next_deadline,
)
from monitor.store.base import Client, text
from monitor.store.due import DueIndex
from monitor.store.epoch import Epoch
from monitor.store.fanout import FanoutRequests
from monitor.store.health import HealthViews, Stored, SyncRow
from monitor.store.indexes import Indexes
from monitor.store.outbox import Outbox
from monitor.store.providers import ProviderViews
from monitor.store.syncs import SyncViews
from monitor.views import Incident, ProviderView, SyncView, trusted

log = logging.getLogger(__name__)

EVENT_TYPE = "sync.health.changed"
SOURCE = "//syncmon"
CHUNK = 160  # WATCH costs Redis O(keys watched) per key (2 per sync): larger chunks cost more
TRIES = 3  # WATCHes a chunk may lose before it is halved
SET_ASIDE = timedelta(minutes=1)  # until a sync whose evaluation raised is tried again
# (sync ids, the due partition each was found in) -> syncs evaluated: `evaluate_ids` elsewhere
Evaluate = Callable[[list[str], dict[str, int]], int]
_VALUES = {s: s.value for s in HealthStatus}  # `.value` is a slow descriptor on a hot path
_ROW_FIELDS = set(SyncRow.model_fields)  # every one given: shared by the rows (frozen)
# What the engine reads of a view: the rules' fields, the metrics row's and its own.
VIEW_FIELDS = RULE_FIELDS | {"org_id", "name", "last_event_at", "applied", "deleted_at", "known"}


def utcnow() -> datetime:
    return datetime.now(UTC)


def to_ms(now: datetime) -> datetime:
    """Health times are stored to the millisecond."""
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def incidents_of(providers: dict[str, ProviderView], provider: str | None) -> Sequence[Incident]:
    view = providers.get(provider or "")
    return tuple(view.incidents.values()) if view is not None else ()


def change_event(previous: History | None, health: Health) -> str:
    """The `sync.health.changed` CloudEvent. Its id numbers the change and adds when it
    happened: a deleted sync created again starts counting at 1, and its changes must not
    share ids with the old ones (a recovering publisher matches on them)."""
    at = health.in_status_since or health.evaluated_at
    changed_at = at.isoformat().replace("+00:00", "Z")
    data = {
        "sync_id": health.sync_id,
        "from": previous.status.value if previous is not None else None,
        "to": health.status.value,
        "checks": [c.model_dump(mode="json") for c in health.checks],
        "changed_at": changed_at,
    }
    return json.dumps(
        {
            "specversion": "1.0",
            "id": f"{health.sync_id}:{health.transitions}:{round(at.timestamp() * 1000)}",
            "source": SOURCE,
            "type": EVENT_TYPE,
            "subject": health.sync_id,
            "time": changed_at,
            "sequence": health.transitions,
            "datacontenttype": "application/json",
            "data": data,
        },
        separators=(",", ":"),
    )


def indexed_provider(previous: Stored, view: SyncView) -> str | None:
    """The provider a sync's health is indexed under: the one stored with its last health."""
    return previous.m.p if previous.m is not None else view.provider


def row_of(view: SyncView, found: Iterable[Verdict | Check]) -> SyncRow:
    """The metrics row of a sync: labels and facts `/metrics` renders without the view."""
    complete = view.initial_backfill_completed_at is not None
    backfill = view.backfill
    if complete or not backfill:
        ratio: float | None = None  # if complete, `bc` says so
    else:
        # Over the collections completion waits for (as the fold's), not only those heard of:
        # one of four done is 25%, not 100%.
        required = view.collection_ids or tuple(backfill)
        progress = (backfill.get(cid) for cid in required)
        ratio = sum((p.ratio or 0.0) if p else 0.0 for p in progress) / len(required)
    return trusted(
        SyncRow,
        {
            "p": view.provider,
            "o": view.org_id,
            "n": view.name,
            "f": view.sync_frequency,
            "ls": view.last_success_at,
            "le": view.last_event_at,
            "bc": int(complete),
            "br": None if ratio is None else round(ratio, 4),
            "cf": view.consecutive_failures,
            "cr": int(view.credential_status is CredentialStatus.FAILED),
            "ck": {c.name: _VALUES[c.status] for c in found if c.status is not OK},
        },
        _ROW_FIELDS,
    )


@dataclass(slots=True)
class Writes:
    """One transaction's writes, grouped by key: a chunk of syncs is a few commands.

    Each (key, member) keeps its last operation, so the result is that of issuing them in
    order, one command each.
    """

    healths: dict[str, str | None] = field(default_factory=dict)  # None: delete
    sets: dict[str, dict[str, bool]] = field(default_factory=dict)  # SADD (True) / SREM
    due: dict[str, dict[str, float | None]] = field(default_factory=dict)  # ZADD / ZREM
    events: list[tuple[str, str]] = field(default_factory=list)  # outbox, in order

    def member(self, key: str, member: str, present: bool) -> None:
        self.sets.setdefault(key, {})[member] = present

    def schedule(self, key: str, member: str, when: datetime | None) -> None:
        self.due.setdefault(key, {})[member] = None if when is None else when.timestamp()

    def queue(self, pipe: Client, outbox: Outbox) -> None:
        """Queues every write on `pipe` (inside the caller's MULTI)."""
        gone = [k for k, v in self.healths.items() if v is None]
        stored = {k: v for k, v in self.healths.items() if v is not None}
        if gone:
            pipe.delete(*gone)
        if stored:
            pipe.mset(stored)
        for key, members in self.sets.items():
            if removed := [m for m, present in members.items() if not present]:
                pipe.srem(key, *removed)
            if added := [m for m, present in members.items() if present]:
                pipe.sadd(key, *added)
        for key, scores in self.due.items():
            if removed := [m for m, score in scores.items() if score is None]:
                pipe.zrem(key, *removed)
            if added_scores := {m: score for m, score in scores.items() if score is not None}:
                pipe.zadd(key, added_scores)
        for sync_id, event in self.events:
            outbox.add(pipe, sync_id, event)


class HealthEngine:
    """Evaluates and stores health; also drives the deadline index and provider fan-out."""

    def __init__(
        self, prefix: str, book: ThresholdBook, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self.book = book
        self.clock = clock
        self.syncs = SyncViews(prefix)
        self.healths = HealthViews(prefix)
        self.providers = ProviderViews(prefix)
        self.indexes = Indexes(prefix)
        self.due = DueIndex(prefix)
        self.outbox = Outbox(prefix)
        self.fanout = FanoutRequests(prefix)
        self.epoch_key = Epoch(prefix).key
        self._due_keys: dict[int | None, str] = {}

    # -- inside someone's transaction ------------------------------------------------------

    def stage(
        self,
        pipe: Client,
        view: SyncView,
        previous: Stored | None,
        incidents: Sequence[Incident],
        now: datetime,
    ) -> None:
        """Queues the new health, its index entry, its next deadline and any change event."""
        writes = Writes()
        self._stage(writes, view, previous, incidents, to_ms(now))
        writes.queue(pipe, self.outbox)

    def forget(
        self, pipe: Client, sync_id: str, provider: str | None, partition: int | None
    ) -> None:
        """A deleted sync leaves no health, index entry or deadline behind: its index entry
        goes under the provider stored with its health too (the view's may have changed since;
        a batch cannot read that provider inside its MULTI, so Redis does)."""
        self.healths.delete_indexed(pipe, sync_id, self.indexes.health_key)
        writes = Writes()
        self._forget(writes, sync_id, provider, partition)
        writes.queue(pipe, self.outbox)

    def request_fanout(self, pipe: Client, providers: Iterable[str]) -> None:
        """Durably asks for a provider's syncs to be re-evaluated (incident opened or closed);
        a new token, so a fan-out running meanwhile cannot take this request for the one it
        serves."""
        self.fanout.request(pipe, providers)

    def _stage(
        self,
        writes: Writes,
        view: SyncView,
        previous: Stored | None,
        incidents: Sequence[Incident],
        now: datetime,
    ) -> None:
        """Checks are rendered only for a change event: nothing else stores or sends them.

        Everything is computed before the first write, so a sync whose evaluation raises
        leaves nothing half-written in `writes` (the caller sets it aside and goes on)."""
        thresholds = self.book.for_provider(view.provider)
        a = assess(view, now, thresholds, incidents, previous)
        status = a.status
        stored = self.healths.dump(a, row_of(view, a.verdicts))
        changed = previous is None or previous.status is not status
        event = change_event(previous, health_of(view, incidents, a)) if changed else None
        deadline = next_deadline(view, now, thresholds, a)
        writes.healths[self.healths.key(view.id)] = stored
        if previous is None:
            writes.member(self.indexes.health_key(view.provider, status), view.id, True)
        elif previous.status is not status or indexed_provider(previous, view) != view.provider:
            old = self.indexes.health_key(indexed_provider(previous, view), previous.status)
            writes.member(old, view.id, False)
            writes.member(self.indexes.health_key(view.provider, status), view.id, True)
        if event is not None:
            writes.events.append((view.id, event))
        writes.schedule(self._due_key(view.applied.partition), view.id, deadline)

    def _forget(
        self, writes: Writes, sync_id: str, provider: str | None, partition: int | None
    ) -> None:
        writes.healths[self.healths.key(sync_id)] = None
        for status in HealthStatus:
            writes.member(self.indexes.health_key(provider, status.value), sync_id, False)
        writes.schedule(self._due_key(partition), sync_id, None)

    def _due_key(self, partition: int | None) -> str:
        """Formatted once per partition, not once per sync."""
        key = self._due_keys.get(partition)
        if key is None:
            key = self._due_keys[partition] = self.due.key(partition)
        return key

    # -- own transactions ------------------------------------------------------------------

    def evaluate_ids(
        self, client: Redis, sync_ids: Sequence[str], found_in: dict[str, int] | None = None
    ) -> int:
        """Re-evaluates these syncs now, in chunks, each one WATCHed transaction.

        `found_in` names the due set a sync was read from, so a stale entry there is removed.
        """
        ids = list(dict.fromkeys(sync_ids))  # once each: one health write, one change event
        done = 0
        for i in range(0, len(ids), CHUNK):
            done += self._evaluate_chunk(client, ids[i : i + CHUNK], found_in or {})
        return done

    def overdue(
        self, client: Redis, partitions: Iterable[int], limit: int = 10_000
    ) -> dict[str, int]:
        """The syncs whose deadline has passed in these partitions, each with its partition."""
        now = self.clock()
        parts = sorted(partitions)
        if not parts:
            return {}
        pipe = client.pipeline(transaction=False)
        for p in parts:
            pipe.zrangebyscore(self.due.key(p), "-inf", now.timestamp(), 0, limit)
        return {text(m): p for p, batch in zip(parts, pipe.execute(), strict=True) for m in batch}

    def sweep(
        self,
        client: Redis,
        partitions: Iterable[int],
        limit: int = 10_000,
        evaluate: Evaluate | None = None,
    ) -> int:
        """Evaluates the syncs whose deadline has passed in the given partitions, here or
        through `evaluate` (worker processes)."""
        found_in = self.overdue(client, partitions, limit)
        if not found_in:
            return 0
        return (evaluate or self._here(client))(list(found_in), found_in)

    def fan_out(self, client: Redis, evaluate: Evaluate | None = None) -> int:
        """Serves the provider fan-out requests; one is removed only once served and only if
        no other came meanwhile (that one is served at the next tick, which it woke)."""
        done = 0
        run = evaluate or self._here(client)
        for name, token in self.fanout.pending(client).items():
            done += run(self.indexes.members(client, "provider", name), {})
            self.fanout.served(client, name, token)
        return done

    def _here(self, client: Redis) -> Evaluate:
        return lambda ids, found_in: self.evaluate_ids(client, ids, found_in)

    def _evaluate_chunk(self, client: Redis, ids: list[str], found_in: dict[str, int]) -> int:
        """A chunk that keeps losing its WATCH to batches is halved: a busy partition must not
        starve it, and a smaller chunk is read and written in less time."""
        with client.pipeline(transaction=True) as pipe:
            lost = 0
            while lost < TRIES or len(ids) == 1:
                try:
                    return self._stage_chunk(pipe, ids, found_in)
                except WatchError:
                    lost += 1
                    log.debug("%d syncs changed under a sweep; re-reading", len(ids))
        half = len(ids) // 2
        return self._evaluate_chunk(client, ids[:half], found_in) + self._evaluate_chunk(
            client, ids[half:], found_in
        )

    def _stage_chunk(self, pipe: Pipeline, ids: list[str], found_in: dict[str, int]) -> int:
        facts_keys, health_keys = self.syncs.facts_keys(ids), self.healths.keys(ids)
        # The facts too: a batch that changes a view marks it due now, which our deadline
        # must not overwrite with one judged from the old view. The epoch: a rebuild's SWAPDB.
        pipe.watch(*facts_keys, *health_keys, self.epoch_key)  # type: ignore[no-untyped-call]
        raw = pipe.mget(facts_keys + health_keys)
        views = self.syncs.parse_fields(ids, raw[: len(ids)], VIEW_FIELDS, pipe.mget)
        raw_healths = raw[len(ids) :]
        healths = [self.healths.parse_last(r) for r in raw_healths]
        providers = self.providers.all(pipe)
        now = to_ms(self.clock())
        writes = Writes()
        staged = 0
        for sync_id, view, previous in zip(ids, views, healths, strict=True):
            home = view.applied.partition if view is not None else None
            if sync_id in found_in and found_in[sync_id] != home:
                writes.schedule(self._due_key(found_in[sync_id]), sync_id, None)
            if view is None or view.deleted or not view.known:
                provider = previous.m.p if previous is not None and previous.m else None
                self._forget(writes, sync_id, provider, home)
                continue
            try:
                self._stage(writes, view, previous, incidents_of(providers, view.provider), now)
            except Exception:  # one sync's bug must not stop every other sync's health
                log.exception("health of sync %s not evaluated; tried again later", sync_id)
                writes.schedule(self._due_key(home), sync_id, now + SET_ASIDE)
                continue
            staged += 1
        pipe.multi()
        writes.queue(pipe, self.outbox)
        pipe.execute()
        return staged
