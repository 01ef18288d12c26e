"""Health rules as tables: every threshold at, just under and just over; worst wins; messages;
history through `previous`; hysteresis; `next_deadline`; purity. Unit tests, no services."""

from __future__ import annotations

import ast
import inspect
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import monitor.health as health_module
import monitor.rules as rules_module
from monitor.engine import change_event
from monitor.enums import CredentialStatus, HealthStatus, SyncStatus
from monitor.events import RunError
from monitor.health import (
    EPSILON,
    Check,
    CredentialHealth,
    Health,
    ProviderHealth,
    ThresholdBook,
    Thresholds,
    checks,
    current_checks,
    evaluate,
    next_deadline,
)
from monitor.views import CollectionProgress, CredentialProblem, Incident, LastRun, SyncView

OK = HealthStatus.HEALTHY
WARN = HealthStatus.WARN
ERROR = HealthStatus.ERROR
INIT = HealthStatus.INITIALIZING
PAUSED = HealthStatus.PAUSED

MS = timedelta(milliseconds=1)
SEC = timedelta(seconds=1)
MIN = timedelta(minutes=1)
HOUR = timedelta(hours=1)

CREATED = datetime(2024, 1, 1, tzinfo=UTC)
BACKFILL_DONE = CREATED + timedelta(hours=1)
LAST_SUCCESS = CREATED + timedelta(hours=2)
DEFAULT = Thresholds()


def ready(**fields: Any) -> SyncView:
    """A sync whose initial backfill is complete and whose last run succeeded at LAST_SUCCESS."""
    base: dict[str, Any] = {
        "id": "sync-1",
        "provider": "acme",
        "collection_ids": ("acme:a", "acme:b"),
        "sync_frequency": "continuous",
        "created_at": CREATED,
        "first_activity_at": CREATED + MIN,
        "backfill_started_at": CREATED + MIN,
        "last_backfill_event_at": BACKFILL_DONE,
        "initial_backfill_completed_at": BACKFILL_DONE,
        "backfill": {
            "acme:a": CollectionProgress(records_synced=5, completed_at=BACKFILL_DONE - MIN),
            "acme:b": CollectionProgress(records_synced=7, completed_at=BACKFILL_DONE),
        },
        "last_success_at": LAST_SUCCESS,
        "runs_succeeded": 1,
    }
    return SyncView(**{**base, **fields})


BACKFILL_EVENT = CREATED + timedelta(minutes=10)


def backfilling(**fields: Any) -> SyncView:
    """A sync whose initial backfill is running: one of two collections done at BACKFILL_EVENT."""
    base: dict[str, Any] = {
        "id": "sync-1",
        "provider": "acme",
        "collection_ids": ("acme:a", "acme:b"),
        "created_at": CREATED,
        "first_activity_at": CREATED + MIN,
        "backfill_started_at": CREATED + MIN,
        "last_backfill_event_at": BACKFILL_EVENT,
        "backfill": {
            "acme:a": CollectionProgress(records_synced=5, completed_at=BACKFILL_EVENT),
            "acme:b": CollectionProgress(records_synced=3, estimated_total=10),
        },
    }
    return SyncView(**{**base, **fields})


def check_of(health: Health, name: str) -> Check:
    found = [c for c in health.checks if c.name == name]
    assert len(found) == 1, f"expected one {name!r} check in {[c.name for c in health.checks]}"
    return found[0]


def incident(opened_at: datetime, *notes: str, incident_id: str = "inc-1") -> Incident:
    return Incident(incident_id=incident_id, opened_at=opened_at, notes=notes)


# --------------------------------------------------------------------------------------------
# 0. Thresholds parse the sync frequency
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frequency", "thresholds", "expected"),
    [
        ("continuous", DEFAULT, timedelta(minutes=5)),
        ("continuous", Thresholds(continuous_interval_seconds=42), timedelta(seconds=42)),
        ("4h", DEFAULT, timedelta(hours=4)),
        ("30m", DEFAULT, timedelta(minutes=30)),
        ("90s", DEFAULT, timedelta(seconds=90)),
        ("1d", DEFAULT, timedelta(days=1)),
        ("24h", DEFAULT, timedelta(hours=24)),
        # unknown spellings fall back to the continuous interval rather than failing
        ("hourly", DEFAULT, timedelta(minutes=5)),
        ("", Thresholds(continuous_interval_seconds=7), timedelta(seconds=7)),
    ],
)
def test_interval_of_sync_frequency(
    frequency: str, thresholds: Thresholds, expected: timedelta
) -> None:
    assert thresholds.interval(frequency) == expected


# --------------------------------------------------------------------------------------------
# 1. Every rule at, just under and just over its thresholds
# --------------------------------------------------------------------------------------------

FRESHNESS_THRESHOLDS: list[tuple[str, Thresholds, timedelta]] = [
    # (frequency, thresholds, expected interval)
    ("continuous", DEFAULT, timedelta(minutes=5)),
    ("4h", DEFAULT, timedelta(hours=4)),
    ("30m", DEFAULT, timedelta(minutes=30)),
    ("continuous", Thresholds(continuous_interval_seconds=60), timedelta(minutes=1)),
    ("90s", DEFAULT, timedelta(seconds=90)),
]


def _freshness_cases() -> list[Any]:
    cases = []
    for frequency, t, interval in FRESHNESS_THRESHOLDS:
        warn_at = interval * t.freshness_warn_factor
        error_at = interval * t.freshness_error_factor
        for label, offset, want in [
            ("0", timedelta(0), OK),
            ("1x-1s", warn_at - SEC, OK),
            ("1x-1ms", warn_at - MS, OK),
            ("1x", warn_at, OK),
            ("1x+1ms", warn_at + MS, WARN),
            ("1x+1s", warn_at + SEC, WARN),
            ("2x-1ms", error_at - MS, WARN),
            ("2x", error_at, WARN),
            ("2x+1ms", error_at + MS, ERROR),
            ("2x+1s", error_at + SEC, ERROR),
            ("10x", interval * 10, ERROR),
        ]:
            custom = "custom" if t != DEFAULT else "default"
            cases.append(
                pytest.param(
                    frequency,
                    t,
                    offset,
                    want,
                    warn_at,
                    error_at,
                    id=f"{frequency}-{custom}-{label}",
                )
            )
    return cases


@pytest.mark.parametrize(
    ("frequency", "t", "offset", "want", "warn_at", "error_at"), _freshness_cases()
)
def test_freshness_thresholds(
    frequency: str,
    t: Thresholds,
    offset: timedelta,
    want: HealthStatus,
    warn_at: timedelta,
    error_at: timedelta,
) -> None:
    view = ready(sync_frequency=frequency)
    health = evaluate(view, LAST_SUCCESS + offset, t)
    freshness = check_of(health, "freshness")
    assert freshness.status is want
    assert health.status is want  # nothing else is wrong with this sync
    expected_since = {OK: None, WARN: LAST_SUCCESS + warn_at, ERROR: LAST_SUCCESS + error_at}
    assert freshness.since == expected_since[want]


@pytest.mark.parametrize(
    ("factors", "offset", "want"),
    [
        ((1.5, 3.0), timedelta(minutes=7, seconds=30), OK),
        ((1.5, 3.0), timedelta(minutes=7, seconds=30) + MS, WARN),
        ((1.5, 3.0), timedelta(minutes=15), WARN),
        ((1.5, 3.0), timedelta(minutes=15) + MS, ERROR),
        ((0.5, 1.0), timedelta(minutes=2, seconds=30), OK),
        ((0.5, 1.0), timedelta(minutes=2, seconds=30) + MS, WARN),
        ((0.5, 1.0), timedelta(minutes=5) + MS, ERROR),
    ],
)
def test_freshness_custom_factors(
    factors: tuple[float, float], offset: timedelta, want: HealthStatus
) -> None:
    t = Thresholds(freshness_warn_factor=factors[0], freshness_error_factor=factors[1])
    assert check_of(evaluate(ready(), LAST_SUCCESS + offset, t), "freshness").status is want


