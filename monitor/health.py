"""Health evaluation: a pure function of a view, its provider incidents, a clock, thresholds."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

from monitor.enums import CredentialStatus, HealthStatus, SyncStatus
from monitor.views import Incident, SyncView

OK, WARN, ERROR = HealthStatus.HEALTHY, HealthStatus.WARN, HealthStatus.ERROR
_FREQUENCY = re.compile(r"^(\d+)([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
EPSILON = timedelta(milliseconds=1)


def _epoch_ms(value: datetime) -> int:
    return round(value.timestamp() * 1000)


# Stored health times are whole epoch milliseconds (finer adds only bytes in Redis).
EpochMs = Annotated[datetime, PlainSerializer(_epoch_ms, return_type=int, when_used="json")]


class Thresholds(BaseModel):
    """The contract's defaults; each can be overridden globally or per provider."""

    model_config = ConfigDict(frozen=True)

    continuous_interval_seconds: float = Field(300, gt=0)
    freshness_warn_factor: float = Field(1.0, gt=0)
    freshness_error_factor: float = Field(2.0, gt=0)
    failures_warn: int = Field(1, ge=1)
    failures_error: int = Field(3, ge=1)
    rate_limit_window_seconds: float = Field(300, ge=0)
    backfill_stall_seconds: float = Field(1800, gt=0)
    no_activity_seconds: float = Field(600, gt=0)
    hysteresis_seconds: float = Field(0, ge=0)

    def interval(self, sync_frequency: str) -> timedelta:
        """Expected time between successful runs: `continuous` or `<n>[smhd]` such as `4h`."""
        match = _FREQUENCY.match(sync_frequency)
        if match is None:
            return timedelta(seconds=self.continuous_interval_seconds)
        return timedelta(seconds=int(match.group(1)) * _UNIT_SECONDS[match.group(2)])


class ThresholdBook:
    """Thresholds by provider, falling back to the global ones."""

    def __init__(self, default: Thresholds, per_provider: dict[str, Thresholds] | None = None):
        self.default = default
        self.per_provider = per_provider or {}

    def for_provider(self, provider: str | None) -> Thresholds:
        return self.per_provider.get(provider or "", self.default)


class Check(BaseModel):
    """One rule's verdict, with a message an on-call engineer can act on."""

    model_config = ConfigDict(frozen=True)

    name: str
    status: HealthStatus
    message: str
    since: datetime | None = None


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


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _graded(
    name: str, elapsed_from: datetime, now: datetime, warn: timedelta, error: timedelta, what: str
) -> Check:
    """A check that turns warn past `warn` and error past `error` after a start time."""
    elapsed = now - elapsed_from
    if elapsed > error:
        return Check(name=name, status=ERROR, message=what, since=elapsed_from + error)
    if elapsed > warn:
        return Check(name=name, status=WARN, message=what, since=elapsed_from + warn)
    return Check(name=name, status=OK, message=what, since=None)


def check_freshness(view: SyncView, now: datetime, t: Thresholds) -> Check:
    completed = view.initial_backfill_completed_at
    if completed is None:
        return Check(
            name="freshness", status=OK, message="not checked until the initial backfill completes"
        )
    interval = t.interval(view.sync_frequency)
    base = (
        view.last_success_at
        if view.last_success_at and view.last_success_at > completed
        else completed
    )
    from_success = base is view.last_success_at  # else from the backfill's completion
    since_what = "successful run" if from_success else "successful run since the backfill"
    message = (
        f"no {since_what} for {_ago((now - base).total_seconds())}; "
        f"expected every {_ago(interval.total_seconds())}"
    )
    check = _graded(
        "freshness",
        base,
        now,
        interval * t.freshness_warn_factor,
        interval * t.freshness_error_factor,
        message,
    )
    if check.status is OK:
        return check.model_copy(
            update={"message": f"last success {_ago((now - base).total_seconds())} ago"}
        )
    return check


def check_failures(view: SyncView, now: datetime, t: Thresholds) -> Check:
    n = view.consecutive_failures
    if n < t.failures_warn:
        return Check(name="failures", status=OK, message="no failed run since the last success")
    error = view.last_run.error if view.last_run and view.last_run.error else None
    detail = f": {error.code}: {error.message}" if error else ""
    status = ERROR if n >= t.failures_error else WARN
    return Check(
        name="failures",
        status=status,
        message=f"{n} failed run{'s' if n > 1 else ''} in a row{detail}",
        since=view.last_failure_at,
    )


