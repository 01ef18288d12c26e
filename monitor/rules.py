"""The health rules of contract section 2: each a pure function of a view, a clock, thresholds."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import ClassVar, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, model_validator

from monitor.enums import CredentialStatus, HealthStatus
from monitor.views import Incident, SyncView

OK, WARN, ERROR = HealthStatus.HEALTHY, HealthStatus.WARN, HealthStatus.ERROR
INITIALIZING = HealthStatus.INITIALIZING
_FREQUENCY = re.compile(r"^(\d+)([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# Every view field the rules read: a sweep parses only these (with the engine's own), and
# reading another field of such a partial view raises AttributeError.
RULE_FIELDS = frozenset(
    {
        "id", "status", "disabled_reason", "status_changed_at", "provider", "sync_frequency",
        "created_at", "collection_ids", "initial_backfill_completed_at", "first_activity_at",
        "last_run", "last_success_at", "last_failure_at", "consecutive_failures", "last_error",
        "credential_status", "credential_failed_at", "credential_problem",
        "last_rate_limited_at", "retry_after_seconds", "backfill_started_at",
        "last_backfill_event_at", "backfill",
    }
)  # fmt: skip


# Deadlines are event times (before 2200) plus these: bounded, they stay far below the year
# 9999 where datetime overflows (an "effectively never" of 1e12 s stopped every sweep).
MAX_SECONDS = 3650 * 86400  # ten years, as the longest sync_frequency
MAX_FACTOR = 100  # times an interval of ten years at most: a thousand years


class Thresholds(BaseModel):
    """The contract's defaults; each can be overridden globally or per provider."""

    model_config = ConfigDict(frozen=True)

    continuous_interval_seconds: float = Field(300, gt=0, le=MAX_SECONDS)
    freshness_warn_factor: float = Field(1.0, gt=0, le=MAX_FACTOR)
    freshness_error_factor: float = Field(2.0, gt=0, le=MAX_FACTOR)
    failures_warn: int = Field(1, ge=1)
    failures_error: int = Field(3, ge=1)
    rate_limit_window_seconds: float = Field(300, ge=0, le=MAX_SECONDS)
    backfill_stall_seconds: float = Field(1800, gt=0, le=MAX_SECONDS)
    no_activity_seconds: float = Field(600, gt=0, le=MAX_SECONDS)
    hysteresis_seconds: float = Field(0, ge=0, le=MAX_SECONDS)

    # (warn, error) pairs: a warn threshold past its error one could never be reached.
    ORDERED: ClassVar[tuple[tuple[str, str], ...]] = (
        ("freshness_warn_factor", "freshness_error_factor"),
        ("failures_warn", "failures_error"),
    )

    @model_validator(mode="after")
    def _warn_not_above_error(self) -> Thresholds:
        for warn, error in self.ORDERED:
            if getattr(self, warn) > getattr(self, error):
                raise ValueError(
                    f"{warn} ({getattr(self, warn)}) is above {error} ({getattr(self, error)})"
                )
        return self

    def interval(self, sync_frequency: str) -> timedelta:
        """Expected time between successful runs: `continuous` or `<n>[smhd]` such as `4h`
        (a `0m` stored before decoding refused it counts as continuous)."""
        match = _FREQUENCY.match(sync_frequency)
        seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)] if match else 0
        return timedelta(seconds=seconds or self.continuous_interval_seconds)


class ThresholdBook:
    """Thresholds by provider, falling back to the global ones."""

    def __init__(self, default: Thresholds, per_provider: dict[str, Thresholds] | None = None):
        self.default = default
        self.per_provider = per_provider or {}

    def for_provider(self, provider: str | None) -> Thresholds:
        return self.per_provider.get(provider or "", self.default)


