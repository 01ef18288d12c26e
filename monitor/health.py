"""Health evaluation: a pure function of a view, its provider incidents, a clock, thresholds."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Annotated, NamedTuple, Protocol

from pydantic import BaseModel, ConfigDict, PlainSerializer

from monitor.enums import CredentialStatus, HealthStatus, SyncStatus
from monitor.rules import (
    ERROR,
    OK,
    RULE_FIELDS,
    WARN,
    Check,
    Limits,
    ThresholdBook,
    Thresholds,
    Verdict,
    checks,
    limits,
    rule_verdicts,
    verdicts,
)
from monitor.views import Incident, SyncView

__all__ = [  # with what monitor.rules gives the rest of the code
    "EPSILON", "ERROR", "OK", "RULE_FIELDS", "WARN", "Assessment", "Check", "CredentialHealth",
    "EpochMs", "Health", "History", "ProviderHealth", "ThresholdBook", "Thresholds", "Verdict",
    "assess", "checks", "credential_health", "current_checks", "current_verdicts", "evaluate",
    "health_of", "next_deadline",
    "provider_health", "verdicts",
]  # fmt: skip

EPSILON = timedelta(milliseconds=1)
_RANK = {s: s.rank for s in HealthStatus}


def _epoch_ms(value: datetime) -> int:
    return round(value.timestamp() * 1000)


# Stored health times are whole epoch milliseconds (finer adds only bytes in Redis).
EpochMs = Annotated[datetime, PlainSerializer(_epoch_ms, return_type=int, when_used="json")]


class CredentialHealth(BaseModel):
    model_config = ConfigDict(frozen=True)

    status: CredentialStatus
    notes: tuple[str, ...] = ()
    time: datetime | None = None


class ProviderHealth(BaseModel):
    model_config = ConfigDict(frozen=True)

    status: str  # "operational" or "incident"
    notes: tuple[str, ...] = ()


class Health(BaseModel):
    """A sync's health: the worst check wins, with when it began and what led there."""

    model_config = ConfigDict(frozen=True)

    sync_id: str
    status: HealthStatus
    checks: tuple[Check, ...] = ()
    evaluated_at: EpochMs
    in_status_since: EpochMs | None = None
    last_healthy_at: EpochMs | None = None
    erroring_since: EpochMs | None = None
    credential: CredentialHealth | None = None
    provider: ProviderHealth | None = None
    pending: HealthStatus | None = None  # a change waiting out the hysteresis
    pending_since: EpochMs | None = None
    transitions: int = 0  # status changes so far: numbers each published change


class History(Protocol):
    """What an evaluation carries over from the last: a `Health` or its stored form."""

    @property
    def status(self) -> HealthStatus: ...
    @property
    def evaluated_at(self) -> datetime: ...
    @property
    def in_status_since(self) -> datetime | None: ...
    @property
    def last_healthy_at(self) -> datetime | None: ...
    @property
    def pending(self) -> HealthStatus | None: ...
    @property
    def pending_since(self) -> datetime | None: ...
    @property
    def transitions(self) -> int: ...


class Pending(Protocol):
    """What `next_deadline` reads of a health: a `Health` or an `Assessment`."""

    @property
    def pending_since(self) -> datetime | None: ...


class Assessment(NamedTuple):
    """A health before its checks are rendered: all a sweep stores when the status holds."""

    status: HealthStatus
    verdicts: tuple[Verdict, ...]  # `paused` first when the sync is disabled
    evaluated_at: datetime
    in_status_since: datetime
    last_healthy_at: datetime | None
    erroring_since: datetime | None
    pending: HealthStatus | None
    pending_since: datetime | None
    transitions: int


def assess(
    view: SyncView,
    now: datetime,
    thresholds: Thresholds,
    incidents: Sequence[Incident] = (),
    previous: History | None = None,
) -> Assessment:
    """Worst check wins (`paused` above all); carries the status history from `previous`."""
    lim = limits(thresholds)
    found = current_verdicts(view, now, lim, incidents)
    worst = max((v.status for v in found), key=_RANK.__getitem__)
    status, pending, pending_since = _settle(worst, found, now, lim, previous, view.created_at)
    since = _status_since(status, found, now, previous, view.created_at)
    return Assessment(
        status,
        found,
        now,  # evaluated_at
        since,  # in_status_since
        _last_healthy(status, since, now, previous),
        since if status is ERROR else None,  # erroring_since
        pending,
        pending_since,
        _transitions(status, previous),
    )


def current_verdicts(
    view: SyncView, now: datetime, lim: Limits, incidents: Sequence[Incident] = ()
) -> tuple[Verdict, ...]:
    """Every rule's verdict; for a disabled sync only `paused`, as the contract reports
    nothing else of it (a switched-off sync's stale runs are no one's page)."""
    if view.status is not SyncStatus.DISABLED:
        return rule_verdicts(view, now, lim, incidents)
    reason = f": {view.disabled_reason}" if view.disabled_reason else ""
    message = f"sync is disabled{reason}"
    return (Verdict("paused", HealthStatus.PAUSED, view.status_changed_at, lambda: message),)


def current_checks(
    view: SyncView, now: datetime, thresholds: Thresholds, incidents: Sequence[Incident] = ()
) -> tuple[Check, ...]:
    """The checks the API shows: `current_verdicts` with their messages."""
    return tuple(v.check() for v in current_verdicts(view, now, limits(thresholds), incidents))