@pytest.mark.parametrize(
    ("case", "fields", "baseline"),
    [
        ("success_after_backfill", {}, LAST_SUCCESS),
        ("no_success_yet", {"last_success_at": None, "runs_succeeded": 0}, BACKFILL_DONE),
        (
            "success_only_before_backfill_completed",
            {"last_success_at": BACKFILL_DONE - timedelta(minutes=30)},
            BACKFILL_DONE,
        ),
        ("success_at_backfill_completion", {"last_success_at": BACKFILL_DONE}, BACKFILL_DONE),
    ],
)
@pytest.mark.parametrize(
    ("offset", "want"),
    [
        (timedelta(minutes=5), OK),
        (timedelta(minutes=5) + MS, WARN),
        (timedelta(minutes=10), WARN),
        (timedelta(minutes=10) + MS, ERROR),
    ],
)
def test_freshness_baseline(
    case: str, fields: dict[str, Any], baseline: datetime, offset: timedelta, want: HealthStatus
) -> None:
    """Measured from the last success, or from backfill completion when none came after it."""
    freshness = check_of(evaluate(ready(**fields), baseline + offset), "freshness")
    assert freshness.status is want


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"last_success_at": CREATED + MIN},
        {"last_success_at": None},
    ],
)
def test_freshness_not_checked_before_initial_backfill_completes(fields: dict[str, Any]) -> None:
    now = BACKFILL_EVENT + timedelta(minutes=20)  # hours of "staleness" if it counted
    view = backfilling(sync_frequency="90s", **fields)
    health = evaluate(view, now)
    assert check_of(health, "freshness").status is OK
    assert "initial backfill" in check_of(health, "freshness").message
    assert health.status is INIT


FAILURE_TIME = LAST_SUCCESS + timedelta(seconds=30)
RUN_ERROR = RunError(code="upstream_5xx", message="HTTP 503 from provider", retryable=True)


@pytest.mark.parametrize(
    ("failures", "t", "want"),
    [
        (0, DEFAULT, OK),
        (1, DEFAULT, WARN),
        (2, DEFAULT, WARN),
        (3, DEFAULT, ERROR),
        (4, DEFAULT, ERROR),
        (50, DEFAULT, ERROR),
        (0, Thresholds(failures_warn=2, failures_error=5), OK),
        (1, Thresholds(failures_warn=2, failures_error=5), OK),
        (2, Thresholds(failures_warn=2, failures_error=5), WARN),
        (4, Thresholds(failures_warn=2, failures_error=5), WARN),
        (5, Thresholds(failures_warn=2, failures_error=5), ERROR),
        (6, Thresholds(failures_warn=2, failures_error=5), ERROR),
        (1, Thresholds(failures_warn=1, failures_error=1), ERROR),
        (1, Thresholds(failures_error=2), WARN),
        (2, Thresholds(failures_error=2), ERROR),
    ],
)
def test_consecutive_failures_thresholds(failures: int, t: Thresholds, want: HealthStatus) -> None:
    view = ready(
        consecutive_failures=failures,
        last_failure_at=FAILURE_TIME if failures else None,
        last_run=LastRun(run_id="r9", succeeded=False, error=RUN_ERROR) if failures else None,
    )
    health = evaluate(view, FAILURE_TIME + SEC, t)
    check = check_of(health, "failures")
    assert check.status is want
    assert health.status is want
    if want is OK:
        assert check.since is None
    else:
        # with exactly the threshold count the last failure is the crossing moment
        assert check.since == FAILURE_TIME
        assert f"{failures} failed run" in check.message
        assert "upstream_5xx: HTTP 503 from provider" in check.message


FAILED_AT = LAST_SUCCESS + timedelta(seconds=20)


@pytest.mark.parametrize(
    ("fields", "want"),
    [
        ({}, OK),
        (
            {
                "credential_status": CredentialStatus.FAILED,
                "credential_failed_at": FAILED_AT,
                "credential_problem": CredentialProblem(http_status=401, message="token expired"),
            },
            ERROR,
        ),
        # recovered: the old failure time may linger in the view, it no longer counts
        ({"credential_status": CredentialStatus.VALID, "credential_failed_at": FAILED_AT}, OK),
    ],
    ids=["never_failed", "failed", "recovered"],
)
@pytest.mark.parametrize("later", [timedelta(0), SEC, timedelta(days=3)])
def test_credential(fields: dict[str, Any], want: HealthStatus, later: timedelta) -> None:
    """A failed credential is an error until recovered, however long ago it failed."""
    view = ready(sync_frequency="30d", **fields)
    health = evaluate(view, FAILED_AT + later)
    check = check_of(health, "credential")
    assert check.status is want
    assert health.status is want
    if want is ERROR:
        assert check.since == FAILED_AT
        assert check.message == (
            "credential rejected by the provider (HTTP 401: token expired); reconnect it"
        )
        assert health.credential == CredentialHealth(
            status=CredentialStatus.FAILED, notes=("token expired",), time=FAILED_AT
        )
    else:
        assert check.since is None
        assert health.credential == CredentialHealth(status=CredentialStatus.VALID)


RATE_LIMITED_AT = LAST_SUCCESS + timedelta(seconds=10)


def _rate_limit_cases() -> list[Any]:
    cases = []
    for label, t in [
        ("default", DEFAULT),
        ("60s", Thresholds(rate_limit_window_seconds=60)),
        ("1h", Thresholds(rate_limit_window_seconds=3600)),
    ]:
        window = timedelta(seconds=t.rate_limit_window_seconds)
        for name, offset, want in [
            ("at_event", timedelta(0), WARN),
            ("1s_after", SEC, WARN),
            ("window-1s", window - SEC, WARN),
            ("window-1ms", window - MS, WARN),
            ("window", window, OK),
            ("window+1ms", window + MS, OK),
            ("window+1s", window + SEC, OK),
        ]:
            cases.append(pytest.param(t, offset, want, id=f"{label}-{name}"))
    return cases


@pytest.mark.parametrize(("t", "offset", "want"), _rate_limit_cases())
def test_rate_limit_window(t: Thresholds, offset: timedelta, want: HealthStatus) -> None:
    view = ready(sync_frequency="1d", last_rate_limited_at=RATE_LIMITED_AT, retry_after_seconds=30)
    health = evaluate(view, RATE_LIMITED_AT + offset, t)
    check = check_of(health, "rate_limit")
    assert check.status is want
    assert health.status is want
    if want is WARN:
        assert check.since == RATE_LIMITED_AT
        assert "retry after 30 s" in check.message


def test_rate_limit_window_zero_never_warns() -> None:
    view = ready(last_rate_limited_at=RATE_LIMITED_AT)
    t = Thresholds(rate_limit_window_seconds=0)
    assert check_of(evaluate(view, RATE_LIMITED_AT, t), "rate_limit").status is OK


@pytest.mark.parametrize(
    ("incidents", "want", "notes", "since"),
    [
        ((), OK, (), None),
        (
            (incident(LAST_SUCCESS, "API elevated 5xx", "ETA 1h"),),
            WARN,
            ("API elevated 5xx", "ETA 1h"),
            LAST_SUCCESS,
        ),
        (
            (
                incident(LAST_SUCCESS + SEC, "EU region down", incident_id="b"),
                incident(LAST_SUCCESS, "webhooks delayed", incident_id="a"),
            ),
            WARN,
            ("EU region down", "webhooks delayed"),
            LAST_SUCCESS,
        ),
        ((incident(LAST_SUCCESS),), WARN, (), LAST_SUCCESS),
    ],
    ids=["none", "one", "two", "no_notes"],
)
def test_provider_incident(
    incidents: tuple[Incident, ...],
    want: HealthStatus,
    notes: tuple[str, ...],
    since: datetime | None,
) -> None:
    health = evaluate(ready(), LAST_SUCCESS + SEC, DEFAULT, incidents)
    check = check_of(health, "provider")
    assert check.status is want
    assert health.status is want
    assert check.since == since
    assert health.provider == ProviderHealth(
        status="incident" if incidents else "operational", notes=notes
    )
    for note in notes:
        assert note in check.message
    if incidents:
        assert "acme" in check.message
        if not notes:
            assert "no details" in check.message


