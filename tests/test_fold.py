"""The fold as a table: events in, view facts and outcomes out; plus idempotence and purity."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.enums import CredentialStatus, EventType, Outcome, SyncStatus
from monitor.events import EVENT_ADAPTER, Envelope, RunError, UnknownEvent
from monitor.fold import Position, Step, View, apply, step
from monitor.patching import MASK, mask_secrets
from monitor.views import ProviderView, SyncView

T0 = datetime(2024, 1, 1, tzinfo=UTC)
SYNC = "sync-1"
PROVIDER = "hubspot"
A, D, S = Outcome.APPLIED, Outcome.DUPLICATE, Outcome.STALE
IGN = Outcome.IGNORED

_ids = itertools.count(1)


def t(minute: float) -> datetime:
    return T0 + timedelta(minutes=minute)


def cloudevent(
    kind: str,
    data: Any = None,
    *,
    minute: float = 0,
    subject: str = SYNC,
    event_id: str | None = None,
    sequence: int | None = None,
) -> dict[str, Any]:
    """A structured-mode CloudEvent as a dict."""
    raw: dict[str, Any] = {
        "specversion": "1.0",
        "id": event_id or f"evt-{next(_ids)}",
        "source": "//tests/fold",
        "type": kind,
        "time": t(minute).isoformat().replace("+00:00", "Z"),
        "subject": subject,
    }
    if data is not None:
        raw["data"] = data
    if sequence is not None:
        raw["sequence"] = sequence
    return raw


def ev(kind: str, data: Any = None, **kwargs: Any) -> Envelope:
    """A typed event, validated exactly as the decoder validates it."""
    return EVENT_ADAPTER.validate_python(cloudevent(kind, data, **kwargs))


def created(minute: float = 0, **fields: Any) -> Envelope:
    return ev(EventType.SYNC_CREATED, {"provider": PROVIDER, **fields}, minute=minute)


def updated(patch: dict[str, Any], minute: float = 1) -> Envelope:
    return ev(EventType.SYNC_UPDATED, patch, minute=minute)


def simple(kind: EventType, minute: float, **data: Any) -> Envelope:
    return ev(kind, data, minute=minute)


def run_failed(minute: float, run_id: str = "r1", code: str = "http_500") -> Envelope:
    error = {"code": code, "message": "boom", "http_status": 500, "retryable": True}
    return simple(EventType.RUN_FAILED, minute, run_id=run_id, error=error)


def run_succeeded(minute: float, run_id: str = "r1", **extra: Any) -> Envelope:
    return simple(EventType.RUN_SUCCEEDED, minute, run_id=run_id, **extra)


def started(minute: float, *ids: str) -> Envelope:
    return ev(
        EventType.BACKFILL_STARTED, {"collection_ids": list(ids)} if ids else {}, minute=minute
    )


def progressed(minute: float, cid: str, records: int, total: int | None = None) -> Envelope:
    data: dict[str, Any] = {"collection_id": cid, "records_synced": records}
    if total is not None:
        data["estimated_total"] = total
    return ev(EventType.BACKFILL_PROGRESSED, data, minute=minute)


def completed(minute: float, cid: str, records: int = 10) -> Envelope:
    data = {"collection_id": cid, "records_synced": records}
    return ev(EventType.BACKFILL_COLLECTION_COMPLETED, data, minute=minute)


def incident(kind: EventType, minute: float, incident_id: str, **data: Any) -> Envelope:
    return ev(kind, {"incident_id": incident_id, **data}, minute=minute, subject=PROVIDER)


def seq(kind: EventType, sequence: int | None, minute: float = 1, **data: Any) -> Envelope:
    return ev(kind, data, minute=minute, sequence=sequence)


# -- folding helpers ---------------------------------------------------------------------

Item = Envelope | tuple[Envelope, Position]


def fold(items: Sequence[Item], view: View | None = None) -> tuple[View | None, list[Outcome]]:
    outcomes: list[Outcome] = []
    for item in items:
        event, at = item if isinstance(item, tuple) else (item, None)
        result = step(view, event, at)
        outcomes.append(result.outcome)
        view = result.view
    return view, outcomes


_MISSING = object()


def resolve(obj: Any, path: str) -> Any:
    """`a.b.c` through attributes and dict keys; a trailing `*` gives the sorted dict keys."""
    for part in path.split("."):
        if part == "*":
            return sorted(obj)
        obj = obj.get(part, _MISSING) if isinstance(obj, dict) else getattr(obj, part, _MISSING)
        assert obj is not _MISSING, f"{path}: no {part!r}"
    return obj


@dataclass(frozen=True)
class Case:
    name: str
    events: list[Item]
    facts: dict[str, Any]
    outcomes: list[Outcome] = field(default_factory=list)  # default: all APPLIED

    def expected_outcomes(self) -> list[Outcome]:
        return self.outcomes or [A] * len(self.events)


# Events reused inside one row (same id twice) are built once.
_dup_failure = run_failed(2)
_e_pos = simple(EventType.RUN_STARTED, 1, run_id="r1")
_e_pos2 = simple(EventType.RUN_STARTED, 2, run_id="r2")
_e_pos3 = simple(EventType.RUN_STARTED, 3, run_id="r3")
_e_pos4 = simple(EventType.RUN_STARTED, 4, run_id="r4")
_deleted = simple(EventType.SYNC_DELETED, 5)
_seq_created = ev(EventType.SYNC_CREATED, {"provider": PROVIDER}, sequence=5)

FULL_CREDENTIAL = {
    "id": "cred-1",
    "provider": PROVIDER,
    "properties": {
        "kind": "oauth",
        "client_secret": "cs",
        "Password": "pw",
        "REFRESH_TOKEN": "rt",
        "api_key": "ak",
        "private_key": "pk",
        "nested": {"deeper": [{"accessToken": "at", "scope": "read"}]},
        "expires_in": 3600,
    },
    "oauth_app_id": None,
    "metadata": {"custom_credential_property": 42},
}
FULL_CREDENTIAL_MASKED = {
    "id": "cred-1",
    "provider": PROVIDER,
    "properties": {
        "kind": "oauth",
        "client_secret": MASK,
        "Password": MASK,
        "REFRESH_TOKEN": MASK,
        "api_key": MASK,
        "private_key": MASK,
        "nested": {"deeper": [{"accessToken": MASK, "scope": "read"}]},
        "expires_in": 3600,
    },
    "oauth_app_id": None,
    "metadata": {"custom_credential_property": 42},
}

CASES: list[Case] = [
    # -- sync.created ---------------------------------------------------------------------
    Case(
        "created_minimal_defaults",
        [created(minute=3)],
        {
            "id": SYNC,
            "known": True,
            "provider": PROVIDER,
            "status": SyncStatus.ACTIVE,
            "collection_ids": (),
            "sync_frequency": "continuous",
            "metadata": {},
            "credential": None,
            "created_at": t(3),
            "updated_at": t(3),
            "last_event_at": t(3),
            "status_changed_at": None,
            "initial_backfill_completed_at": None,
            "deleted": False,
            "consecutive_failures": 0,
        },
    ),
    Case(
        "created_all_fields",
        [
            created(
                stream_id="stream-1",
                name="Choam - hubspot",
                org_id="org-1",
                collection_ids=["hubspot:contact", "hubspot:deal"],
                rate_limit={"allowed_requests": 1000, "interval": 60, "burst": 5},
                credential_id="cred-1",
                credential=FULL_CREDENTIAL,
                max_age_days=365,
                sync_frequency="4h",
                metadata={"custom_property": 42},
                created_at="2023-12-15 01:29:29",
                updated_at="2023-12-16T01:29:29+02:00",
            )
        ],
        {
            "stream_id": "stream-1",
            "name": "Choam - hubspot",
            "org_id": "org-1",
            "collection_ids": ("hubspot:contact", "hubspot:deal"),
            "rate_limit.allowed_requests": 1000,
            "rate_limit.interval": 60,
            "rate_limit.max_concurrent_requests": None,
            "credential_id": "cred-1",
            "credential": FULL_CREDENTIAL_MASKED,
            "max_age_days": 365,
            "sync_frequency": "4h",
            "metadata": {"custom_property": 42},
            "created_at": datetime(2023, 12, 15, 1, 29, 29, tzinfo=UTC),
            "updated_at": datetime(2023, 12, 15, 23, 29, 29, tzinfo=UTC),
        },
    ),
    Case(
        "created_masks_secret_names_any_case_any_depth",
        [created(credential={"a": {"b": [{"My_Secret": "x", "ok": 1}]}, "TOKEN": "y"})],
        {"credential": {"a": {"b": [{"My_Secret": MASK, "ok": 1}]}, "TOKEN": MASK}},
    ),
    Case(
        "created_disabled_sets_status_changed_at",
        [created(minute=2, status="disabled")],
        {"status": SyncStatus.DISABLED, "status_changed_at": t(2)},
    ),
    Case(
        "created_with_matching_id",
        [ev(EventType.SYNC_CREATED, {"id": SYNC, "provider": PROVIDER})],
        {"id": SYNC, "known": True},
    ),
    Case(
        "created_twice_overwrites_fields_keeps_created_at",
        [created(minute=0, name="one"), created(minute=5, name="two")],
        {"name": "two", "created_at": t(0), "updated_at": t(5)},
    ),
    # -- sync.updated ---------------------------------------------------------------------
    Case(
        "updated_nested_merge_and_null_removes",
        [
            created(metadata={"a": {"b": 1, "c": 2}, "keep": True}, name="n"),
            updated({"metadata": {"a": {"b": 10, "c": None, "d": [1]}}, "name": None}),
        ],
        {"metadata": {"a": {"b": 10, "d": [1]}, "keep": True}, "name": None},
    ),
    Case(
        "updated_arrays_replace",
        [created(collection_ids=["c1", "c2"]), updated({"collection_ids": ["c3"]})],
        {"collection_ids": ("c3",)},
    ),
    Case(
        "updated_removes_object_field",
        [created(rate_limit={"allowed_requests": 5}), updated({"rate_limit": None})],
        {"rate_limit": None},
    ),
    Case(
        "updated_merges_into_rate_limit",
        [
            created(rate_limit={"allowed_requests": 5, "interval": 60}),
            updated({"rate_limit": {"interval": 30}}),
        ],
        {"rate_limit.allowed_requests": 5, "rate_limit.interval": 30},
    ),
    Case(
        "updated_masks_after_patch",
        [
            created(credential={"user": "u", "password": "old"}),
            updated({"credential": {"new_api_key": "k", "nested": {"token": "t"}}}),
        ],
        {
            "credential": {
                "user": "u",
                "password": MASK,
                "new_api_key": MASK,
                "nested": {"token": MASK},
            }
        },
    ),
    Case(
        "updated_at_is_event_time",
        [created(minute=0), updated({"name": "renamed"}, minute=7)],
        {"name": "renamed", "created_at": t(0), "updated_at": t(7), "last_event_at": t(7)},
    ),
    Case(
        "updated_at_from_patch_wins",
        [created(minute=0), updated({"updated_at": "2024-02-01T00:00:00Z"}, minute=7)],
        {"updated_at": datetime(2024, 2, 1, tzinfo=UTC)},
    ),
    Case(
        "updated_status_disabled",
        [created(), updated({"status": "disabled"}, minute=4)],
        {"status": SyncStatus.DISABLED, "status_changed_at": t(4)},
    ),
    Case(
        "updated_status_active_clears_disabled_reason",
        [
            created(),
            simple(EventType.SYNC_DISABLED, 1, reason="maintenance"),
            updated({"status": "active"}, minute=4),
        ],
        {"status": SyncStatus.ACTIVE, "disabled_reason": None, "status_changed_at": t(4)},
    ),
    Case(
        "updated_keeps_unpatched_fields",
        [created(org_id="org-1", sync_frequency="4h"), updated({"name": "x"})],
        {"org_id": "org-1", "sync_frequency": "4h", "provider": PROVIDER},
    ),
    # -- sync.disabled / sync.enabled ----------------------------------------------------
    Case(
        "disabled_with_reason",
        [created(), simple(EventType.SYNC_DISABLED, 1, reason="maintenance")],
        {
            "status": SyncStatus.DISABLED,
            "disabled_reason": "maintenance",
            "status_changed_at": t(1),
        },
    ),
    Case(
        "disabled_twice_keeps_first_change_time",
        [created(), simple(EventType.SYNC_DISABLED, 1), simple(EventType.SYNC_DISABLED, 2)],
        {"status": SyncStatus.DISABLED, "status_changed_at": t(1), "last_event_at": t(2)},
    ),
    Case(
        "enabled_after_disabled",
        [
            created(),
            simple(EventType.SYNC_DISABLED, 1, reason="x"),
            simple(EventType.SYNC_ENABLED, 3),
        ],
        {"status": SyncStatus.ACTIVE, "disabled_reason": None, "status_changed_at": t(3)},
    ),
    Case(
        "enabled_while_active_changes_nothing",
        [created(), simple(EventType.SYNC_ENABLED, 3)],
        {"status": SyncStatus.ACTIVE, "status_changed_at": None},
    ),
    Case(
        "disabled_and_enabled_update_the_sync",
        [created(minute=0), simple(EventType.SYNC_DISABLED, 2), simple(EventType.SYNC_ENABLED, 5)],
        {"updated_at": t(5), "status_changed_at": t(5)},
    ),
    Case(
        "late_older_enable_after_a_disable_changes_nothing",
        [created(), simple(EventType.SYNC_DISABLED, 10), simple(EventType.SYNC_ENABLED, 5)],
        {"status": SyncStatus.DISABLED, "status_changed_at": t(10), "updated_at": t(10)},
    ),
    Case(
        "late_older_disable_after_an_enable_that_changed_nothing",
        [created(), simple(EventType.SYNC_ENABLED, 7), simple(EventType.SYNC_DISABLED, 5)],
        {"status": SyncStatus.ACTIVE, "status_changed_at": None},
    ),
    Case(
        "late_older_enable_after_a_disable_that_changed_nothing",
        [
            created(status="disabled"),
            simple(EventType.SYNC_DISABLED, 5),
            simple(EventType.SYNC_ENABLED, 3),
        ],
        {"status": SyncStatus.DISABLED},
    ),
    Case(
        "late_older_disable_after_an_update_of_status",
        [created(), updated({"status": "active"}, minute=3), simple(EventType.SYNC_DISABLED, 2)],
        {"status": SyncStatus.ACTIVE},
    ),
    Case(
        "late_older_update_of_status_applies_all_but_the_status",
        [
            created(),
            simple(EventType.SYNC_DISABLED, 2),
            updated({"status": "active", "name": "n"}, minute=1),
        ],
        {"status": SyncStatus.DISABLED, "status_changed_at": t(2), "name": "n"},
    ),
    Case(
        "late_created_after_a_disable_keeps_it_disabled",
        [simple(EventType.SYNC_DISABLED, 2), created(minute=1)],
        {"status": SyncStatus.DISABLED, "known": True},
    ),
    Case(
        "late_events_of_a_deleted_sync_skip_the_one_created_again",
        [
            created(),
            simple(EventType.SYNC_DISABLED, 2),
            simple(EventType.SYNC_DELETED, 3),
            created(minute=4),
            simple(EventType.SYNC_DISABLED, 2.5),
            simple(EventType.CREDENTIAL_FAILED, 2.5, http_status=401),
        ],
        {"status": SyncStatus.ACTIVE, "credential_status": CredentialStatus.VALID},
        [A, A, A, A, IGN, IGN],
    ),
    Case(
        "late_created_of_a_deleted_sync_does_not_bring_it_back",
        [created(minute=1), simple(EventType.SYNC_DELETED, 5), created(minute=1)],
        {"deleted": True},
        [A, A, IGN],
    ),
    Case(
        "late_disable_does_not_move_updated_at_back",
        [created(), updated({"name": "n"}, minute=20), simple(EventType.SYNC_DISABLED, 15)],
        {"status": SyncStatus.DISABLED, "status_changed_at": t(15), "updated_at": t(20)},
    ),
    Case(
        "disabled_when_disabled_keeps_updated_at",
        [created(minute=0), simple(EventType.SYNC_DISABLED, 2), simple(EventType.SYNC_DISABLED, 4)],
        {"updated_at": t(2), "last_event_at": t(4)},
    ),
    # -- sync.deleted ---------------------------------------------------------------------
    Case(
        "deleted_is_a_tombstone",
        [
            created(name="n"),
            simple(EventType.RUN_FAILED, 1, run_id="r", error={"code": "c", "message": "m"}),
            _deleted,
        ],
        {
            "deleted": True,
            "deleted_at": t(5),
            "name": None,
            "provider": None,
            "consecutive_failures": 0,
            "last_run": None,
        },
    ),
    Case(
        "events_after_delete_ignored",
        [
            created(),
            simple(EventType.SYNC_DELETED, 1),
            simple(EventType.RUN_STARTED, 2, run_id="r"),
            updated({"name": "zombie"}, minute=3),
            simple(EventType.SYNC_DELETED, 4),
        ],
        {
            "deleted": True,
            "deleted_at": t(1),
            "last_run": None,
            "name": None,
            "last_event_at": t(1),
        },
        [A, A, IGN, IGN, IGN],
    ),
    Case(
        "created_after_delete_recreates",
        [
            created(name="old"),
            run_failed(1),
            simple(EventType.SYNC_DELETED, 2),
            created(minute=3, name="new"),
        ],
        {
            "deleted": False,
            "known": True,
            "name": "new",
            "created_at": t(3),
            "consecutive_failures": 0,
            "last_run": None,
        },
    ),
    Case(
        "delete_redelivered_is_duplicate",
        [created(), _deleted, _deleted],
        {"deleted": True},
        [A, A, D],
    ),
    # -- runs -----------------------------------------------------------------------------
    Case(
        "run_started",
        [created(), simple(EventType.RUN_STARTED, 1, run_id="r1")],
        {
            "last_run.run_id": "r1",
            "last_run.started_at": t(1),
            "last_run.finished_at": None,
            "last_run.succeeded": None,
            "first_activity_at": t(1),
        },
    ),
    Case(
        "run_succeeded",
        [
            created(),
            simple(EventType.RUN_STARTED, 1, run_id="r1"),
            run_succeeded(2, records_upserted=10, records_deleted=2, duration_ms=60000),
        ],
        {
            "last_run.run_id": "r1",
            "last_run.started_at": t(1),
            "last_run.finished_at": t(2),
            "last_run.succeeded": True,
            "last_run.records_upserted": 10,
            "last_run.records_deleted": 2,
            "last_run.duration_ms": 60000,
            "last_success_at": t(2),
            "consecutive_failures": 0,
            "runs_succeeded": 1,
            "first_activity_at": t(1),
        },
    ),
    Case(
        "run_succeeded_for_another_run",
        [created(), simple(EventType.RUN_STARTED, 1, run_id="r1"), run_succeeded(2, run_id="r2")],
        {"last_run.run_id": "r2", "last_run.started_at": None, "last_success_at": t(2)},
    ),
    Case(
        "run_failures_count_up",
        [created(), run_failed(1), run_failed(2, run_id="r2"), run_failed(3, code="auth")],
        {
            "consecutive_failures": 3,
            "runs_failed": 3,
            "last_failure_at": t(3),
            "last_success_at": None,
            "last_run.succeeded": False,
            "last_run.error": RunError(
                code="auth", message="boom", http_status=500, retryable=True
            ),
        },
    ),
    Case(
        "run_success_resets_failures",
        [created(), run_failed(1), run_failed(2), run_succeeded(3), run_failed(4)],
        {
            "consecutive_failures": 1,
            "runs_failed": 3,
            "runs_succeeded": 1,
            "last_success_at": t(3),
            "last_failure_at": t(4),
        },
    ),
    Case(
        "run_success_clears_error",
        [created(), run_failed(1), run_succeeded(2)],
        {"consecutive_failures": 0, "last_run.error": None, "last_run.succeeded": True},
    ),
    Case(
        "last_error_outlives_the_retry_that_starts",
        [created(), run_failed(1, code="auth"), simple(EventType.RUN_STARTED, 2, run_id="r2")],
        {"last_error.code": "auth", "last_run.run_id": "r2", "last_run.error": None},
    ),
    Case(
        "last_error_cleared_by_a_success",
        [created(), run_failed(1), run_succeeded(2, run_id="r2")],
        {"last_error": None, "consecutive_failures": 0},
    ),
    Case(
        "last_error_is_the_latest_failure_s",
        [created(), run_failed(5, run_id="r2", code="new"), run_failed(3, code="old")],
        {"last_error.code": "new", "consecutive_failures": 2},
    ),
    # Event times out of log order (a late delivery): "last" means latest, and a success
    # resets only the failures before it.
    Case(
        "late_older_success_does_not_move_last_success_back",
        [created(), run_succeeded(20, run_id="r2"), run_succeeded(5, run_id="r1")],
        {
            "last_success_at": t(20),
            "runs_succeeded": 2,
            "last_run.run_id": "r2",
            "last_event_at": t(20),
        },
    ),
    Case(
        "late_failure_from_before_the_success_is_not_in_a_row",
        [created(), run_succeeded(5, run_id="r2"), run_failed(4, run_id="r1")],
        {
            "consecutive_failures": 0,
            "runs_failed": 1,
            "last_failure_at": t(4),
            "last_run.run_id": "r2",
            "last_run.succeeded": True,
        },
    ),
    Case(
        "late_success_from_before_the_failures_does_not_reset_them",
        [created(), run_failed(6, run_id="r2"), run_failed(7, run_id="r3"), run_succeeded(5)],
        {"consecutive_failures": 2, "last_success_at": t(5), "last_run.run_id": "r3"},
    ),
    Case(
        "late_success_within_the_streak_keeps_only_the_failures_after_it",
        [
            created(),
            run_failed(1, run_id="r1"),
            run_failed(2, run_id="r2"),
            run_failed(3, run_id="r3", code="last"),
            run_succeeded(2.5, run_id="r9"),
        ],
        {
            "consecutive_failures": 1,
            "failures_at": (t(3),),
            "last_error.code": "last",
            "last_success_at": t(2.5),
            "last_run.run_id": "r3",
        },
    ),
    Case(
        "failures_in_a_row_count_the_same_in_any_delivery_order",
        [
            created(),
            run_failed(3, run_id="r3"),
            run_succeeded(2.5, run_id="r9"),
            run_failed(1, run_id="r1"),
            run_failed(2, run_id="r2"),
        ],
        {"consecutive_failures": 1, "failures_at": (t(3),), "runs_failed": 3},
    ),
    Case(
        "run_end_stamped_before_its_own_start_still_ends_it",
        [
            created(),
            simple(EventType.RUN_STARTED, 5, run_id="r1"),
            run_failed(4.99, run_id="r1"),
        ],
        {"last_run.started_at": t(5), "last_run.finished_at": t(4.99), "last_run.succeeded": False},
    ),
    Case(
        "failure_at_the_same_time_as_the_success_counts",
        [created(), run_succeeded(5, run_id="r1"), run_failed(5, run_id="r2")],
        {"consecutive_failures": 1, "last_run.run_id": "r2"},
    ),
    Case(
        "late_start_of_the_run_shown_fills_its_start",
        [created(), run_succeeded(5, run_id="r1"), simple(EventType.RUN_STARTED, 3, run_id="r1")],
        {"last_run.started_at": t(3), "last_run.finished_at": t(5), "first_activity_at": t(3)},
    ),
    Case(
        "late_start_of_an_older_run_keeps_the_run_shown",
        [created(), run_succeeded(5, run_id="r2"), simple(EventType.RUN_STARTED, 3, run_id="r1")],
        {"last_run.run_id": "r2", "last_run.succeeded": True, "first_activity_at": t(3)},
    ),
    # -- credential -----------------------------------------------------------------------
    Case(
        "credential_failed",
        [created(), simple(EventType.CREDENTIAL_FAILED, 1, http_status=401, message="expired")],
        {
            "credential_status": CredentialStatus.FAILED,
            "credential_failed_at": t(1),
            "credential_problem.http_status": 401,
            "credential_problem.message": "expired",
        },
    ),
    Case(
        "credential_recovered",
        [
            created(),
            simple(EventType.CREDENTIAL_FAILED, 1, http_status=401),
            simple(EventType.CREDENTIAL_RECOVERED, 2),
        ],
        {"credential_status": CredentialStatus.VALID, "credential_problem": None},
    ),
    Case(
        "late_recovery_from_before_the_failure_changes_nothing",
        [
            created(),
            simple(EventType.CREDENTIAL_FAILED, 10, http_status=401),
            simple(EventType.CREDENTIAL_RECOVERED, 5),
        ],
        {"credential_status": CredentialStatus.FAILED, "credential_failed_at": t(10)},
    ),
    Case(
        "late_older_failure_neither_moves_the_failure_back_nor_lets_an_older_recovery_in",
        [
            created(),
            simple(EventType.CREDENTIAL_FAILED, 5, http_status=401, message="new"),
            simple(EventType.CREDENTIAL_FAILED, 3, http_status=403, message="old"),
            simple(EventType.CREDENTIAL_RECOVERED, 4),
        ],
        {
            "credential_status": CredentialStatus.FAILED,
            "credential_failed_at": t(5),
            "credential_problem.message": "new",
        },
    ),
    Case(
        "late_failure_from_before_the_latest_recovery_changes_nothing",
        [
            created(),
            simple(EventType.CREDENTIAL_RECOVERED, 7),
            simple(EventType.CREDENTIAL_FAILED, 5, http_status=401),
        ],
        {"credential_status": CredentialStatus.VALID, "credential_recovered_at": t(7)},
    ),
    # -- rate limiting --------------------------------------------------------------------
    Case(
        "rate_limited",
        [created(), simple(EventType.RATE_LIMITED, 4, retry_after_seconds=30)],
        {"last_rate_limited_at": t(4), "retry_after_seconds": 30.0},
    ),
    Case(
        "rate_limited_fractional_latest_wins",
        [
            created(),
            simple(EventType.RATE_LIMITED, 4, retry_after_seconds=30),
            simple(EventType.RATE_LIMITED, 5, retry_after_seconds=1.5),
        ],
        {"last_rate_limited_at": t(5), "retry_after_seconds": 1.5},
    ),
    Case(
        "rate_limited_late_older_one_changes_nothing",
        [
            created(),
            simple(EventType.RATE_LIMITED, 5, retry_after_seconds=1.5),
            simple(EventType.RATE_LIMITED, 4, retry_after_seconds=30),
        ],
        {"last_rate_limited_at": t(5), "retry_after_seconds": 1.5},
    ),
    # -- backfill -------------------------------------------------------------------------
    Case(
        "backfill_started_defaults_to_sync_collections",
        [created(collection_ids=["c1", "c2"]), started(1)],
        {
            "backfill.*": ["c1", "c2"],
            "backfill.c1.records_synced": 0,
            "backfill.c1.ratio": None,
            "backfill_started_at": t(1),
            "last_backfill_event_at": t(1),
            "first_activity_at": t(1),
        },
    ),
    Case(
        "backfill_started_explicit_collections",
        [created(collection_ids=["c1", "c2"]), started(1, "c2")],
        {"backfill.*": ["c2"]},
    ),
    Case(
        "backfill_progress_and_ratio",
        [
            created(collection_ids=["c1"]),
            started(1),
            progressed(2, "c1", 50, 200),
            progressed(3, "c1", 100),
        ],
        {
            "backfill.c1.records_synced": 100,
            "backfill.c1.estimated_total": 200,
            "backfill.c1.ratio": 0.5,
            "backfill.c1.completed_at": None,
            "last_backfill_event_at": t(3),
            "backfill_started_at": t(1),
            "initial_backfill_completed_at": None,
        },
    ),
    Case(
        "backfill_late_older_progress_does_not_move_its_last_event_back",
        [
            created(collection_ids=["c1", "c2"]),
            started(1),
            progressed(40, "c1", 50),
            progressed(5, "c2", 10),
        ],
        {"last_backfill_event_at": t(40), "backfill.c2.records_synced": 10},
    ),
    Case(
        "backfill_ratio_capped_and_unknown_total",
        [
            created(collection_ids=["c1", "c2"]),
            progressed(1, "c1", 300, 200),
            progressed(1, "c2", 5),
        ],
        {"backfill.c1.ratio": 1.0, "backfill.c2.ratio": None, "backfill_started_at": None},
    ),
    Case(
        "backfill_one_of_two_completed",
        [created(collection_ids=["c1", "c2"]), started(1), completed(2, "c1", 42)],
        {
            "backfill.c1.completed_at": t(2),
            "backfill.c1.records_synced": 42,
            "backfill.c1.ratio": 1.0,
            "backfill.c2.ratio": None,
            "initial_backfill_completed_at": None,
            "backfill_complete": False,
        },
    ),
    Case(
        "backfill_completed_at_time_of_last_collection",
        [
            created(collection_ids=["c1", "c2"]),
            started(1),
            completed(2, "c2"),
            progressed(3, "c1", 5, 10),
            completed(4, "c1"),
        ],
        {"initial_backfill_completed_at": t(4), "backfill_complete": True},
    ),
    Case(
        "backfill_completion_never_changes",
        [
            created(collection_ids=["c1"]),
            started(1),
            completed(2, "c1"),
            started(3),
            completed(4, "c1"),
            updated({"collection_ids": ["c1", "c9"]}, minute=5),
            completed(6, "c9"),
        ],
        {
            "initial_backfill_completed_at": t(2),
            "backfill.c1.completed_at": t(4),
            "backfill.c9.completed_at": t(6),
        },
    ),
    Case(
        "backfill_other_collection_does_not_complete",
        [created(collection_ids=["c1"]), started(1, "c1", "x"), completed(2, "x")],
        {"initial_backfill_completed_at": None},
    ),
    Case(
        "backfill_restart_before_completion_needs_all_again",
        [
            created(collection_ids=["c1", "c2"]),
            started(1),
            completed(2, "c1"),
            started(3),
            completed(4, "c2"),
        ],
        {"initial_backfill_completed_at": None, "backfill.c1.completed_at": None},
    ),
    Case(
        "backfill_completed_without_started",
        [created(collection_ids=["c1"]), completed(2, "c1")],
        {"initial_backfill_completed_at": t(2), "backfill_started_at": None},
    ),
    Case(
        "backfill_without_sync_collections_uses_started_ones",
        [created(), started(1, "x", "y"), completed(2, "x"), completed(3, "y")],
        {"initial_backfill_completed_at": t(3)},
    ),
    Case(
        "backfill_update_dropping_pending_collection_completes_at_last_completion",
        [
            created(collection_ids=["c1", "c2"]),
            completed(2, "c1"),
            updated({"collection_ids": ["c1"]}, minute=5),
        ],
        {"initial_backfill_completed_at": t(2)},
    ),
    # -- events before sync.created -------------------------------------------------------
    Case(
        "skeleton_before_created",
        [simple(EventType.RUN_STARTED, 1, run_id="r1"), run_failed(2)],
        {
            "id": SYNC,
            "known": False,
            "provider": None,
            "created_at": None,
            "consecutive_failures": 1,
            "last_run.run_id": "r1",
        },
    ),
    Case(
        "created_fills_skeleton",
        [run_failed(1), simple(EventType.CREDENTIAL_FAILED, 2), created(minute=3, name="n")],
        {
            "known": True,
            "name": "n",
            "provider": PROVIDER,
            "created_at": t(3),
            "consecutive_failures": 1,
            "first_activity_at": t(1),
            "credential_status": CredentialStatus.FAILED,
        },
    ),
    Case(
        "skeleton_backfill_waits_for_sync_collections",
        [
            completed(1, "c1"),
            completed(2, "c2"),
            created(minute=3, collection_ids=["c1", "c2", "c3"]),
            completed(4, "c3"),
        ],
        {"initial_backfill_completed_at": t(4), "known": True},
    ),
    Case(
        "skeleton_backfill_completed_before_created",
        [completed(1, "c1"), completed(2, "c2"), created(minute=3, collection_ids=["c1", "c2"])],
        {"initial_backfill_completed_at": t(2)},
    ),
    # -- provider incidents ---------------------------------------------------------------
    Case(
        "incident_opened",
        [incident(EventType.PROVIDER_INCIDENT_OPENED, 1, "inc-1", notes=["degraded", "api"])],
        {
            "name": PROVIDER,
            "incidents.*": ["inc-1"],
            "incidents.inc-1.opened_at": t(1),
            "incidents.inc-1.notes": ("degraded", "api"),
            "last_event_at": t(1),
        },
    ),
    Case(
        "incident_resolved",
        [
            incident(EventType.PROVIDER_INCIDENT_OPENED, 1, "inc-1"),
            incident(EventType.PROVIDER_INCIDENT_OPENED, 2, "inc-2"),
            incident(EventType.PROVIDER_INCIDENT_RESOLVED, 3, "inc-1"),
        ],
        {"incidents.*": ["inc-2"], "incidents.inc-2.opened_at": t(2), "last_event_at": t(3)},
    ),
    Case(
        "incident_resolved_unknown_is_harmless",
        [incident(EventType.PROVIDER_INCIDENT_RESOLVED, 1, "nope")],
        {"name": PROVIDER, "incidents": {}},
    ),
    Case(
        "incident_reopened_keeps_latest",
        [
            incident(EventType.PROVIDER_INCIDENT_OPENED, 1, "inc-1", notes=["a"]),
            incident(EventType.PROVIDER_INCIDENT_OPENED, 2, "inc-1", notes=["b"]),
        ],
        {"incidents.inc-1.notes": ("b",), "incidents.inc-1.opened_at": t(2)},
    ),
    # -- unknown types --------------------------------------------------------------------
    Case(
        "unknown_type_ignored",
        [created(name="n"), ev("sync.teleported", {"to": "mars"}, minute=9)],
        {"name": "n", "last_event_at": t(0)},
        [A, IGN],
    ),
    # -- idempotence ----------------------------------------------------------------------
    Case(
        "same_event_id_twice_is_duplicate",
        [created(), _dup_failure, _dup_failure],
        {"consecutive_failures": 1, "runs_failed": 1},
        [A, A, D],
    ),
    Case(
        "same_id_different_body_is_duplicate",
        [
            created(),
            run_failed(1),
            ev(
                EventType.RUN_FAILED,
                {"run_id": "r", "error": {"code": "c", "message": "m"}},
                minute=2,
                event_id="evt-fixed",
            ),
            ev(EventType.RUN_SUCCEEDED, {"run_id": "r"}, minute=3, event_id="evt-fixed"),
        ],
        {"consecutive_failures": 2, "last_success_at": None},
        [A, A, A, D],
    ),
    Case(
        "position_replay_same_or_lower_is_duplicate",
        [
            (_e_pos, Position(0, 10)),
            (_e_pos2, Position(0, 10)),
            (_e_pos3, Position(0, 9)),
            (_e_pos4, Position(0, 11)),
        ],
        {"last_run.run_id": "r4", "known": False},
        [A, D, D, A],
    ),
    Case(
        "position_other_partition_applies",
        [(_e_pos, Position(0, 10)), (_e_pos2, Position(1, 3))],
        {"last_run.run_id": "r2"},
        [A, A],
    ),
    Case(
        "stale_sequence",
        [
            _seq_created,
            seq(EventType.RUN_STARTED, 5, run_id="same"),
            seq(EventType.RUN_STARTED, 3, run_id="lower"),
            seq(EventType.RUN_STARTED, 6, run_id="higher"),
            seq(EventType.RUN_STARTED, 6, run_id="again"),
        ],
        {"last_run.run_id": "higher", "applied.sequence": 6},
        [A, S, S, A, S],
    ),
    Case(
        "no_sequence_always_applies",
        [
            _seq_created,
            seq(EventType.RUN_STARTED, None, run_id="a"),
            seq(EventType.RUN_STARTED, None, run_id="b"),
        ],
        {"last_run.run_id": "b", "applied.sequence": 5},
    ),
    Case(
        "duplicate_wins_over_stale",
        [_seq_created, _seq_created],
        {"known": True},
        [A, D],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fold_table(case: Case) -> None:
    view, outcomes = fold(case.events)
    assert outcomes == case.expected_outcomes()
    assert view is not None
    for path, expected in case.facts.items():
        assert resolve(view, path) == expected, path


def test_every_event_type_is_covered_by_the_table() -> None:
    seen = {
        (item[0] if isinstance(item, tuple) else item).type
        for case in CASES
        for item in case.events
    }
    assert {k.value for k in EventType} <= seen
    assert seen - {k.value for k in EventType}  # and at least one unknown type


def test_case_names_unique() -> None:
    names = [c.name for c in CASES]
    assert len(names) == len(set(names))


# -- idempotence ------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_replaying_the_whole_log_is_a_noop(case: Case) -> None:
    view, _ = fold(case.events)
    again, outcomes = fold(case.events, view)
    assert again == view
    assert set(outcomes) <= {D, S, IGN}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_duplicate_returns_the_very_same_view(case: Case) -> None:
    view: View | None = None
    for item in case.events:
        event, at = item if isinstance(item, tuple) else (item, None)
        result = step(view, event, at)
        if result.outcome is A:
            again = step(result.view, event, at)
            assert again.outcome is D
            assert again.view is result.view
        view = result.view


def test_replay_of_a_long_log_with_positions_is_a_noop() -> None:
    """Beyond the remembered event ids, positions still recognise a replay."""
    events = [created(collection_ids=["c1"])] + [
        run_failed(i, run_id=f"r{i}") for i in range(1, 40)
    ]
    log = [(e, Position(2, 100 + i)) for i, e in enumerate(events)]
    view, _ = fold(log)
    again, outcomes = fold(log, view)
    assert again == view
    assert set(outcomes) == {D}
    assert isinstance(view, SyncView) and view.consecutive_failures == 39


def test_an_update_drops_a_stored_value_a_newer_rule_refuses() -> None:
    """A view stored before a rule tightened (a `0m` frequency, now dead-lettered) still takes
    updates: the stale value falls back to its default, not the whole patch to the floor."""
    view = apply(None, created(name="old"))
    assert isinstance(view, SyncView)
    legacy = view.model_copy(update={"sync_frequency": "0m"})
    new = apply(legacy, updated({"name": "new", "org_id": "o2"}, minute=2))
    assert isinstance(new, SyncView)
    assert (new.name, new.org_id, new.sync_frequency) == ("new", "o2", "continuous")
    fixed = apply(legacy, updated({"sync_frequency": "4h"}, minute=2))
    assert isinstance(fixed, SyncView) and fixed.sync_frequency == "4h"


def test_a_streak_stored_without_its_times_is_never_undercounted() -> None:
    """Views stored before streaks kept times (3 failures, no times): failures they do not
    have times for may be newer than a late one, so a late success keeps the count."""
    view = apply(None, created())
    assert isinstance(view, SyncView)
    stored = view.model_copy(
        update={"consecutive_failures": 3, "last_failure_at": t(30), "failures_at": ()}
    )
    after, _ = fold([run_failed(5, run_id="late"), run_succeeded(7, run_id="ok")], stored)
    assert isinstance(after, SyncView)
    assert after.consecutive_failures >= 3  # the 3 stored ones may all be after the success
    fixed = apply(after, run_succeeded(31, run_id="ok2"))
    assert isinstance(fixed, SyncView)
    assert (fixed.consecutive_failures, fixed.failures_at, fixed.last_error) == (0, (), None)


def test_a_stored_streak_stays_untimed_under_many_late_failures() -> None:
    """Its one failure at 100 is unknown to `failures_at`: ten late older failures must not
    make the kept times look complete, or a success at 50 would count 0 instead of 1."""
    view = apply(None, created())
    assert isinstance(view, SyncView)
    stored = view.model_copy(update={"consecutive_failures": 1, "last_failure_at": t(100)})
    late = [run_failed(m, run_id=f"r{m}") for m in range(1, 11)]
    after, _ = fold([*late, run_succeeded(50, run_id="ok")], stored)
    assert isinstance(after, SyncView) and after.consecutive_failures >= 1


def test_a_streak_longer_than_its_kept_times_counts_exactly_past_its_oldest_kept() -> None:
    failures = [run_failed(m, run_id=f"r{m}") for m in range(1, 13)]  # 12 in a row
    view, _ = fold([created(), *failures])
    assert isinstance(view, SyncView) and view.consecutive_failures == 12
    assert view.failures_at == tuple(t(m) for m in range(3, 13))  # the newest 10
    later, _ = fold([run_succeeded(8.5, run_id="late")], view)
    assert isinstance(later, SyncView) and later.consecutive_failures == 4  # 9, 10, 11, 12


def test_unknown_type_leaves_the_view_unchanged() -> None:
    view = apply(None, created(name="n"))
    assert view is not None
    before = view.model_dump()
    unknown = ev("sync.teleported", {"to": "mars"}, minute=9, sequence=999)
    result = step(view, unknown, Position(0, 5))
    assert result == Step(view, IGN)
    assert result.view is view
    assert view.model_dump() == before
    assert isinstance(unknown, UnknownEvent)
    assert step(None, unknown) == Step(None, IGN)


def test_events_after_delete_are_not_recorded() -> None:
    view, _ = fold([created(), simple(EventType.SYNC_DELETED, 1)])
    result = step(view, simple(EventType.RUN_STARTED, 2, run_id="r"))
    assert result.outcome is IGN
    assert result.view is view


def test_apply_is_step_view() -> None:
    event = created(name="n")
    assert apply(None, event) == step(None, event).view


def test_provider_event_makes_a_provider_view() -> None:
    view = apply(None, incident(EventType.PROVIDER_INCIDENT_OPENED, 1, "i"))
    assert isinstance(view, ProviderView)


# -- purity -----------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_step_never_mutates_its_inputs(case: Case) -> None:
    view: View | None = None
    for item in case.events:
        event, at = item if isinstance(item, tuple) else (item, None)
        view_before = None if view is None else view.model_dump()
        event_before = event.model_dump()
        result = step(view, event, at)
        assert (None if view is None else view.model_dump()) == view_before
        assert event.model_dump() == event_before
        view = result.view


def _datetimes(value: Any) -> set[datetime]:
    if isinstance(value, datetime):
        return {value}
    if isinstance(value, str):  # a time inside a merge patch is still a string
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return set()
        return {parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)}
    if isinstance(value, dict):
        return set().union(*(_datetimes(v) for v in value.values())) if value else set()
    if isinstance(value, list | tuple):
        return set().union(*(_datetimes(v) for v in value)) if value else set()
    return set()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_view_times_come_from_events_only(case: Case) -> None:
    """No wall-clock time leaks in: every time in the view is one the events carried."""
    events = [item[0] if isinstance(item, tuple) else item for item in case.events]
    carried = set().union(*(_datetimes(e.model_dump()) for e in events))
    view, _ = fold(case.events)
    assert view is not None
    assert _datetimes(view.model_dump()) <= carried


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fold_is_deterministic(case: Case) -> None:
    first, first_outcomes = fold(case.events)
    second, second_outcomes = fold(case.events)
    assert first == second
    assert first_outcomes == second_outcomes
    assert first is not None and second is not None
    assert first.model_dump_json() == second.model_dump_json()


# -- property: step never raises ---------------------------------------------------------

_ids_st = st.sampled_from(["c1", "c2", "c3"])
_runs = st.sampled_from(["r1", "r2"])
_text = st.text(max_size=8)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | _text,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["a", "token", "Secret", "user"]), inner, max_size=3)
    ),
    max_leaves=8,
)
_credential = st.dictionaries(
    st.sampled_from(["id", "password", "properties", "api_key", "note"]), _json, max_size=4
)
_fields: dict[str, st.SearchStrategy[Any]] = {
    "name": _text,
    "org_id": _text,
    "collection_ids": st.lists(_ids_st, unique=True, max_size=3),
    "status": st.sampled_from(["active", "disabled"]),
    "credential": _credential,
    "metadata": st.dictionaries(st.sampled_from(["a", "b"]), _json, max_size=2),
    "sync_frequency": st.sampled_from(["continuous", "4h", "30m"]),
    "rate_limit": st.fixed_dictionaries({}, optional={"allowed_requests": st.integers(0, 9)}),
    "max_age_days": st.integers(0, 400),
}
_patch_fields = {k: st.none() | v for k, v in _fields.items()}
_reason = st.fixed_dictionaries({}, optional={"reason": _text})

DATA: dict[str, st.SearchStrategy[Any]] = {
    EventType.SYNC_CREATED: st.fixed_dictionaries(
        {"provider": st.just(PROVIDER)}, optional=_fields
    ),
    EventType.SYNC_UPDATED: st.fixed_dictionaries({}, optional=_patch_fields),
    EventType.SYNC_DISABLED: _reason,
    EventType.SYNC_ENABLED: _reason,
    EventType.SYNC_DELETED: st.just({}),
    EventType.RUN_STARTED: st.fixed_dictionaries({"run_id": _runs}),
    EventType.RUN_SUCCEEDED: st.fixed_dictionaries(
        {"run_id": _runs},
        optional={"records_upserted": st.integers(0, 99), "duration_ms": st.integers(0, 99)},
    ),
    EventType.RUN_FAILED: st.fixed_dictionaries(
        {
            "run_id": _runs,
            "error": st.fixed_dictionaries(
                {"code": _text, "message": _text}, optional={"retryable": st.booleans()}
            ),
        }
    ),
    EventType.CREDENTIAL_FAILED: st.fixed_dictionaries(
        {}, optional={"http_status": st.integers(400, 599), "message": _text}
    ),
    EventType.CREDENTIAL_RECOVERED: st.just({}),
    EventType.RATE_LIMITED: st.fixed_dictionaries(
        {"retry_after_seconds": st.integers(0, 999) | st.floats(0, 999)}
    ),
    EventType.BACKFILL_STARTED: st.fixed_dictionaries(
        {}, optional={"collection_ids": st.lists(_ids_st, unique=True, max_size=3)}
    ),
    EventType.BACKFILL_PROGRESSED: st.fixed_dictionaries(
        {"collection_id": _ids_st, "records_synced": st.integers(0, 999)},
        optional={"estimated_total": st.integers(0, 999)},
    ),
    EventType.BACKFILL_COLLECTION_COMPLETED: st.fixed_dictionaries(
        {"collection_id": _ids_st, "records_synced": st.integers(0, 999)}
    ),
    EventType.PROVIDER_INCIDENT_OPENED: st.fixed_dictionaries(
        {"incident_id": st.sampled_from(["i1", "i2"])}, optional={"notes": st.lists(_text)}
    ),
    EventType.PROVIDER_INCIDENT_RESOLVED: st.fixed_dictionaries(
        {"incident_id": st.sampled_from(["i1", "i2"])}
    ),
    "sync.future.thing": _json,
}


@st.composite
def events(draw: st.DrawFn) -> Envelope:
    kind = draw(st.sampled_from(sorted(DATA)))
    subject = PROVIDER if kind.startswith("provider.") else SYNC
    return EVENT_ADAPTER.validate_python(
        cloudevent(
            kind,
            draw(DATA[kind]),
            minute=draw(st.integers(0, 600)),
            subject=subject,
            event_id=draw(st.sampled_from([f"e{i}" for i in range(30)])),
            sequence=draw(st.none() | st.integers(0, 30)),
        )
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(events(), st.none() | st.integers(0, 50)), max_size=25))
def test_step_never_raises_and_keeps_invariants(log: list[tuple[Envelope, int | None]]) -> None:
    views: dict[str, View | None] = {SYNC: None, PROVIDER: None}
    completed_at: datetime | None = None
    for event, offset in log:
        at = None if offset is None else Position(0, offset)
        before = views[event.subject]
        dump = None if before is None else before.model_dump()
        result = step(before, event, at)
        assert isinstance(result.outcome, Outcome)
        assert (None if before is None else before.model_dump()) == dump
        if result.outcome is not A:
            assert result.view is before
        else:
            assert step(result.view, event, at).outcome is D
        view = result.view
        views[event.subject] = view
        if isinstance(view, SyncView):
            assert view.consecutive_failures >= 0
            assert mask_secrets(view.credential) == view.credential
            if view.deleted or completed_at is None:
                completed_at = view.initial_backfill_completed_at
            else:
                assert view.initial_backfill_completed_at == completed_at  # set once, never moved


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(events(), max_size=40))
def test_replay_with_positions_is_a_noop(log: list[Envelope]) -> None:
    positioned = [(e, Position(0, i)) for i, e in enumerate(log)]
    sync_log = [p for p in positioned if p[0].subject == SYNC]
    provider_log = [p for p in positioned if p[0].subject == PROVIDER]
    for part in (sync_log, provider_log):
        view, _ = fold(part)
        again, outcomes = fold(part, view)
        assert again == view
        assert set(outcomes) <= {D, S, IGN}
