"""The HTTP shapes: the seed's sync object, extended with what syncmon knows."""

from __future__ import annotations

import difflib
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from monitor.enums import CredentialStatus, HealthStatus, SyncStatus
from monitor.events import RateLimit, RunError
from monitor.health import Check, CredentialHealth, Health, ProviderHealth
from monitor.views import LastRun, SyncView


class HealthOut(BaseModel):
    """The seed's health object (`status`, `sync_id`) with its history and the richer shape."""

    status: HealthStatus
    sync_id: str
    in_status_since: datetime | None = None
    last_healthy_at: datetime | None = None
    erroring_since: datetime | None = None
    credential: CredentialHealth | None = None
    provider: ProviderHealth | None = None
    evaluated_at: datetime | None = None

    @classmethod
    def of(cls, health: Health) -> HealthOut:
        return cls.model_validate(health.model_dump(include=set(cls.model_fields)))


class HealthDetail(HealthOut):
    """`/v1/syncs/{id}/health`: one entry per check."""

    checks: list[Check] = Field(default_factory=list)

    @classmethod
    def of(cls, health: Health) -> HealthDetail:
        return cls.model_validate(health.model_dump(include=set(cls.model_fields)))


class StatusCounts(BaseModel):
    total: int
    by_health: dict[HealthStatus, int]


class Summary(BaseModel):
    """`/v1/summary`: how many syncs are in each health status, overall and per provider."""

    total: int
    by_health: dict[HealthStatus, int]
    by_provider: dict[str, StatusCounts]


class CollectionOut(BaseModel):
    collection_id: str
    records_synced: int
    estimated_total: int | None
    ratio: float | None
    completed_at: datetime | None


class BackfillOut(BaseModel):
    started_at: datetime | None
    last_event_at: datetime | None
    completed_at: datetime | None
    collections: list[CollectionOut]


class LastRunOut(BaseModel):
    """The stored `LastRun`, whose times are epoch seconds (for Redis), with API times."""

    run_id: str
    started_at: datetime | None
    finished_at: datetime | None
    succeeded: bool | None
    records_upserted: int | None
    records_deleted: int | None
    duration_ms: int | None
    error: RunError | None

    @classmethod
    def of(cls, run: LastRun) -> LastRunOut:
        return cls.model_validate(run.model_dump())


class SyncOut(BaseModel):
    """Every field of the seed's sync object, same names; then syncmon's own facts."""

    id: str
    provider: str | None
    stream_id: str | None
    name: str | None
    status: SyncStatus
    org_id: str | None
    health: HealthOut
    collection_ids: list[str]
    rate_limit: RateLimit | None
    credential_id: str | None
    credential: dict[str, Any] | None
    max_age_days: int | None
    sync_frequency: str
    initial_backfill_completed_at: datetime | None
    metadata: dict[str, Any]
    created_at: datetime | None
    updated_at: datetime | None

    disabled_reason: str | None
    last_event_at: datetime | None
    last_success_at: datetime | None
    last_failure_at: datetime | None
    consecutive_failures: int
    last_run: LastRunOut | None
    credential_status: CredentialStatus
    last_rate_limited_at: datetime | None
    backfill: BackfillOut


class SyncPage(BaseModel):
    data: list[SyncOut]
    next_cursor: str | None


class Readiness(BaseModel):
    """`/readyz`: what it checked; 200 when all hold, else 503 with the same body."""

    redis: bool
    consumer_in_group: bool


class Liveness(BaseModel):
    status: str


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorOut(BaseModel):
    error: ErrorBody


def query_problems(given: Iterable[tuple[str, str]], accepted: Sequence[str]) -> list[str]:
    """Names a route does not take, and names given twice: ignored, `?health=error` (for
    `health.status`) would answer with the whole fleet, and of two values one would be dropped."""
    problems, unknown = [], False
    for name, times in Counter(name for name, _ in given).items():
        if name not in accepted:
            close = difflib.get_close_matches(name.lower(), accepted, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            problems.append(f"{name[:100]}: not a parameter of this endpoint{hint}")
            unknown = True
        elif times > 1:
            problems.append(f"{name}: given {times} times (it takes one value)")
    if unknown:
        problems = [*problems[:10], f"accepted: {', '.join(accepted) or 'none'}"]
    return problems[:11]


_TIME = TypeAdapter(datetime)
_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")  # not a bare number or date
CREDENTIAL_TIMES = ("created_at", "updated_at")


def api_time(value: Any) -> Any:
    """A date-time string as the API renders its own times (UTC, naive read as UTC); anything
    else as it is: a free-form object may hold what is not a time under a time's name."""
    if not isinstance(value, str) or not _DATE_TIME.match(value):
        return value
    try:
        parsed = _TIME.validate_python(value)
        parsed = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValidationError, OverflowError):
        return value
    return _TIME.dump_python(parsed, mode="json")


def credential_out(credential: dict[str, Any] | None) -> dict[str, Any] | None:
    """The credential with its times in the form of the sync's own (the seed's credential has
    `created_at` and `updated_at`); only the output changes, it is stored as sent."""
    if credential is None:
        return None
    times = {k: api_time(credential[k]) for k in CREDENTIAL_TIMES if k in credential}
    return {**credential, **times}


def sync_out(view: SyncView, health: Health) -> SyncOut:
    """The API shape of a stored view and its health."""
    collections = [
        CollectionOut(
            collection_id=cid,
            records_synced=p.records_synced,
            estimated_total=p.estimated_total,
            ratio=p.ratio,
            completed_at=p.completed_at,
        )
        for cid, p in sorted(view.backfill.items())
    ]
    return SyncOut(
        id=view.id,
        provider=view.provider,
        stream_id=view.stream_id,
        name=view.name,
        status=view.status,
        org_id=view.org_id,
        health=HealthOut.of(health),
        collection_ids=list(view.collection_ids),
        rate_limit=view.rate_limit,
        credential_id=view.credential_id,
        credential=credential_out(view.credential),
        max_age_days=view.max_age_days,
        sync_frequency=view.sync_frequency,
        initial_backfill_completed_at=view.initial_backfill_completed_at,
        metadata=view.metadata,
        created_at=view.created_at,
        updated_at=view.updated_at,
        disabled_reason=view.disabled_reason,
        last_event_at=view.last_event_at,
        last_success_at=view.last_success_at,
        last_failure_at=view.last_failure_at,
        consecutive_failures=view.consecutive_failures,
        last_run=LastRunOut.of(view.last_run) if view.last_run else None,
        credential_status=view.credential_status,
        last_rate_limited_at=view.last_rate_limited_at,
        backfill=BackfillOut(
            started_at=view.backfill_started_at,
            last_event_at=view.last_backfill_event_at,
            completed_at=view.initial_backfill_completed_at,
            collections=collections,
        ),
    )