def _backfill_cases() -> list[Any]:
    cases = []
    for label, t in [("default", DEFAULT), ("10min", Thresholds(backfill_stall_seconds=600))]:
        stall = timedelta(seconds=t.backfill_stall_seconds)
        for name, offset, want in [
            ("0", timedelta(0), INIT),
            ("limit-1s", stall - SEC, INIT),
            ("limit-1ms", stall - MS, INIT),
            ("limit", stall, INIT),
            ("limit+1ms", stall + MS, ERROR),
            ("limit+1s", stall + SEC, ERROR),
            ("day", timedelta(days=1), ERROR),
        ]:
            cases.append(pytest.param(t, offset, want, id=f"{label}-{name}"))
    return cases


@pytest.mark.parametrize(("t", "offset", "want"), _backfill_cases())
def test_backfill_stalled(t: Thresholds, offset: timedelta, want: HealthStatus) -> None:
    health = evaluate(backfilling(), BACKFILL_EVENT + offset, t)
    check = check_of(health, "backfill")
    assert check.status is want
    assert health.status is want
    if want is ERROR:
        assert check.since == BACKFILL_EVENT + timedelta(seconds=t.backfill_stall_seconds)
        assert "stalled" in check.message and "1 of 2 collections complete" in check.message
    else:
        assert "in progress: 1 of 2 collections complete" in check.message


@pytest.mark.parametrize(
    ("fields", "last"),
    [
        ({}, BACKFILL_EVENT),
        ({"last_backfill_event_at": None}, CREATED + MIN),  # only `backfill.started` seen
        # runs but no backfill event at all: measured from creation
        (
            {
                "last_backfill_event_at": None,
                "backfill_started_at": None,
                "backfill": {},
                "last_success_at": CREATED + MIN,
            },
            CREATED,
        ),
    ],
    ids=["last_progress", "started_only", "no_backfill_event"],
)
@pytest.mark.parametrize(
    ("offset", "want"), [(timedelta(minutes=30), INIT), (timedelta(minutes=30) + MS, ERROR)]
)
def test_backfill_stall_baseline(
    fields: dict[str, Any], last: datetime, offset: timedelta, want: HealthStatus
) -> None:
    assert evaluate(backfilling(**fields), last + offset).status is want


def test_backfill_complete_is_never_stalled() -> None:
    view = ready(sync_frequency="30d")
    health = evaluate(view, BACKFILL_DONE + timedelta(days=2))
    assert check_of(health, "backfill").status is OK
    assert health.status is OK


def _activity_cases() -> list[Any]:
    cases = []
    for label, t in [("default", DEFAULT), ("2min", Thresholds(no_activity_seconds=120))]:
        limit = timedelta(seconds=t.no_activity_seconds)
        for name, offset, want in [
            ("0", timedelta(0), OK),
            ("limit-1s", limit - SEC, OK),
            ("limit-1ms", limit - MS, OK),
            ("limit", limit, OK),
            ("limit+1ms", limit + MS, ERROR),
            ("limit+1s", limit + SEC, ERROR),
        ]:
            cases.append(pytest.param(t, offset, want, id=f"{label}-{name}"))
    return cases


def bare(**fields: Any) -> SyncView:
    """A sync just created: no run or backfill event yet."""
    return SyncView(
        **{"id": "sync-1", "provider": "acme", "collection_ids": ("acme:a",), "created_at": CREATED}
        | fields
    )


@pytest.mark.parametrize(("t", "offset", "want"), _activity_cases())
def test_no_activity(t: Thresholds, offset: timedelta, want: HealthStatus) -> None:
    health = evaluate(bare(), CREATED + offset, t)
    check = check_of(health, "activity")
    assert check.status is want
    # with nothing worse the sync is merely initializing
    assert health.status is (ERROR if want is ERROR else INIT)
    if want is ERROR:
        assert check.since == CREATED + timedelta(seconds=t.no_activity_seconds)
        assert "no run or backfill event since the sync was created" in check.message


@pytest.mark.parametrize(
    "fields",
    [
        {"first_activity_at": CREATED + timedelta(minutes=9)},
        {"first_activity_at": CREATED + timedelta(minutes=11)},  # late, but there now
        {"created_at": None},  # not created yet (events before sync.created)
    ],
)
def test_no_activity_not_reported(fields: dict[str, Any]) -> None:
    health = evaluate(bare(**fields), CREATED + timedelta(minutes=12))
    assert check_of(health, "activity").status is OK


def test_checks_cover_every_rule_in_a_stable_order() -> None:
    found = checks(ready(), LAST_SUCCESS, DEFAULT)
    assert [c.name for c in found] == [
        "freshness",
        "failures",
        "credential",
        "rate_limit",
        "provider",
        "backfill",
        "activity",
    ]
    assert all(c.status is OK for c in found)
    health = evaluate(ready(), LAST_SUCCESS)
    assert health.checks == found
    assert health.status is OK


# --------------------------------------------------------------------------------------------
# 2. Worst wins
# --------------------------------------------------------------------------------------------

NOW = LAST_SUCCESS + timedelta(minutes=1)
DISABLED = {"status": SyncStatus.DISABLED, "status_changed_at": NOW - SEC}
CRED_FAILED = {
    "credential_status": CredentialStatus.FAILED,
    "credential_failed_at": NOW - SEC,
    "credential_problem": CredentialProblem(http_status=403, message="revoked"),
}
RATE_LIMITED = {"last_rate_limited_at": NOW - SEC}
ONE_FAILURE = {"consecutive_failures": 1, "last_failure_at": NOW - SEC}
THREE_FAILURES = {"consecutive_failures": 3, "last_failure_at": NOW - SEC}
STALE_WARN = {"last_success_at": NOW - timedelta(minutes=6)}
STALE_ERROR = {"last_success_at": NOW - timedelta(minutes=11)}
INCIDENT = (incident(NOW - SEC, "degraded"),)
NOT_BACKFILLED = {"initial_backfill_completed_at": None, "last_backfill_event_at": NOW - MIN}
STALLED = {
    "initial_backfill_completed_at": None,
    "last_backfill_event_at": NOW - timedelta(hours=1),
}


@pytest.mark.parametrize(
    ("parts", "incidents", "want"),
    [
        ([], (), OK),
        ([DISABLED], (), PAUSED),
        ([DISABLED, CRED_FAILED], (), PAUSED),
        ([DISABLED, STALE_ERROR, THREE_FAILURES, RATE_LIMITED], INCIDENT, PAUSED),
        ([DISABLED, NOT_BACKFILLED], (), PAUSED),
        ([CRED_FAILED], (), ERROR),
        ([CRED_FAILED, RATE_LIMITED], (), ERROR),
        ([THREE_FAILURES, RATE_LIMITED], INCIDENT, ERROR),
        ([STALE_ERROR, ONE_FAILURE], (), ERROR),
        ([STALLED, RATE_LIMITED], (), ERROR),
        ([STALLED], INCIDENT, ERROR),
        ([RATE_LIMITED], (), WARN),
        ([ONE_FAILURE], (), WARN),
        ([STALE_WARN], (), WARN),
        ([], INCIDENT, WARN),
        ([STALE_WARN, ONE_FAILURE, RATE_LIMITED], INCIDENT, WARN),
        ([NOT_BACKFILLED, RATE_LIMITED], (), WARN),
        ([NOT_BACKFILLED, ONE_FAILURE], (), WARN),
        ([NOT_BACKFILLED], INCIDENT, WARN),
        ([NOT_BACKFILLED, CRED_FAILED], (), ERROR),
        ([NOT_BACKFILLED, THREE_FAILURES], (), ERROR),
        ([NOT_BACKFILLED], (), INIT),
        # freshness is not checked during the initial backfill: still only initializing
        ([NOT_BACKFILLED, STALE_ERROR], (), INIT),
    ],
    ids=[
        "healthy",
        "disabled",
        "disabled+credential",
        "disabled+everything",
        "disabled+backfilling",
        "credential",
        "credential+rate_limit",
        "failures3+rate_limit+incident",
        "stale_error+failure",
        "stalled+rate_limit",
        "stalled+incident",
        "rate_limit",
        "failure",
        "stale_warn",
        "incident",
        "all_warns",
        "backfilling+rate_limit",
        "backfilling+failure",
        "backfilling+incident",
        "backfilling+credential",
        "backfilling+failures3",
        "backfilling",
        "backfilling+old_success",
    ],
)
def test_worst_wins(
    parts: Sequence[dict[str, Any]], incidents: tuple[Incident, ...], want: HealthStatus
) -> None:
    fields: dict[str, Any] = {}
    for part in parts:
        fields |= part
    health = evaluate(ready(**fields), NOW, DEFAULT, incidents)
    assert health.status is want
    ranks = [c.status.rank for c in health.checks]
    assert max(ranks) == want.rank
    if want is PAUSED:
        assert health.checks[0].name == "paused"
        assert health.checks[0].since == NOW - SEC
        assert len(health.checks) == 1  # "paused ... and nothing else is reported"


