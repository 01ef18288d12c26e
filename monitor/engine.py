"""The health engine: evaluates syncs, stores health and queues each status change exactly once.

Every write goes through `stage`, inside a transaction that WATCHes the health keys it read,
so two evaluators racing on one sync (a rebalance, a tick beside a batch) record one change.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import WatchError

from monitor.enums import CredentialStatus, HealthStatus
from monitor.health import Health, ThresholdBook, evaluate, next_deadline
from monitor.store.base import Client, text
from monitor.store.due import DueIndex
from monitor.store.health import HealthViews, StoredHealth, SyncRow
from monitor.store.indexes import Indexes
from monitor.store.outbox import Outbox
from monitor.store.providers import ProviderViews
from monitor.store.syncs import SyncViews
from monitor.views import Incident, ProviderView, SyncView

log = logging.getLogger(__name__)

EVENT_TYPE = "sync.health.changed"
SOURCE = "//syncmon"
CHUNK = 500
FANOUT_TEMPLATE = "{prefix}:fanout"


def utcnow() -> datetime:
    return datetime.now(UTC)


def incidents_of(providers: dict[str, ProviderView], provider: str | None) -> Sequence[Incident]:
    view = providers.get(provider or "")
    return tuple(view.incidents.values()) if view is not None else ()


def change_event(previous: Health | None, health: Health) -> str:
    """The `sync.health.changed` CloudEvent; its id numbers the change, so it is stable."""
    changed_at = (health.in_status_since or health.evaluated_at).isoformat().replace("+00:00", "Z")
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
            "id": f"{health.sync_id}:{health.transitions}",
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


def indexed_provider(previous: StoredHealth, view: SyncView) -> str | None:
    """The provider a sync's health is indexed under: the one stored with its last health."""
    return previous.m.p if previous.m is not None else view.provider


def row_of(view: SyncView, health: Health) -> SyncRow:
    """The metrics row of a sync: labels and facts `/metrics` renders without the view."""
    if view.backfill_complete:
        ratio: float | None = None  # `bc` says it: complete
    elif view.backfill:
        ratio = sum(p.ratio or 0.0 for p in view.backfill.values()) / len(view.backfill)
    else:
        ratio = None
    return SyncRow(
        p=view.provider,
        o=view.org_id,
        n=view.name,
        f=view.sync_frequency,
        ls=view.last_success_at,
        le=view.last_event_at,
        bc=int(view.backfill_complete),
        br=None if ratio is None else round(ratio, 4),
        cf=view.consecutive_failures,
        cr=int(view.credential_status is CredentialStatus.FAILED),
        ck={c.name: c.status.value for c in health.checks if c.status is not HealthStatus.HEALTHY},
    )


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
        self.fanout_key = FANOUT_TEMPLATE.format(prefix=prefix)

    # -- inside someone's transaction ------------------------------------------------------

    def stage(
        self,
        pipe: Client,
        view: SyncView,
        previous: StoredHealth | None,
        incidents: Sequence[Incident],
        now: datetime,
    ) -> Health:
        """Queues the new health, its index entry, its next deadline and any change event."""
        thresholds = self.book.for_provider(view.provider)
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)  # stored to the ms
        health = evaluate(view, now, thresholds, incidents, previous)
        self.healths.put(pipe, health, row_of(view, health))
        old = (indexed_provider(previous, view), previous.status.value) if previous else None
        self.indexes.move_health(pipe, view.id, old, (view.provider, health.status.value))
        if previous is None or previous.status is not health.status:
            self.outbox.add(pipe, view.id, change_event(previous, health))
        deadline = next_deadline(view, now, thresholds, health)
        self.due.schedule(pipe, view.applied.partition, view.id, deadline)
        return health

    def forget(
        self, pipe: Client, sync_id: str, provider: str | None, partition: int | None
    ) -> None:
        """A deleted sync leaves no health, index entry or deadline behind."""
        self.healths.delete(pipe, sync_id)
        for status in HealthStatus:
            self.indexes.move_health(pipe, sync_id, (provider, status.value), None)
        self.due.schedule(pipe, partition, sync_id, None)

    def request_fanout(self, pipe: Client, providers: Iterable[str]) -> None:
        """Durably asks for a provider's syncs to be re-evaluated (incident opened or closed)."""
        names = list(providers)
        if names:
            pipe.sadd(self.fanout_key, *names)

    # -- own transactions ------------------------------------------------------------------

    def evaluate_ids(
        self, client: Redis, sync_ids: Sequence[str], found_in: dict[str, int] | None = None
    ) -> int:
        """Re-evaluates these syncs now, in chunks, each one WATCHed transaction.

        `found_in` names the due set a sync was read from, so a stale entry there is removed.
        """
        done = 0
        for i in range(0, len(sync_ids), CHUNK):
            done += self._evaluate_chunk(client, list(sync_ids[i : i + CHUNK]), found_in or {})
        return done

    def sweep(self, client: Redis, partitions: Iterable[int], limit: int = 10_000) -> int:
        """Evaluates the syncs whose deadline has passed in the given partitions."""
        now = self.clock()
        parts = sorted(partitions)
        if not parts:
            return 0
        pipe = client.pipeline(transaction=False)
        for p in parts:
            pipe.zrangebyscore(self.due.key(p), "-inf", now.timestamp(), 0, limit)
        found_in = {
            text(m): p for p, batch in zip(parts, pipe.execute(), strict=True) for m in batch
        }
        return self.evaluate_ids(client, list(found_in), found_in) if found_in else 0

    def fan_out(self, client: Redis) -> int:
        """Drains the provider fan-out requests; a request is removed only once served."""
        done = 0
        for raw in client.smembers(self.fanout_key):
            name = text(raw)
            ids = self.indexes.members(client, "provider", name)
            done += self.evaluate_ids(client, ids)
            client.srem(self.fanout_key, name)
        return done

    def _evaluate_chunk(self, client: Redis, ids: list[str], found_in: dict[str, int]) -> int:
        with client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    return self._stage_chunk(pipe, ids, found_in)
                except WatchError:
                    log.debug("health of %d syncs changed under a sweep; re-reading", len(ids))

    def _stage_chunk(self, pipe: Pipeline, ids: list[str], found_in: dict[str, int]) -> int:
        health_keys = [self.healths.key(i) for i in ids]
        pipe.watch(*health_keys)  # type: ignore[no-untyped-call]
        raw = pipe.mget(self.syncs.keys(ids) + health_keys)
        views = self.syncs.parse_many(ids, raw[: 2 * len(ids)])
        raw_healths = raw[2 * len(ids) :]
        healths = [self.healths.parse(i, r) for i, r in zip(ids, raw_healths, strict=True)]
        providers = self.providers.all(pipe)
        now = self.clock()
        pipe.multi()
        staged = 0
        for sync_id, view, previous in zip(ids, views, healths, strict=True):
            home = view.applied.partition if view is not None else None
            if sync_id in found_in and found_in[sync_id] != home:
                self.due.schedule(pipe, found_in[sync_id], sync_id, None)
            if view is None or view.deleted or not view.known:
                provider = previous.m.p if previous is not None and previous.m else None
                self.forget(pipe, sync_id, provider, home)
                continue
            self.stage(pipe, view, previous, incidents_of(providers, view.provider), now)
            staged += 1
        pipe.execute()
        return staged