def check_credential(view: SyncView, now: datetime, t: Thresholds) -> Check:
    if view.credential_status is not CredentialStatus.FAILED:
        return Check(name="credential", status=OK, message="credential works")
    problem = view.credential_problem
    detail = ""
    if problem is not None:
        code = f"HTTP {problem.http_status}: " if problem.http_status else ""
        detail = f" ({code}{problem.message})" if code or problem.message else ""
    return Check(
        name="credential",
        status=ERROR,
        message=f"credential rejected by the provider{detail}; reconnect it",
        since=view.credential_failed_at,
    )


def check_rate_limit(view: SyncView, now: datetime, t: Thresholds) -> Check:
    last = view.last_rate_limited_at
    window = timedelta(seconds=t.rate_limit_window_seconds)
    if last is None or now - last >= window or now < last:
        return Check(name="rate_limit", status=OK, message="not rate limited recently")
    retry = f"; retry after {view.retry_after_seconds:g} s" if view.retry_after_seconds else ""
    return Check(
        name="rate_limit",
        status=WARN,
        message=f"rate limited by the provider {_ago((now - last).total_seconds())} ago{retry}",
        since=last,
    )


def check_provider(view: SyncView, now: datetime, incidents: Sequence[Incident]) -> Check:
    if not incidents:
        return Check(name="provider", status=OK, message="no open provider incident")
    first = min(incidents, key=lambda i: i.opened_at)
    notes = "; ".join(n for i in incidents for n in i.notes) or "no details"
    return Check(
        name="provider",
        status=WARN,
        message=f"{view.provider} has {len(incidents)} open incident(s): {notes}",
        since=first.opened_at,
    )


def check_backfill(view: SyncView, now: datetime, t: Thresholds) -> Check:
    if view.initial_backfill_completed_at is not None:
        return Check(
            name="backfill", status=OK, message="initial backfill complete",
            since=view.initial_backfill_completed_at,
        )  # fmt: skip
    last = view.last_backfill_event_at or view.backfill_started_at or view.created_at
    done = sum(1 for p in view.backfill.values() if p.completed_at is not None)
    total = len(view.collection_ids) or len(view.backfill)
    progress = f"{done} of {total} collections complete"
    stall = timedelta(seconds=t.backfill_stall_seconds)
    if last is not None and now - last > stall:
        return Check(
            name="backfill",
            status=ERROR,
            message=f"initial backfill stalled: no progress for "
            f"{_ago((now - last).total_seconds())}; {progress}",
            since=last + stall,
        )
    return Check(
        name="backfill",
        status=HealthStatus.INITIALIZING,
        message=f"initial backfill in progress: {progress}",
        since=view.backfill_started_at or view.created_at,
    )


def check_activity(view: SyncView, now: datetime, t: Thresholds) -> Check:
    created = view.created_at
    limit = timedelta(seconds=t.no_activity_seconds)
    if view.first_activity_at is not None or created is None or now - created <= limit:
        return Check(name="activity", status=OK, message="runs or backfill events seen")
    return Check(
        name="activity",
        status=ERROR,
        message="no run or backfill event since the sync was created "
        f"{_ago((now - created).total_seconds())} ago",
        since=created + limit,
    )


def checks(
    view: SyncView, now: datetime, thresholds: Thresholds, incidents: Sequence[Incident] = ()
) -> tuple[Check, ...]:
    """Every rule of contract section 2, in a stable order."""
    return (
        check_freshness(view, now, thresholds),
        check_failures(view, now, thresholds),
        check_credential(view, now, thresholds),
        check_rate_limit(view, now, thresholds),
        check_provider(view, now, incidents),
        check_backfill(view, now, thresholds),
        check_activity(view, now, thresholds),
    )