def test_initializing_only_when_nothing_worse() -> None:
    for status in HealthStatus:
        assert (status.rank > INIT.rank) is (status in (WARN, ERROR, PAUSED))
    assert sorted(HealthStatus, key=lambda s: s.rank) == [OK, INIT, WARN, ERROR, PAUSED]


# --------------------------------------------------------------------------------------------
# 3. Actionable messages, `since` at the exact crossing
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("view", "now", "incidents", "name", "status", "message", "since"),
    [
        (
            ready(),
            LAST_SUCCESS + timedelta(minutes=7),
            (),
            "freshness",
            WARN,
            "no successful run for 7 min; expected every 5 min",
            LAST_SUCCESS + timedelta(minutes=5),
        ),
        (
            ready(),
            LAST_SUCCESS + timedelta(minutes=12),
            (),
            "freshness",
            ERROR,
            "no successful run for 12 min; expected every 5 min",
            LAST_SUCCESS + timedelta(minutes=10),
        ),
        (
            ready(sync_frequency="4h"),
            LAST_SUCCESS + timedelta(hours=5),
            (),
            "freshness",
            WARN,
            "no successful run for 5.0 h; expected every 4.0 h",
            LAST_SUCCESS + timedelta(hours=4),
        ),
        (
            ready(sync_frequency="30m"),
            LAST_SUCCESS + timedelta(minutes=61),
            (),
            "freshness",
            ERROR,
            "no successful run for 61 min; expected every 30 min",
            LAST_SUCCESS + timedelta(minutes=60),
        ),
        (
            ready(last_success_at=None),
            BACKFILL_DONE + timedelta(minutes=6),
            (),
            "freshness",
            WARN,
            "no successful run since the backfill for 6 min; expected every 5 min",
            BACKFILL_DONE + timedelta(minutes=5),
        ),
        (
            # the last success predates the backfill's completion: measured from completion,
            # so the message must not claim "no successful run for 6 min"
            ready(last_success_at=BACKFILL_DONE - timedelta(hours=3)),
            BACKFILL_DONE + timedelta(minutes=6),
            (),
            "freshness",
            WARN,
            "no successful run since the backfill for 6 min; expected every 5 min",
            BACKFILL_DONE + timedelta(minutes=5),
        ),
        (
            ready(
                consecutive_failures=2,
                last_failure_at=NOW - SEC,
                last_run=LastRun(run_id="r2", error=RUN_ERROR),
            ),
            NOW,
            (),
            "failures",
            WARN,
            "2 failed runs in a row: upstream_5xx: HTTP 503 from provider",
            NOW - SEC,
        ),
        (
            ready(consecutive_failures=1, last_failure_at=NOW - SEC),
            NOW,
            (),
            "failures",
            WARN,
            "1 failed run in a row",
            NOW - SEC,
        ),
        (
            ready(**CRED_FAILED),
            NOW,
            (),
            "credential",
            ERROR,
            "credential rejected by the provider (HTTP 403: revoked); reconnect it",
            NOW - SEC,
        ),
        (
            ready(credential_status=CredentialStatus.FAILED, credential_failed_at=NOW),
            NOW,
            (),
            "credential",
            ERROR,
            "credential rejected by the provider; reconnect it",
            NOW,
        ),
        (
            ready(last_rate_limited_at=NOW - timedelta(minutes=2), retry_after_seconds=45),
            NOW,
            (),
            "rate_limit",
            WARN,
            "rate limited by the provider 2 min ago; retry after 45 s",
            NOW - timedelta(minutes=2),
        ),
        (
            ready(last_rate_limited_at=NOW - timedelta(seconds=30)),
            NOW,
            (),
            "rate_limit",
            WARN,
            "rate limited by the provider 30 s ago",
            NOW - timedelta(seconds=30),
        ),
        (
            ready(),
            NOW,
            INCIDENT,
            "provider",
            WARN,
            "acme has 1 open incident(s): degraded",
            NOW - SEC,
        ),
        (
            backfilling(),
            BACKFILL_EVENT + timedelta(minutes=31),
            (),
            "backfill",
            ERROR,
            "initial backfill stalled: no progress for 31 min; 1 of 2 collections complete",
            BACKFILL_EVENT + timedelta(minutes=30),
        ),
        (
            bare(),
            CREATED + timedelta(minutes=11),
            (),
            "activity",
            ERROR,
            "no run or backfill event since the sync was created 11 min ago",
            CREATED + timedelta(minutes=10),
        ),
        (
            ready(status=SyncStatus.DISABLED, status_changed_at=NOW - MIN, disabled_reason="x"),
            NOW,
            (),
            "paused",
            PAUSED,
            "sync is disabled: x",
            NOW - MIN,
        ),
        (
            ready(status=SyncStatus.DISABLED, status_changed_at=NOW - MIN),
            NOW,
            (),
            "paused",
            PAUSED,
            "sync is disabled",
            NOW - MIN,
        ),
    ],
    ids=[
        "freshness_warn",
        "freshness_error",
        "freshness_4h",
        "freshness_30m_error",
        "freshness_no_success",
        "freshness_success_before_backfill",
        "failures_with_error",
        "failure_without_error",
        "credential",
        "credential_no_problem",
        "rate_limit_retry_after",
        "rate_limit",
        "provider",
        "backfill_stalled",
        "no_activity",
        "paused_reason",
        "paused",
    ],
)
def test_actionable_messages(
    view: SyncView,
    now: datetime,
    incidents: tuple[Incident, ...],
    name: str,
    status: HealthStatus,
    message: str,
    since: datetime,
) -> None:
    health = evaluate(view, now, DEFAULT, incidents)
    check = check_of(health, name)
    assert (check.status, check.message, check.since) == (status, message, since)


@pytest.mark.parametrize(
    ("view", "now", "incidents"),
    [
        (ready(**STALE_ERROR, **THREE_FAILURES, **RATE_LIMITED, **CRED_FAILED), NOW, INCIDENT),
        (backfilling(), BACKFILL_EVENT + timedelta(hours=2), ()),
        (bare(), CREATED + timedelta(hours=1), ()),
        (ready(**DISABLED), NOW, ()),
    ],
)
def test_every_non_healthy_check_has_a_message_and_since(
    view: SyncView, now: datetime, incidents: tuple[Incident, ...]
) -> None:
    health = evaluate(view, now, DEFAULT, incidents)
    bad = [c for c in health.checks if c.status is not OK]
    assert bad
    for check in bad:
        assert check.message and check.since is not None and check.since <= now, check


def test_healthy_messages_say_what_is_fine() -> None:
    health = evaluate(ready(), LAST_SUCCESS + timedelta(minutes=3))
    assert check_of(health, "freshness").message == "last success 3 min ago"
    assert all(c.message for c in health.checks)


# --------------------------------------------------------------------------------------------
# 4. History across evaluations through `previous`
# --------------------------------------------------------------------------------------------


@dataclass
class Run:
    """Evaluates a sequence of (view, now, incidents), each with the previous health."""

    t: Thresholds = field(default_factory=Thresholds)
    history: list[Health] = field(default_factory=list)

    def at(self, view: SyncView, now: datetime, incidents: tuple[Incident, ...] = ()) -> Health:
        previous = self.history[-1] if self.history else None
        health = evaluate(view, now, self.t, incidents, previous)
        self.history.append(health)
        return health