class Limits:
    """Thresholds as timedeltas, made once per thresholds: a sweep would otherwise build
    several per sync at a microsecond each."""

    def __init__(self, t: Thresholds) -> None:
        self.t = t
        self.rate_limit_window = timedelta(seconds=t.rate_limit_window_seconds)
        self.backfill_stall = timedelta(seconds=t.backfill_stall_seconds)
        self.no_activity = timedelta(seconds=t.no_activity_seconds)
        self.hysteresis = timedelta(seconds=t.hysteresis_seconds)
        self._freshness: dict[str, tuple[timedelta, timedelta, timedelta]] = {}

    def freshness(self, sync_frequency: str) -> tuple[timedelta, timedelta, timedelta]:
        """(expected interval, warn after, error after) for a sync frequency."""
        found = self._freshness.get(sync_frequency)
        if found is None:
            interval = self.t.interval(sync_frequency)
            t = self.t
            found = (
                interval,
                interval * t.freshness_warn_factor,
                interval * t.freshness_error_factor,
            )
            if len(self._freshness) < 1024:  # frequencies come from events: keep a bound
                self._freshness[sync_frequency] = found
        return found


_LIMITS: dict[int, Limits] = {}  # by id of the thresholds, which each entry keeps alive


def limits(t: Thresholds) -> Limits:
    """The limits of these thresholds, made once (they are frozen, so never stale)."""
    found = _LIMITS.get(id(t))
    if found is None or found.t is not t:
        if len(_LIMITS) >= 256:
            _LIMITS.clear()
        found = _LIMITS[id(t)] = Limits(t)
    return found


class Check(BaseModel):
    """One rule's verdict, with a message an on-call engineer can act on."""

    model_config = ConfigDict(frozen=True)

    name: str
    status: HealthStatus
    message: str
    since: datetime | None = None


class Verdict(NamedTuple):
    """One rule's status and since; its message is rendered only when the check is shown,
    since a sweep that stores no checks would otherwise spend a third of its time on text."""

    name: str
    status: HealthStatus
    since: datetime | None
    message: Callable[[], str]

    def check(self) -> Check:
        return Check(name=self.name, status=self.status, message=self.message(), since=self.since)


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _passing(name: str, message: str) -> Verdict:
    return Verdict(name, OK, None, lambda: message)


_NOT_CHECKED = _passing("freshness", "not checked until the initial backfill completes")
_NO_FAILURE = _passing("failures", "no failed run since the last success")
_CREDENTIAL_WORKS = _passing("credential", "credential works")
_NOT_LIMITED = _passing("rate_limit", "not rate limited recently")
_NO_INCIDENT = _passing("provider", "no open provider incident")
_ACTIVE = _passing("activity", "runs or backfill events seen")


def check_freshness(view: SyncView, now: datetime, lim: Limits) -> Verdict:
    completed = view.initial_backfill_completed_at
    if completed is None:
        return _NOT_CHECKED
    interval, warn, error = lim.freshness(view.sync_frequency)
    last = view.last_success_at
    since_success = last is not None and last > completed
    base = last if last is not None and since_success else completed  # else from its end
    elapsed = now - base
    ago = elapsed.total_seconds()
    if elapsed > error:
        status, since = ERROR, base + error
    elif elapsed > warn:
        status, since = WARN, base + warn
    else:
        if since_success:
            return Verdict("freshness", OK, None, lambda: f"last success {_ago(ago)} ago")
        none = "no success yet" if last is None else "no success since the backfill"
        return Verdict("freshness", OK, None, lambda: f"{none}; it completed {_ago(ago)} ago")

    def message() -> str:
        what = "successful run" if since_success else "successful run since the backfill"
        return f"no {what} for {_ago(ago)}; expected every {_ago(interval.total_seconds())}"

    return Verdict("freshness", status, since, message)


def check_failures(view: SyncView, now: datetime, lim: Limits) -> Verdict:
    n = view.consecutive_failures
    if n < lim.t.failures_warn:
        return _NO_FAILURE

    def message() -> str:
        error = view.last_error or (view.last_run.error if view.last_run else None)
        detail = f": {error.code}: {error.message}" if error else ""
        return f"{n} failed run{'s' if n > 1 else ''} in a row{detail}"

    status = ERROR if n >= lim.t.failures_error else WARN
    return Verdict("failures", status, view.last_failure_at, message)


