"""The materialized views: what syncmon remembers of each sync and each provider."""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime
from functools import lru_cache
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from monitor.enums import CredentialStatus, SyncStatus
from monitor.events import RateLimit, RunError

RECENT_EVENT_IDS = 8

M = TypeVar("M", bound=BaseModel)


class _Model(BaseModel):
    """Views are values: the fold returns new ones and never mutates.

    Stored as JSON with times as epoch seconds: smaller in Redis and faster to write.
    """

    model_config = ConfigDict(frozen=True, extra="ignore", ser_json_temporal="seconds")


def evolve(model: M, **updates: Any) -> M:
    """A copy with some fields replaced, without validation: the fold's hot path.

    `model_copy(update=...)` does the same through `copy.copy` at several times the cost;
    callers pass values of the declared types, as with `model_copy`.
    """
    new = model.__class__.__new__(model.__class__)
    values = dict(model.__dict__)
    values.update(updates)
    object.__setattr__(new, "__dict__", values)
    object.__setattr__(new, "__pydantic_fields_set__", model.__pydantic_fields_set__)
    object.__setattr__(new, "__pydantic_extra__", None)
    object.__setattr__(new, "__pydantic_private__", None)
    return new


def trusted(cls: type[M], values: dict[str, Any], fields_set: set[str] | None = None) -> M:
    """An instance from values of the declared types that we produced ourselves, unvalidated.

    `model_construct` costs a sweep as much as the work around it. A field left out of
    `values` is absent: reading it raises AttributeError rather than inventing a default.
    Frozen models never change `fields_set`, so callers may share one (the keys of `values`).
    """
    model = cls.__new__(cls)
    object.__setattr__(model, "__dict__", values)
    object.__setattr__(
        model, "__pydantic_fields_set__", set(values) if fields_set is None else fields_set
    )
    object.__setattr__(model, "__pydantic_extra__", None)
    object.__setattr__(model, "__pydantic_private__", None)
    return model


@lru_cache(maxsize=4096)  # the fold asks twice per event: is it seen, then record it
def event_key(event_id: str) -> str:
    """Recent event ids are kept as 48-bit digests, 8 characters instead of a 36-char UUID;
    a false duplicate among the last 8 ids has odds of about 1 in 3 * 10**13."""
    digest = hashlib.blake2b(event_id.encode(), digest_size=6).digest()
    return base64.urlsafe_b64encode(digest).decode()


class Applied(_Model):
    """What a view has already absorbed, so a replay or duplicate is recognised from the data."""

    sequence: int | None = None
    event_ids: tuple[str, ...] = ()
    offsets: dict[int, int] = Field(default_factory=dict)
    partition: int | None = None  # where its latest event came from: whose consumer owns it

    def seen(self, event_id: str) -> bool:
        return event_key(event_id) in self.event_ids

    def replayed(self, partition: int, offset: int) -> bool:
        last = self.offsets.get(partition)
        return last is not None and offset <= last

    def stale(self, sequence: int | None) -> bool:
        return sequence is not None and self.sequence is not None and sequence <= self.sequence

    def record(
        self, event_id: str, sequence: int | None, partition: int | None, offset: int | None
    ) -> Applied:
        offsets = self.offsets
        if partition is not None and offset is not None:
            offsets = {**offsets, partition: offset}
        return evolve(
            self,
            sequence=sequence if sequence is not None else self.sequence,
            event_ids=(*self.event_ids, event_key(event_id))[-RECENT_EVENT_IDS:],
            offsets=offsets,
            partition=partition if partition is not None else self.partition,
        )


class CollectionProgress(_Model):
    """Backfill progress of one collection."""

    records_synced: int = 0
    estimated_total: int | None = None
    completed_at: datetime | None = None

    @property
    def ratio(self) -> float | None:
        if self.completed_at is not None:
            return 1.0
        if not self.estimated_total:
            return None
        return min(1.0, self.records_synced / self.estimated_total)


class LastRun(_Model):
    """The most recent run, as its events told it."""

    run_id: str
    started_at: datetime | None = None
    finished_at: datetime | None = None
    succeeded: bool | None = None
    records_upserted: int | None = None
    records_deleted: int | None = None
    duration_ms: int | None = None
    error: RunError | None = None


class CredentialProblem(_Model):
    """Why the credential last failed."""

    http_status: int | None = None
    message: str = ""


class SyncView(_Model):
    """One sync: the seed's fields plus every fact the health rules read."""

    id: str
    provider: str | None = None
    stream_id: str | None = None
    name: str | None = None
    status: SyncStatus = SyncStatus.ACTIVE
    org_id: str | None = None
    collection_ids: tuple[str, ...] = ()
    rate_limit: RateLimit | None = None
    credential_id: str | None = None
    credential: dict[str, Any] | None = None
    max_age_days: int | None = None
    sync_frequency: str = "continuous"
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None
    initial_backfill_completed_at: datetime | None = None

    known: bool = True  # False while only events before `sync.created` have been seen
    disabled_reason: str | None = None
    status_changed_at: datetime | None = None
    status_seen_at: datetime | None = None  # the latest sync.enabled/disabled, changing or not
    last_event_at: datetime | None = None
    first_activity_at: datetime | None = None
    last_run: LastRun | None = None
    last_success_at: datetime | None = None
    last_failure_at: datetime | None = None
    consecutive_failures: int = 0
    # The error of the latest failure in a row: `last_run` moves on to the retry that starts
    # next, and the failures check must still say what keeps failing.
    last_error: RunError | None = None
    failures_at: tuple[datetime, ...] = ()  # the streak's latest failure times, oldest first
    runs_succeeded: int = 0
    runs_failed: int = 0
    credential_status: CredentialStatus = CredentialStatus.VALID
    credential_failed_at: datetime | None = None
    credential_recovered_at: datetime | None = None
    credential_problem: CredentialProblem | None = None
    last_rate_limited_at: datetime | None = None
    retry_after_seconds: float | None = None
    backfill_started_at: datetime | None = None
    last_backfill_event_at: datetime | None = None
    backfill: dict[str, CollectionProgress] = Field(default_factory=dict)
    deleted_at: datetime | None = None
    deleted_before: datetime | None = None  # created again: when the sync before it was deleted

    applied: Applied = Field(default_factory=Applied)

    @property
    def deleted(self) -> bool:
        return self.deleted_at is not None

    @property
    def backfill_complete(self) -> bool:
        return self.initial_backfill_completed_at is not None


class Incident(_Model):
    """An open provider incident."""

    incident_id: str
    opened_at: datetime
    notes: tuple[str, ...] = ()


class ProviderView(_Model):
    """One provider: its open incidents, which every sync of that provider shares."""

    name: str
    incidents: dict[str, Incident] = Field(default_factory=dict)
    last_event_at: datetime | None = None
    applied: Applied = Field(default_factory=Applied)