def evaluate(
    view: SyncView,
    now: datetime,
    thresholds: Thresholds | None = None,
    incidents: Sequence[Incident] = (),
    previous: Health | None = None,
) -> Health:
    """Worst check wins (`paused` above all); carries the status history from `previous`."""
    return health_of(
        view, incidents, assess(view, now, thresholds or Thresholds(), incidents, previous)
    )


def health_of(view: SyncView, incidents: Sequence[Incident], a: Assessment) -> Health:
    """The full health of an assessment: checks rendered, credential and provider shapes."""
    return Health(
        sync_id=view.id,
        status=a.status,
        checks=tuple(v.check() for v in a.verdicts),
        evaluated_at=a.evaluated_at,
        in_status_since=a.in_status_since,
        last_healthy_at=a.last_healthy_at,
        erroring_since=a.erroring_since,
        credential=credential_health(view),
        provider=provider_health(incidents),
        pending=a.pending,
        pending_since=a.pending_since,
        transitions=a.transitions,
    )


def credential_health(view: SyncView) -> CredentialHealth:
    """The seed's richer `credential {status, notes, time}`, from the view alone."""
    problem = view.credential_problem
    failed = view.credential_status is CredentialStatus.FAILED
    return CredentialHealth(
        status=view.credential_status,
        notes=(problem.message,) if problem is not None and problem.message else (),
        time=view.credential_failed_at if failed else None,
    )


def provider_health(incidents: Sequence[Incident]) -> ProviderHealth:
    """The seed's richer `provider {status, notes}`, from the open incidents."""
    return ProviderHealth(
        status="incident" if incidents else "operational",
        notes=tuple(n for i in incidents for n in i.notes),
    )


def _transitions(status: HealthStatus, previous: History | None) -> int:
    if previous is None:
        return 1
    return previous.transitions + (status is not previous.status)


def _settle(
    worst: HealthStatus,
    found: Sequence[Verdict],
    now: datetime,
    lim: Limits,
    previous: History | None,
    created: datetime | None = None,
) -> tuple[HealthStatus, HealthStatus | None, datetime | None]:
    """With hysteresis, a new status must hold `hysteresis_seconds` before it is the status."""
    if previous is None or lim.t.hysteresis_seconds <= 0 or worst is previous.status:
        return worst, None, None
    if worst is HealthStatus.PAUSED or previous.status is HealthStatus.PAUSED:
        return worst, None, None  # an operator's disable or enable is never held back
    pending_since = _began(worst, found, now, previous, created)
    if now - pending_since >= lim.hysteresis:
        return worst, None, None
    return previous.status, worst, pending_since


def _status_since(
    status: HealthStatus,
    found: Sequence[Verdict],
    now: datetime,
    previous: History | None,
    created: datetime | None = None,
) -> datetime:
    if previous is not None and previous.status is status and previous.in_status_since:
        return previous.in_status_since
    return _began(status, found, now, previous, created)


def _began(
    status: HealthStatus,
    found: Sequence[Verdict],
    now: datetime,
    previous: History | None,
    created: datetime | None = None,
) -> datetime:
    """When `status` began: a worse one when its checks crossed their thresholds, a better one
    now (the checks of a better status do not say when the worse one ended)."""
    if previous is not None and previous.pending is status and previous.pending_since:
        return previous.pending_since  # it began when it first went pending, not when last seen
    if previous is not None and status.rank < previous.status.rank:
        return now
    started = min((c.since for c in found if c.status is status and c.since), default=now)
    # Not before the last evaluation that saw otherwise, nor before the sync existed.
    for floor in (previous.evaluated_at if previous is not None else None, created):
        if floor is not None and started < floor:
            started = floor
    return min(started, now)


def _last_healthy(
    status: HealthStatus, since: datetime, now: datetime, previous: History | None
) -> datetime | None:
    if status is HealthStatus.HEALTHY:
        return now
    if previous is not None and previous.status is HealthStatus.HEALTHY:
        return since
    return previous.last_healthy_at if previous is not None else None


def next_deadline(
    view: SyncView,
    now: datetime,
    thresholds: Thresholds | None = None,
    health: Pending | None = None,
) -> datetime | None:
    """The next moment this sync's health could change with no new event (None: never)."""
    if view.status is SyncStatus.DISABLED:
        return None  # paused until an event enables it; paused is never held back
    lim = limits(thresholds or Thresholds())
    candidates: list[datetime] = []  # strict thresholds: the change is just after these
    exact: list[datetime] = []  # inclusive ones: the change is at these very instants
    completed = view.initial_backfill_completed_at
    if completed is not None:
        _, warn, error = lim.freshness(view.sync_frequency)
        last = view.last_success_at
        base = last if last and last > completed else completed
        candidates += [base + warn, base + error]
    else:
        last = view.last_backfill_event_at or view.backfill_started_at or view.created_at
        if last is not None:
            candidates.append(last + lim.backfill_stall)
    if view.last_rate_limited_at is not None:
        exact.append(view.last_rate_limited_at + lim.rate_limit_window)
    if view.first_activity_at is None and view.created_at is not None:
        candidates.append(view.created_at + lim.no_activity)
    if health is not None and health.pending_since is not None:
        exact.append(health.pending_since + lim.hysteresis)
    # Thresholds are strict ("more than 1x"), so the change is just after each instant; the
    # rate-limit window ends and a hysteresis hold is served at the instant itself.
    future = [c for c in [c + EPSILON for c in candidates] + exact if c > now]
    return min(future) if future else None