def evaluate(
    view: SyncView,
    now: datetime,
    thresholds: Thresholds | None = None,
    incidents: Sequence[Incident] = (),
    previous: Health | None = None,
) -> Health:
    """Worst check wins (`paused` above all); carries the status history from `previous`."""
    t = thresholds or Thresholds()
    found = checks(view, now, t, incidents)
    if view.status is SyncStatus.DISABLED:
        worst = HealthStatus.PAUSED
        reason = f": {view.disabled_reason}" if view.disabled_reason else ""
        found = (
            Check(
                name="paused",
                status=worst,
                message=f"sync is disabled{reason}",
                since=view.status_changed_at,
            ),
            *found,
        )
    else:
        worst = max((c.status for c in found), key=lambda s: s.rank)
    status, pending, pending_since = _settle(worst, found, now, t, previous)
    since = _status_since(status, found, now, previous)
    return Health(
        sync_id=view.id,
        status=status,
        checks=found,
        evaluated_at=now,
        in_status_since=since,
        last_healthy_at=_last_healthy(status, since, now, previous),
        erroring_since=since if status is ERROR else None,
        credential=credential_health(view),
        provider=provider_health(incidents),
        pending=pending,
        pending_since=pending_since,
        transitions=_transitions(status, previous),
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


def _transitions(status: HealthStatus, previous: Health | None) -> int:
    if previous is None:
        return 1
    return previous.transitions + (status is not previous.status)


def _settle(
    worst: HealthStatus,
    found: Sequence[Check],
    now: datetime,
    t: Thresholds,
    previous: Health | None,
) -> tuple[HealthStatus, HealthStatus | None, datetime | None]:
    """With hysteresis, a new status must hold `hysteresis_seconds` before it is the status."""
    if previous is None or t.hysteresis_seconds <= 0 or worst is previous.status:
        return worst, None, None
    if worst is HealthStatus.PAUSED or previous.status is HealthStatus.PAUSED:
        return worst, None, None  # an operator's disable or enable is never held back
    pending_since = _began(worst, found, now, previous)
    if now - pending_since >= timedelta(seconds=t.hysteresis_seconds):
        return worst, None, None
    return previous.status, worst, pending_since


def _status_since(
    status: HealthStatus, found: Sequence[Check], now: datetime, previous: Health | None
) -> datetime:
    if previous is not None and previous.status is status and previous.in_status_since:
        return previous.in_status_since
    return _began(status, found, now, previous)


def _began(
    status: HealthStatus, found: Sequence[Check], now: datetime, previous: Health | None
) -> datetime:
    """When `status` began: a worse one when its checks crossed their thresholds, a better one
    now (the checks of a better status do not say when the worse one ended)."""
    if previous is not None and previous.pending is status and previous.pending_since:
        return previous.pending_since  # it began when it first went pending, not when last seen
    if previous is not None and status.rank < previous.status.rank:
        return now
    started = min((c.since for c in found if c.status is status and c.since), default=now)
    floor = previous.evaluated_at if previous is not None else None
    if floor is not None and started < floor:
        started = floor  # it cannot have begun before the last evaluation that saw otherwise
    return min(started, now)


def _last_healthy(
    status: HealthStatus, since: datetime, now: datetime, previous: Health | None
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
    health: Health | None = None,
) -> datetime | None:
    """The next moment this sync's health could change with no new event (None: never)."""
    t = thresholds or Thresholds()
    candidates: list[datetime] = []  # strict thresholds: the change is just after these
    exact: list[datetime] = []  # inclusive ones: the change is at these very instants
    completed = view.initial_backfill_completed_at
    if completed is not None:
        interval = t.interval(view.sync_frequency)
        base = (
            view.last_success_at
            if view.last_success_at and view.last_success_at > completed
            else completed
        )
        candidates += [
            base + interval * t.freshness_warn_factor,
            base + interval * t.freshness_error_factor,
        ]
    else:
        last = view.last_backfill_event_at or view.backfill_started_at or view.created_at
        if last is not None:
            candidates.append(last + timedelta(seconds=t.backfill_stall_seconds))
    if view.last_rate_limited_at is not None:
        exact.append(view.last_rate_limited_at + timedelta(seconds=t.rate_limit_window_seconds))
    if view.first_activity_at is None and view.created_at is not None:
        candidates.append(view.created_at + timedelta(seconds=t.no_activity_seconds))
    if health is not None and health.pending_since is not None:
        exact.append(health.pending_since + timedelta(seconds=t.hysteresis_seconds))
    # Thresholds are strict ("more than 1x"), so the change is just after each instant; the
    # rate-limit window ends and a hysteresis hold is served at the instant itself.
    future = [c for c in [c + EPSILON for c in candidates] + exact if c > now]
    return min(future) if future else None