def test_history_through_previous() -> None:
    run = Run()
    start = LAST_SUCCESS + SEC
    h = run.at(ready(), start)
    assert (h.status, h.transitions, h.in_status_since) == (OK, 1, BACKFILL_DONE)
    assert h.last_healthy_at == start and h.erroring_since is None

    h = run.at(ready(), start + MIN)  # still healthy: nothing moves but last_healthy_at
    assert (h.status, h.transitions, h.in_status_since) == (OK, 1, BACKFILL_DONE)
    assert h.last_healthy_at == start + MIN

    limited_at = start + 2 * MIN
    limited = ready(last_rate_limited_at=limited_at)
    h = run.at(limited, limited_at)
    assert (h.status, h.transitions, h.in_status_since) == (WARN, 2, limited_at)
    assert h.last_healthy_at == limited_at and h.erroring_since is None

    h = run.at(limited, limited_at + MIN)  # warn holds: kept
    assert (h.status, h.transitions, h.in_status_since) == (WARN, 2, limited_at)
    assert h.last_healthy_at == limited_at

    failed_at = limited_at + 2 * MIN
    broken = limited.model_copy(update=CRED_FAILED | {"credential_failed_at": failed_at})
    h = run.at(broken, failed_at)
    assert (h.status, h.transitions, h.in_status_since) == (ERROR, 3, failed_at)
    assert h.erroring_since == failed_at and h.last_healthy_at == limited_at
    assert h.credential == CredentialHealth(
        status=CredentialStatus.FAILED, notes=("revoked",), time=failed_at
    )

    h = run.at(broken, failed_at + 10 * MIN)  # rate limit over, credential still failed
    assert (h.status, h.transitions, h.in_status_since) == (ERROR, 3, failed_at)
    assert h.erroring_since == failed_at

    recovered_at = failed_at + 11 * MIN
    fixed = broken.model_copy(
        update={
            "credential_status": CredentialStatus.VALID,
            "credential_problem": None,
            "last_success_at": recovered_at,
        }
    )
    h = run.at(fixed, recovered_at)
    assert (h.status, h.transitions, h.in_status_since) == (OK, 4, recovered_at)
    assert h.erroring_since is None and h.last_healthy_at == recovered_at
    assert h.credential == CredentialHealth(status=CredentialStatus.VALID)

    h = run.at(fixed, recovered_at + MIN)
    assert (h.status, h.transitions, h.in_status_since) == (OK, 4, recovered_at)


def test_in_status_since_moves_on_recovery_not_back_to_the_last_evaluation() -> None:
    """Leaving a worse status, the new one began no earlier than now (the old one held then)."""
    run = Run()
    limited_at = LAST_SUCCESS + SEC
    view = ready(sync_frequency="1d", last_rate_limited_at=limited_at)
    assert run.at(view, limited_at).status is WARN
    over = limited_at + timedelta(minutes=5)
    h = run.at(view, over)
    assert h.status is OK
    assert h.in_status_since == over and h.last_healthy_at == over


def test_error_to_warn_moves_in_status_since() -> None:
    run = Run()
    limited_at = LAST_SUCCESS + SEC
    view = ready(sync_frequency="1d", last_rate_limited_at=limited_at, **THREE_FAILURES)
    view = view.model_copy(update={"last_failure_at": limited_at})
    assert run.at(view, limited_at).status is ERROR
    better = view.model_copy(update={"consecutive_failures": 0})
    h = run.at(better, limited_at + MIN)
    assert (h.status, h.in_status_since, h.erroring_since) == (WARN, limited_at + MIN, None)


def test_worse_status_begins_at_its_crossing_but_not_before_the_last_evaluation() -> None:
    run = Run()
    seen = LAST_SUCCESS + MIN
    assert run.at(ready(), seen).status is OK
    # an incident opened before the last evaluation, learnt of only now
    late = (incident(seen - 30 * SEC, "late news"),)
    h = run.at(ready(), seen + 10 * SEC, late)
    assert (h.status, h.in_status_since) == (WARN, seen)
    # a threshold crossed between two evaluations: exactly at the crossing
    run = Run()
    assert run.at(ready(), LAST_SUCCESS + MIN).status is OK
    h = run.at(ready(), LAST_SUCCESS + 7 * MIN)
    assert (h.status, h.in_status_since) == (WARN, LAST_SUCCESS + 5 * MIN)
    h = run.at(ready(), LAST_SUCCESS + 12 * MIN)
    assert (h.status, h.in_status_since) == (ERROR, LAST_SUCCESS + 10 * MIN)
    assert h.erroring_since == LAST_SUCCESS + 10 * MIN
    assert h.last_healthy_at == LAST_SUCCESS + 5 * MIN
    assert h.transitions == 3


def test_failures_message_names_the_error_while_a_retry_runs() -> None:
    error = RunError(code="http_503", message="upstream down", http_status=503, retryable=True)
    retrying = LastRun(run_id="r4", started_at=LAST_SUCCESS + 3 * MIN)
    view = ready(consecutive_failures=3, last_error=error, last_run=retrying)
    health = evaluate(view, LAST_SUCCESS + 4 * MIN)
    assert check_of(health, "failures").message == "3 failed runs in a row: http_503: upstream down"


def test_an_incident_older_than_the_sync_dates_its_warn_from_the_sync_s_creation() -> None:
    """A sync created during an open incident of its provider: its warn (and the health change
    published for it) began when the sync began, not when the incident opened a day before."""
    old = (incident(CREATED - timedelta(days=1), "since yesterday"),)
    h = evaluate(bare(first_activity_at=CREATED + SEC), CREATED + MIN, DEFAULT, old)
    assert (h.status, h.in_status_since) == (WARN, CREATED)
    assert check_of(h, "provider").since == CREATED


@pytest.mark.parametrize(
    ("last_success", "message"),
    [
        (None, "no success yet; it completed 2 min ago"),
        (BACKFILL_DONE - MIN, "no success since the backfill; it completed 2 min ago"),
        (BACKFILL_DONE, "no success since the backfill; it completed 2 min ago"),
        (BACKFILL_DONE + MIN, "last success 60 s ago"),
    ],
    ids=["never", "before", "at", "after"],
)
def test_freshness_message_names_the_backfill_until_a_success_follows_it(
    last_success: datetime | None, message: str
) -> None:
    view = ready(last_success_at=last_success)
    health = evaluate(view, BACKFILL_DONE + 2 * MIN)
    assert check_of(health, "freshness").message == message


def test_a_stored_zero_frequency_counts_as_continuous() -> None:
    assert Thresholds().interval("0m") == Thresholds().interval("continuous") == 5 * MIN


def test_first_evaluation_counts_one_transition() -> None:
    h = evaluate(bare(), CREATED)
    assert (h.status, h.transitions, h.in_status_since) == (INIT, 1, CREATED)
    assert h.last_healthy_at is None and h.erroring_since is None
    h2 = evaluate(bare(first_activity_at=CREATED + SEC), CREATED + 2 * SEC, previous=h)
    assert (h2.status, h2.transitions, h2.in_status_since) == (INIT, 1, CREATED)


@pytest.mark.parametrize(
    ("incidents", "provider"),
    [
        ((), ProviderHealth(status="operational")),
        ((incident(NOW, "a", "b"),), ProviderHealth(status="incident", notes=("a", "b"))),
        (
            (incident(NOW, "a", incident_id="1"), incident(NOW, "c", incident_id="2")),
            ProviderHealth(status="incident", notes=("a", "c")),
        ),
    ],
)
def test_provider_shape(incidents: tuple[Incident, ...], provider: ProviderHealth) -> None:
    health = evaluate(ready(), NOW, DEFAULT, incidents)
    assert health.provider == provider
    assert health.model_dump(mode="json")["provider"] == {
        "status": provider.status,
        "notes": list(provider.notes),
    }


@pytest.mark.parametrize(
    ("fields", "credential"),
    [
        ({}, {"status": "valid", "notes": [], "time": None}),
        (
            CRED_FAILED,
            {"status": "failed", "notes": ["revoked"], "time": "2024-01-01T02:00:59Z"},
        ),
        (
            {"credential_status": CredentialStatus.FAILED, "credential_failed_at": NOW},
            {"status": "failed", "notes": [], "time": "2024-01-01T02:01:00Z"},
        ),
    ],
)
def test_credential_shape(fields: dict[str, Any], credential: dict[str, Any]) -> None:
    dumped = evaluate(ready(**fields), NOW).model_dump(mode="json")["credential"]
    assert dumped == credential