def check_credential(view: SyncView, now: datetime, lim: Limits) -> Verdict:
    if view.credential_status is not CredentialStatus.FAILED:
        return _CREDENTIAL_WORKS

    def message() -> str:
        problem = view.credential_problem
        detail = ""
        if problem is not None:
            code = f"HTTP {problem.http_status}: " if problem.http_status else ""
            detail = f" ({code}{problem.message})" if code or problem.message else ""
        return f"credential rejected by the provider{detail}; reconnect it"

    return Verdict("credential", ERROR, view.credential_failed_at, message)


def check_rate_limit(view: SyncView, now: datetime, lim: Limits) -> Verdict:
    last = view.last_rate_limited_at
    # An event stamped ahead of this clock (skew) has happened all the same: limited now.
    if last is None or now - last >= lim.rate_limit_window:
        return _NOT_LIMITED
    ago = max(0.0, (now - last).total_seconds())
    retry = f"; retry after {view.retry_after_seconds:g} s" if view.retry_after_seconds else ""
    return Verdict(
        "rate_limit", WARN, last, lambda: f"rate limited by the provider {_ago(ago)} ago{retry}"
    )


def check_provider(view: SyncView, now: datetime, incidents: Sequence[Incident]) -> Verdict:
    if not incidents:
        return _NO_INCIDENT

    def message() -> str:
        notes = "; ".join(n for i in incidents for n in i.notes) or "no details"
        return f"{view.provider} has {len(incidents)} open incident(s): {notes}"

    since = min(i.opened_at for i in incidents)
    created = view.created_at
    if created is not None and since < created:
        since = created  # an incident opened before the sync existed hit it at its creation
    return Verdict("provider", WARN, since, message)


def _backfill_complete() -> str:
    return "initial backfill complete"


def check_backfill(view: SyncView, now: datetime, lim: Limits) -> Verdict:
    completed = view.initial_backfill_completed_at
    if completed is not None:
        return Verdict("backfill", OK, completed, _backfill_complete)

    def progress() -> str:
        done = sum(1 for p in view.backfill.values() if p.completed_at is not None)
        total = len(view.collection_ids) or len(view.backfill)
        return f"{done} of {total} collections complete"

    last = view.last_backfill_event_at or view.backfill_started_at or view.created_at
    if last is not None and now - last > lim.backfill_stall:
        ago = (now - last).total_seconds()
        return Verdict(
            "backfill", ERROR, last + lim.backfill_stall,
            lambda: f"initial backfill stalled: no progress for {_ago(ago)}; {progress()}",
        )  # fmt: skip
    return Verdict(
        "backfill", INITIALIZING, view.backfill_started_at or view.created_at,
        lambda: f"initial backfill in progress: {progress()}",
    )  # fmt: skip


def check_activity(view: SyncView, now: datetime, lim: Limits) -> Verdict:
    created = view.created_at
    if view.first_activity_at is not None or created is None or now - created <= lim.no_activity:
        return _ACTIVE
    ago = (now - created).total_seconds()
    return Verdict(
        "activity", ERROR, created + lim.no_activity,
        lambda: f"no run or backfill event since the sync was created {_ago(ago)} ago",
    )  # fmt: skip


def verdicts(
    view: SyncView, now: datetime, thresholds: Thresholds, incidents: Sequence[Incident] = ()
) -> tuple[Verdict, ...]:
    """Every rule of contract section 2, in a stable order."""
    return rule_verdicts(view, now, limits(thresholds), incidents)


def rule_verdicts(
    view: SyncView, now: datetime, lim: Limits, incidents: Sequence[Incident] = ()
) -> tuple[Verdict, ...]:
    """`verdicts` with the thresholds' limits at hand."""
    return (
        check_freshness(view, now, lim),
        check_failures(view, now, lim),
        check_credential(view, now, lim),
        check_rate_limit(view, now, lim),
        check_provider(view, now, incidents),
        check_backfill(view, now, lim),
        check_activity(view, now, lim),
    )


def checks(
    view: SyncView, now: datetime, thresholds: Thresholds, incidents: Sequence[Incident] = ()
) -> tuple[Check, ...]:
    """Every rule's check with its message, whatever the sync's status (the API shows
    `health.current_checks`: `paused` alone for a disabled sync)."""
    return tuple(v.check() for v in verdicts(view, now, thresholds, incidents))