# --------------------------------------------------------------------------------------------
# 5. Hysteresis
# --------------------------------------------------------------------------------------------

HOLD = Thresholds(hysteresis_seconds=60)


def test_hysteresis_new_status_must_hold() -> None:
    run = Run(HOLD)
    limited_at = LAST_SUCCESS + SEC
    assert run.at(ready(sync_frequency="1d"), LAST_SUCCESS).status is OK
    view = ready(sync_frequency="1d", last_rate_limited_at=limited_at)
    h = run.at(view, limited_at)
    assert (h.status, h.pending, h.pending_since, h.transitions) == (OK, WARN, limited_at, 1)
    h = run.at(view, limited_at + 30 * SEC)
    assert (h.status, h.pending, h.pending_since, h.transitions) == (OK, WARN, limited_at, 1)
    h = run.at(view, limited_at + 60 * SEC - MS)
    assert (h.status, h.pending, h.pending_since) == (OK, WARN, limited_at)
    h = run.at(view, limited_at + 60 * SEC)
    assert (h.status, h.pending, h.pending_since, h.transitions) == (WARN, None, None, 2)
    # it began when the condition began, whenever the evaluations in between happened
    assert h.in_status_since == limited_at


def test_hysteresis_blip_shorter_than_hold_never_changes_status() -> None:
    run = Run(HOLD)
    start = LAST_SUCCESS + SEC
    assert run.at(ready(), start).status is OK
    failed = ready(consecutive_failures=1, last_failure_at=start + SEC)
    h = run.at(failed, start + SEC)
    assert (h.status, h.pending) == (OK, WARN)
    recovered = ready(last_success_at=start + 40 * SEC)
    h = run.at(recovered, start + 40 * SEC)
    assert (h.status, h.pending, h.pending_since, h.transitions) == (OK, None, None, 1)
    assert h.in_status_since == run.history[0].in_status_since


def test_hysteresis_recovery_blip_never_changes_status() -> None:
    """A warn that clears for less than the hold stays warn: recovery is held back too."""
    run = Run(HOLD)
    opened = (incident(LAST_SUCCESS + SEC, "degraded"),)
    t1 = LAST_SUCCESS + 2 * MIN
    assert run.at(ready(), LAST_SUCCESS + SEC).status is OK
    h = run.at(ready(), t1, opened)
    assert (h.status, h.pending) == (WARN, None)  # the incident is older than the hold
    h = run.at(ready(last_success_at=t1), t1 + SEC)  # resolved
    assert (h.status, h.pending, h.pending_since) == (WARN, OK, t1 + SEC)
    h = run.at(ready(last_success_at=t1), t1 + 30 * SEC)
    assert (h.status, h.pending, h.pending_since) == (WARN, OK, t1 + SEC)
    reopened = (incident(t1 + 40 * SEC, "degraded again"),)
    h = run.at(ready(last_success_at=t1), t1 + 40 * SEC, reopened)
    assert (h.status, h.pending, h.transitions) == (WARN, None, 2)
    assert h.in_status_since == run.history[1].in_status_since


def test_hysteresis_recovery_after_hold() -> None:
    run = Run(HOLD)
    t1 = LAST_SUCCESS + 2 * MIN
    run.at(ready(), LAST_SUCCESS + SEC)
    run.at(ready(), t1, (incident(LAST_SUCCESS + SEC),))
    h = run.at(ready(last_success_at=t1), t1 + SEC)
    assert (h.status, h.pending) == (WARN, OK)
    assert h.last_healthy_at == LAST_SUCCESS + SEC  # still not healthy
    h = run.at(ready(last_success_at=t1), t1 + SEC + 60 * SEC)
    assert (h.status, h.pending, h.transitions) == (OK, None, 3)
    assert h.in_status_since == t1 + SEC and h.last_healthy_at == t1 + 61 * SEC


def test_hysteresis_pending_target_changes() -> None:
    run = Run(HOLD)
    start = LAST_SUCCESS + SEC
    run.at(ready(), start)
    one = ready(consecutive_failures=1, last_failure_at=start + SEC)
    h = run.at(one, start + SEC)
    assert (h.status, h.pending, h.pending_since) == (OK, WARN, start + SEC)
    three = ready(consecutive_failures=3, last_failure_at=start + 20 * SEC)
    h = run.at(three, start + 20 * SEC)
    assert (h.status, h.pending, h.pending_since) == (OK, ERROR, start + 20 * SEC)
    h = run.at(three, start + 80 * SEC)
    assert (h.status, h.pending, h.in_status_since) == (ERROR, None, start + 20 * SEC)
    assert h.erroring_since == start + 20 * SEC


@pytest.mark.parametrize("hold", [60, 3600])
def test_hysteresis_never_holds_back_pause_or_unpause(hold: float) -> None:
    run = Run(Thresholds(hysteresis_seconds=hold))
    start = LAST_SUCCESS + SEC
    run.at(ready(), start)
    disabled = ready(status=SyncStatus.DISABLED, status_changed_at=start + SEC)
    h = run.at(disabled, start + SEC)
    assert (h.status, h.pending, h.transitions) == (PAUSED, None, 2)
    assert h.in_status_since == start + SEC
    broken = ready(**CRED_FAILED | {"credential_failed_at": start + 2 * SEC})
    h = run.at(broken, start + 3 * SEC)  # enabled while the credential is broken
    assert (h.status, h.pending, h.transitions) == (ERROR, None, 3)


def test_hysteresis_off_by_default() -> None:
    assert DEFAULT.hysteresis_seconds == 0
    run = Run()
    run.at(ready(), LAST_SUCCESS + SEC)
    h = run.at(ready(consecutive_failures=1, last_failure_at=NOW), NOW)
    assert (h.status, h.pending, h.pending_since) == (WARN, None, None)
    h = run.at(ready(last_success_at=NOW + SEC), NOW + SEC)
    assert (h.status, h.pending, h.pending_since) == (OK, None, None)


def test_hysteresis_first_evaluation_is_not_held() -> None:
    h = evaluate(ready(**CRED_FAILED), NOW, HOLD)
    assert (h.status, h.pending) == (ERROR, None)


# --------------------------------------------------------------------------------------------
# 6. next_deadline
# --------------------------------------------------------------------------------------------

FRESH_WARN = LAST_SUCCESS + timedelta(minutes=5)
FRESH_ERROR = LAST_SUCCESS + timedelta(minutes=10)


@pytest.mark.parametrize(
    ("view", "now", "t", "expected"),
    [
        (ready(), LAST_SUCCESS, DEFAULT, FRESH_WARN + EPSILON),
        (ready(), FRESH_WARN, DEFAULT, FRESH_WARN + EPSILON),
        (ready(), FRESH_WARN + EPSILON, DEFAULT, FRESH_ERROR + EPSILON),
        (ready(), FRESH_ERROR, DEFAULT, FRESH_ERROR + EPSILON),
        (ready(), FRESH_ERROR + EPSILON, DEFAULT, None),
        (ready(sync_frequency="4h"), LAST_SUCCESS, DEFAULT, LAST_SUCCESS + 4 * 3600 * SEC + MS),
        (
            ready(),
            LAST_SUCCESS,
            Thresholds(continuous_interval_seconds=60, freshness_warn_factor=1.5),
            LAST_SUCCESS + 90 * SEC + MS,
        ),
        (ready(last_success_at=None), BACKFILL_DONE, DEFAULT, BACKFILL_DONE + 5 * MIN + MS),
        # rate limiting ends at exactly the window's end (not "more than")
        (
            ready(sync_frequency="1d", last_rate_limited_at=NOW),
            NOW,
            DEFAULT,
            NOW + 5 * MIN,
        ),
        (
            ready(sync_frequency="1d", last_rate_limited_at=NOW),
            NOW,
            Thresholds(rate_limit_window_seconds=30),
            NOW + 30 * SEC,
        ),
        (
            ready(sync_frequency="1d", last_rate_limited_at=NOW),
            NOW + 5 * MIN,
            DEFAULT,
            LAST_SUCCESS + timedelta(days=1) + MS,
        ),
        # backfill stall limit
        (backfilling(), BACKFILL_EVENT, DEFAULT, BACKFILL_EVENT + 30 * MIN + MS),
        (
            backfilling(),
            BACKFILL_EVENT,
            Thresholds(backfill_stall_seconds=60),
            BACKFILL_EVENT + MIN + MS,
        ),
        (backfilling(), BACKFILL_EVENT + 30 * MIN + MS, DEFAULT, None),
        # no-activity limit comes first, then the stall limit measured from creation
        (bare(), CREATED, DEFAULT, CREATED + 10 * MIN + MS),
        (bare(), CREATED + 10 * MIN + MS, DEFAULT, CREATED + 30 * MIN + MS),
        (bare(), CREATED, Thresholds(no_activity_seconds=5), CREATED + 5 * SEC + MS),
        # nothing can change without a new event
        (bare(created_at=None), CREATED, DEFAULT, None),
        (bare(), CREATED + timedelta(hours=1), DEFAULT, None),
        (ready(**CRED_FAILED, **STALE_ERROR), NOW, DEFAULT, None),
    ],
    ids=[
        "fresh_to_warn",
        "at_warn_threshold",
        "warn_to_error",
        "at_error_threshold",
        "already_error",
        "4h",
        "custom_factor",
        "from_backfill_completion",
        "rate_limit_end",
        "rate_limit_custom_window",
        "after_rate_limit_freshness",
        "backfill_stall",
        "backfill_stall_custom",
        "already_stalled",
        "no_activity",
        "stall_after_no_activity",
        "no_activity_custom",
        "not_created",
        "all_crossed",
        "credential_failed_stale",
    ],
)
def test_next_deadline(
    view: SyncView, now: datetime, t: Thresholds, expected: datetime | None
) -> None:
    health = evaluate(view, now, t)
    deadline = next_deadline(view, now, t, health)
    assert deadline == expected
    if deadline is not None:
        assert deadline > now


def test_next_deadline_hysteresis_hold_end() -> None:
    run = Run(HOLD)
    run.at(ready(), LAST_SUCCESS + SEC)
    limited_at = LAST_SUCCESS + 2 * SEC
    view = ready(last_rate_limited_at=limited_at)
    h = run.at(view, limited_at)
    assert h.pending is WARN
    assert next_deadline(view, limited_at, HOLD, h) == limited_at + 60 * SEC
    assert next_deadline(view, limited_at, HOLD, None) == FRESH_WARN + MS  # without health


def test_next_deadline_defaults() -> None:
    assert next_deadline(ready(), LAST_SUCCESS) == FRESH_WARN + EPSILON


@dataclass(frozen=True)
class Scenario:
    """A sync at `now` whose status will change with no new event."""

    view: SyncView
    now: datetime
    t: Thresholds = DEFAULT
    incidents: tuple[Incident, ...] = ()
    previous: tuple[tuple[SyncView, datetime, tuple[Incident, ...]], ...] = ()


DEADLINE_SCENARIOS = {
    "freshness_1x": Scenario(ready(), LAST_SUCCESS + SEC),
    "freshness_2x": Scenario(ready(), FRESH_WARN + MIN),
    "freshness_4h": Scenario(ready(sync_frequency="4h"), LAST_SUCCESS),
    "freshness_custom": Scenario(
        ready(), LAST_SUCCESS, Thresholds(continuous_interval_seconds=61.5)
    ),
    "freshness_from_backfill": Scenario(ready(last_success_at=None), BACKFILL_DONE),
    "rate_limit_end": Scenario(ready(sync_frequency="1d", last_rate_limited_at=NOW), NOW),
    "rate_limit_end_custom": Scenario(
        ready(sync_frequency="1d", last_rate_limited_at=NOW),
        NOW,
        Thresholds(rate_limit_window_seconds=12.5),
    ),
    "backfill_stall": Scenario(backfilling(), BACKFILL_EVENT + SEC),
    "backfill_stall_custom": Scenario(
        backfilling(), BACKFILL_EVENT, Thresholds(backfill_stall_seconds=100)
    ),
    "no_activity": Scenario(bare(), CREATED),
    "no_activity_custom": Scenario(bare(), CREATED, Thresholds(no_activity_seconds=1)),
    "hysteresis_hold_worse": Scenario(
        ready(sync_frequency="1d", consecutive_failures=1, last_failure_at=NOW),
        NOW,
        HOLD,
        previous=((ready(sync_frequency="1d"), NOW - SEC, ()),),
    ),
    "hysteresis_hold_recovery": Scenario(
        ready(sync_frequency="1d"),
        NOW + SEC,
        HOLD,
        previous=((ready(sync_frequency="1d", **CRED_FAILED), NOW, ()),),
    ),
    "hysteresis_hold_after_crossing": Scenario(
        ready(), FRESH_WARN + MS, HOLD, previous=((ready(), LAST_SUCCESS, ()),)
    ),
}


@pytest.mark.parametrize("scenario", DEADLINE_SCENARIOS.values(), ids=DEADLINE_SCENARIOS.keys())
def test_status_changes_exactly_at_next_deadline(scenario: Scenario) -> None:
    """Evaluating at the deadline shows the change; 1 ms before it does not."""
    s = scenario
    previous: Health | None = None
    for view, at, incidents in s.previous:
        previous = evaluate(view, at, s.t, incidents, previous)
    current = evaluate(s.view, s.now, s.t, s.incidents, previous)
    deadline = next_deadline(s.view, s.now, s.t, current)
    assert deadline is not None and deadline > s.now
    before = evaluate(s.view, deadline - MS, s.t, s.incidents, current)
    at_deadline = evaluate(s.view, deadline, s.t, s.incidents, current)
    assert before.status is current.status
    assert at_deadline.status is not current.status


@pytest.mark.parametrize(
    ("view", "start", "t", "incidents"),
    [
        (ready(), LAST_SUCCESS, DEFAULT, ()),
        (ready(last_rate_limited_at=LAST_SUCCESS + 4 * MIN), LAST_SUCCESS + 4 * MIN, DEFAULT, ()),
        (ready(sync_frequency="90s", last_rate_limited_at=LAST_SUCCESS), LAST_SUCCESS, DEFAULT, ()),
        (ready(last_rate_limited_at=LAST_SUCCESS), LAST_SUCCESS, DEFAULT, INCIDENT),
        (backfilling(last_rate_limited_at=BACKFILL_EVENT + MIN), BACKFILL_EVENT + MIN, DEFAULT, ()),
        (bare(), CREATED, DEFAULT, ()),
        (bare(last_rate_limited_at=CREATED + 8 * MIN), CREATED + 8 * MIN, DEFAULT, ()),
        (
            ready(sync_frequency="1m", last_rate_limited_at=LAST_SUCCESS + 30 * SEC),
            LAST_SUCCESS + 30 * SEC,
            Thresholds(rate_limit_window_seconds=90, freshness_error_factor=3),
            (),
        ),
    ],
)
def test_a_deadline_scheduler_never_misses_a_transition(
    view: SyncView, start: datetime, t: Thresholds, incidents: tuple[Incident, ...]
) -> None:
    """Evaluating only at deadlines sees every status a second-by-second poll sees, no later."""
    end = start + timedelta(hours=1)

    def status(at: datetime) -> HealthStatus:
        return evaluate(view, at, t, incidents).status

    # the brute-force truth: every status change, found to the millisecond
    truth: list[tuple[datetime, HealthStatus]] = [(start, status(start))]
    at = start
    while at < end:
        at += SEC
        if status(at) is not truth[-1][1]:
            lo = at - SEC  # refine: the first millisecond of the new status
            while status(lo + MS) is truth[-1][1]:
                lo += MS
            truth.append((lo + MS, status(lo + MS)))

    seen: list[tuple[datetime, HealthStatus]] = []
    previous: Health | None = None
    at = start
    while at <= end:
        previous = evaluate(view, at, t, incidents, previous)
        if not seen or previous.status is not seen[-1][1]:
            seen.append((at, previous.status))
        deadline = next_deadline(view, at, t, previous)
        if deadline is None:
            break
        at = deadline
    assert seen == truth


# --------------------------------------------------------------------------------------------
# 7. Purity
# --------------------------------------------------------------------------------------------

PURITY_CASES = [
    (ready(), NOW, DEFAULT, ()),
    (ready(**CRED_FAILED, **RATE_LIMITED), NOW, DEFAULT, INCIDENT),
    (backfilling(), BACKFILL_EVENT + timedelta(hours=1), DEFAULT, ()),
    (ready(**DISABLED), NOW, HOLD, ()),
]


@pytest.mark.parametrize(("view", "now", "t", "incidents"), PURITY_CASES)
def test_same_inputs_same_outputs(
    view: SyncView, now: datetime, t: Thresholds, incidents: tuple[Incident, ...]
) -> None:
    before = view.model_copy(deep=True)
    first = evaluate(view, now, t, incidents)
    again = evaluate(view.model_copy(deep=True), now, t, incidents)
    assert first == again
    assert first.evaluated_at == now
    assert view == before
    later = first
    for _ in range(2):
        later = evaluate(view, now + MIN, t, incidents, first)
    assert later == evaluate(view, now + MIN, t, incidents, first)
    assert next_deadline(view, now, t, first) == next_deadline(view, now, t, again)
    assert checks(view, now, t, incidents) == checks(view, now, t, incidents)


@pytest.mark.parametrize("module", [health_module, rules_module])
def test_clock_is_only_the_now_argument(module: Any) -> None:
    """No call to a clock anywhere in the module: time comes in through `now` alone."""
    tree = ast.parse(inspect.getsource(module))
    clocks = {"now", "utcnow", "today", "time", "monotonic", "perf_counter", "time_ns"}
    calls = [
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in clocks
    ]
    assert calls == []
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert "time" not in imported


def test_result_depends_on_now_not_on_the_wall_clock() -> None:
    """The same view judged far in the past or future: only `now` decides."""
    far = datetime(2099, 1, 1, tzinfo=UTC)
    view = ready(last_success_at=far - 7 * MIN)
    assert evaluate(view, far).status is WARN
    assert evaluate(view, far - 7 * MIN).status is OK


# --------------------------------------------------------------------------------------------
# 8. ThresholdBook
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "expected"),
    [
        ("slow", Thresholds(continuous_interval_seconds=3600)),
        ("flaky", Thresholds(failures_error=10, hysteresis_seconds=30)),
        ("acme", DEFAULT),
        ("", DEFAULT),
        (None, DEFAULT),
        ("SLOW", DEFAULT),
    ],
)
def test_threshold_book_falls_back_to_default(provider: str | None, expected: Thresholds) -> None:
    book = ThresholdBook(
        DEFAULT,
        {
            "slow": Thresholds(continuous_interval_seconds=3600),
            "flaky": Thresholds(failures_error=10, hysteresis_seconds=30),
        },
    )
    assert book.for_provider(provider) == expected


def test_threshold_book_without_overrides() -> None:
    custom = Thresholds(no_activity_seconds=5)
    book = ThresholdBook(custom)
    assert book.for_provider("anything") is custom
    assert book.for_provider(None) is custom


def test_per_provider_thresholds_change_the_verdict() -> None:
    book = ThresholdBook(DEFAULT, {"acme": Thresholds(continuous_interval_seconds=3600)})
    view = ready()
    now = LAST_SUCCESS + 20 * MIN
    assert evaluate(view, now, book.for_provider(view.provider)).status is OK
    assert evaluate(view, now, book.for_provider("other")).status is ERROR


@pytest.mark.parametrize(
    "bad",
    [
        {"continuous_interval_seconds": 0},
        {"failures_warn": 0},
        {"hysteresis_seconds": -1},
        {"rate_limit_window_seconds": -1},
    ],
)
def test_thresholds_reject_nonsense(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Thresholds(**bad)


def test_thresholds_are_frozen() -> None:
    with pytest.raises(ValueError):
        DEFAULT.failures_warn = 5  # type: ignore[misc]


def test_a_disabled_sync_reports_paused_alone_however_broken_it_is() -> None:
    """Contract section 2: `paused` means the sync is disabled and nothing else is reported,
    in the API's checks, a change event's checks and the metrics row alike."""
    broken = ready(
        status=SyncStatus.DISABLED,
        disabled_reason="customer asked",
        status_changed_at=NOW - SEC,
        consecutive_failures=5,
        credential_status=CredentialStatus.FAILED,
        credential_failed_at=NOW - HOUR,
        last_success_at=NOW - 10 * HOUR,
    )
    incident = Incident(incident_id="i1", opened_at=NOW - HOUR, notes=("outage",))
    assert [c.name for c in evaluate(ready(), NOW, DEFAULT).checks] != ["paused"]
    health = evaluate(broken, NOW, DEFAULT, (incident,))
    assert health.status is PAUSED
    assert [(c.name, c.status, c.message) for c in health.checks] == [
        ("paused", PAUSED, "sync is disabled: customer asked")
    ]
    assert current_checks(broken, NOW, DEFAULT, (incident,)) == health.checks
    assert next_deadline(broken, NOW, DEFAULT) is None  # nothing changes it but an event


def test_a_rate_limit_stamped_ahead_of_this_clock_warns_at_once() -> None:
    """Producer clocks run ahead of syncmon's: the event has happened, so the sync warns now
    and its deadline is the end of the window counted from the event's own time."""
    ahead = NOW + 5 * SEC
    view = ready(last_rate_limited_at=ahead, sync_frequency="4h")
    health = evaluate(view, NOW, DEFAULT)
    assert health.status is WARN
    check = next(c for c in health.checks if c.name == "rate_limit")
    assert check.status is WARN and check.since == ahead
    window = timedelta(seconds=DEFAULT.rate_limit_window_seconds)
    assert next_deadline(view, NOW, DEFAULT) == ahead + window
    assert evaluate(view, ahead + window, DEFAULT).status is OK


def test_a_sync_created_again_publishes_changes_with_new_ids() -> None:
    """A deleted sync leaves no health, so its next life counts changes from 1 again; the
    change time in the id keeps them apart from the old ones a publisher may find on the
    topic when it settles what a dead publisher sent."""
    first = evaluate(ready(), NOW, DEFAULT)
    again = evaluate(ready(), NOW + HOUR, DEFAULT)
    assert first.transitions == again.transitions == 1
    ids = [json.loads(change_event(None, h))["id"] for h in (first, again)]
    assert ids[0] != ids[1]
    at = first.in_status_since or first.evaluated_at
    assert ids[0] == f"{first.sync_id}:1:{round(at.timestamp() * 1000)}"
    assert json.loads(change_event(None, first)) == json.loads(change_event(None, first))


def test_the_largest_thresholds_and_latest_times_still_give_a_deadline() -> None:
    """Deadlines add thresholds to event times; unbounded, a threshold of 1e12 s overflowed
    datetime in every sweep that met such a sync. At their bounds they stay far from it."""
    biggest = Thresholds(
        **{
            name: rules_module.MAX_FACTOR if "factor" in name else rules_module.MAX_SECONDS
            for name, info in Thresholds.model_fields.items()
            if "seconds" in name or "factor" in name
        }
    )
    late = datetime(2199, 12, 31, tzinfo=UTC)  # the latest event time decoding lets in
    shift = late - CREATED
    views = [
        ready(sync_frequency="3650d"),
        backfilling(),
        ready(last_rate_limited_at=LAST_SUCCESS, consecutive_failures=1),
        SyncView(id="sync-1", provider="acme", created_at=CREATED),  # no activity yet
    ]
    for view in views:
        moved = view.model_copy(
            update={k: v + shift for k, v in view.__dict__.items() if isinstance(v, datetime)}
        )
        now = late + timedelta(days=1)
        health = evaluate(moved, now, biggest)
        deadline = next_deadline(moved, now, biggest, health)
        assert deadline is None or deadline > now


@pytest.mark.parametrize(
    "name", [n for n in Thresholds.model_fields if "seconds" in n or "factor" in n]
)
def test_a_threshold_past_its_bound_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="less than or equal"):
        Thresholds(**{name: 1e12})
