"""The fold: a pure function from (view, event) to view, so the view is a function of the log."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from pydantic import ValidationError

from monitor.enums import CredentialStatus, EventType, Outcome, SyncStatus
from monitor.events import (
    BackfillProgressed,
    BackfillStarted,
    CollectionCompleted,
    CredentialFailed,
    Empty,
    Envelope,
    IncidentOpened,
    IncidentResolved,
    RateLimited,
    SyncFields,
    event_type,
)
from monitor.patching import mask_secrets, merge_patch
from monitor.runs import activity, latest, run_failed, run_started, run_succeeded
from monitor.views import (
    Applied,
    CollectionProgress,
    CredentialProblem,
    Incident,
    ProviderView,
    SyncView,
    evolve,
)

View = SyncView | ProviderView
V = TypeVar("V", SyncView, ProviderView)

# The fields a `sync.created` sets and a `sync.updated` patches (the seed's own fields).
SEED_FIELDS = tuple(name for name in SyncFields.model_fields if name != "id")


@dataclass(frozen=True, slots=True)
class Position:
    """Where an event sits in the log; views remember it so a replay is a no-op."""

    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class Step:
    """The view after one event and what the event did to it."""

    view: View | None
    outcome: Outcome


def apply(view: View | None, event: Envelope, at: Position | None = None) -> View | None:
    """The next view; the same one when the event is a duplicate, stale or ignored."""
    return step(view, event, at).view


def step(view: View | None, event: Envelope, at: Position | None = None) -> Step:
    """Folds one event and says whether it was applied, a duplicate, stale or ignored."""
    kind = event_type(event)
    if kind is None:
        return Step(view, Outcome.IGNORED)
    if view is not None:
        skip = _skip(view.applied, event, at)
        if skip is not None:
            return Step(view, skip)
    if kind.is_provider_event:
        pview = view if isinstance(view, ProviderView) else ProviderView(name=event.subject)
        return Step(_record(_PROVIDER_HANDLERS[kind](pview, event), event, at), Outcome.APPLIED)
    sview = view if isinstance(view, SyncView) else None
    if sview is not None and _before_deletion(sview, kind, event.time):
        return Step(view, Outcome.IGNORED)
    if sview is None:
        sview = SyncView(id=event.subject, known=False)
    new = _SYNC_HANDLERS[kind](sview, event)
    return Step(_record(new, event, at), Outcome.APPLIED)


def _before_deletion(view: SyncView, kind: EventType, time: datetime) -> bool:
    """Events of a deleted sync, and those older than its deletion once it is created again
    (late ones of the sync that was deleted, a late `sync.created` of it included)."""
    if view.deleted_at is not None:
        return kind is not EventType.SYNC_CREATED or time < view.deleted_at
    return view.deleted_before is not None and time < view.deleted_before


def _skip(applied: Applied, event: Envelope, at: Position | None) -> Outcome | None:
    if at is not None and applied.replayed(at.partition, at.offset):
        return Outcome.DUPLICATE
    if applied.seen(event.id):
        return Outcome.DUPLICATE
    if applied.stale(event.sequence):
        return Outcome.STALE
    return None


def _record(view: V, event: Envelope, at: Position | None) -> V:
    applied = view.applied.record(
        event.id,
        event.sequence,
        at.partition if at else None,
        at.offset if at else None,
    )
    return evolve(
        view, **{"applied": applied, "last_event_at": latest(view.last_event_at, event.time)}
    )


def _data(event: Envelope) -> Any:
    return event.data  # type: ignore[attr-defined]


# -- sync events -------------------------------------------------------------------------


def _seed_fields(view: SyncView) -> dict[str, Any]:
    return view.model_dump(mode="json", include=set(SEED_FIELDS), exclude_none=True)


def _with_fields(
    view: SyncView,
    fields: SyncFields,
    time: datetime,
    updated_at: datetime | None,
    sets_status: bool = True,
) -> SyncView:
    values = {name: getattr(fields, name) for name in SEED_FIELDS}
    values["collection_ids"] = tuple(fields.collection_ids)
    values["credential"] = mask_secrets(fields.credential)
    values["created_at"] = fields.created_at or view.created_at or time
    values["updated_at"] = updated_at or latest(view.updated_at, time)
    if sets_status:
        seen = _status_seen(view)
        if seen is not None and time < seen:
            values["status"] = view.status  # older than the latest status event: it stands
        else:
            values["status_seen_at"] = time
    if values["status"] is not view.status:
        values["status_changed_at"] = time
        values["disabled_reason"] = None  # a reason belongs to the sync.disabled that set it
    return evolve(view, **values)


def _created(view: SyncView, event: Envelope) -> SyncView:
    fields: SyncFields = _data(event)
    if view.deleted:
        view = SyncView(id=view.id, applied=view.applied, deleted_before=view.deleted_at)
    view = evolve(view, known=True)
    view = _with_fields(view, fields, event.time, fields.updated_at)
    return _complete_backfill(view)


def _updated(view: SyncView, event: Envelope) -> SyncView:
    patch: dict[str, Any] = _data(event)
    merged = merge_patch(_seed_fields(view), patch)
    try:
        fields = SyncFields.model_validate(merged)
    except ValidationError as exc:
        # Decoding validates every patch, so only a stored value that predates a rule fails
        # (a `0m` frequency, say): it falls back to its default, not the whole update.
        stale = {str(e["loc"][0]) for e in exc.errors() if e["loc"]} - set(patch)
        try:
            fields = SyncFields.model_validate({k: v for k, v in merged.items() if k not in stale})
        except ValidationError:
            return view
    updated_at = fields.updated_at if "updated_at" in patch else None
    new = _with_fields(view, fields, event.time, updated_at, sets_status="status" in patch)
    return _complete_backfill(new)


def _disabled(view: SyncView, event: Envelope) -> SyncView:
    data: Empty = _data(event)
    return _set_status(view, SyncStatus.DISABLED, data.reason, event.time)


def _enabled(view: SyncView, event: Envelope) -> SyncView:
    return _set_status(view, SyncStatus.ACTIVE, None, event.time)


def _set_status(view: SyncView, status: SyncStatus, reason: str | None, time: datetime) -> SyncView:
    """A status change updates the sync, as a `sync.updated` of `status` does; one older than
    the last status event (changing or not), delivered late, changes nothing."""
    seen = _status_seen(view)
    if seen is not None and time < seen:
        return view
    changed = view.status is not status
    return evolve(
        view,
        **{
            "status": status,
            "disabled_reason": reason,
            "status_changed_at": time if changed else view.status_changed_at,
            "status_seen_at": time,
            "updated_at": latest(view.updated_at, time) if changed else view.updated_at,
        },
    )


def _status_seen(view: SyncView) -> datetime | None:
    """The time of the latest event that set the status (changing it or not)."""
    return _newest(view.status_changed_at, view.status_seen_at)


def _newest(*times: datetime | None) -> datetime | None:
    return max((t for t in times if t is not None), default=None)


def _deleted(view: SyncView, event: Envelope) -> SyncView:
    return SyncView(id=view.id, deleted_at=event.time, applied=view.applied)


def _credential_failed(view: SyncView, event: Envelope) -> SyncView:
    """The credential's state is that of its latest event by time: an older failure or
    recovery, delivered late, changes nothing."""
    data: CredentialFailed = _data(event)
    seen = _newest(view.credential_failed_at, view.credential_recovered_at)
    if seen is not None and event.time < seen:
        return view
    return evolve(
        view,
        **{
            "credential_status": CredentialStatus.FAILED,
            "credential_failed_at": event.time,
            "credential_problem": CredentialProblem(
                http_status=data.http_status, message=data.message
            ),
        },
    )


def _credential_recovered(view: SyncView, event: Envelope) -> SyncView:
    failed = view.credential_failed_at
    if failed is not None and event.time < failed:
        return view  # a recovery from before the latest failure, delivered late
    return evolve(
        view,
        **{
            "credential_status": CredentialStatus.VALID,
            "credential_problem": None,
            "credential_recovered_at": latest(view.credential_recovered_at, event.time),
        },
    )


def _rate_limited(view: SyncView, event: Envelope) -> SyncView:
    data: RateLimited = _data(event)
    if view.last_rate_limited_at is not None and event.time < view.last_rate_limited_at:
        return view  # an older rate limit: the later one already sets the window
    return evolve(
        view,
        **{
            "last_rate_limited_at": event.time,
            "retry_after_seconds": float(data.retry_after_seconds),
        },
    )


def _backfill_started(view: SyncView, event: Envelope) -> SyncView:
    data: BackfillStarted = _data(event)
    ids = data.collection_ids if data.collection_ids is not None else view.collection_ids
    backfill = {**view.backfill, **{cid: CollectionProgress() for cid in ids}}
    return activity(
        view,
        event.time,
        backfill=backfill,
        backfill_started_at=event.time,
        last_backfill_event_at=latest(view.last_backfill_event_at, event.time),
    )


def _progress(view: SyncView, collection_id: str) -> CollectionProgress:
    return view.backfill.get(collection_id) or CollectionProgress()


def _backfill_progressed(view: SyncView, event: Envelope) -> SyncView:
    data: BackfillProgressed = _data(event)
    old = _progress(view, data.collection_id)
    new = evolve(
        old,
        **{
            "records_synced": data.records_synced,
            "estimated_total": data.estimated_total
            if data.estimated_total is not None
            else old.estimated_total,
        },
    )
    return activity(
        view,
        event.time,
        backfill={**view.backfill, data.collection_id: new},
        last_backfill_event_at=latest(view.last_backfill_event_at, event.time),
    )


def _collection_completed(view: SyncView, event: Envelope) -> SyncView:
    data: CollectionCompleted = _data(event)
    new = evolve(
        _progress(view, data.collection_id),
        **{"records_synced": data.records_synced, "completed_at": event.time},
    )
    view = activity(
        view,
        event.time,
        backfill={**view.backfill, data.collection_id: new},
        last_backfill_event_at=latest(view.last_backfill_event_at, event.time),
    )
    return _complete_backfill(view, event.time)


def _complete_backfill(view: SyncView, time: datetime | None = None) -> SyncView:
    """Sets `initial_backfill_completed_at` once: when the last required collection completes.

    `time` is that of the completing `collection_completed` event; without one (a `sync.created`
    or `sync.updated` that finds every collection already complete) it is the latest completion.
    A skeleton (events before `sync.created`) does not know its collections yet, so it waits.
    """
    if view.initial_backfill_completed_at is not None or not view.known:
        return view
    required = set(view.collection_ids) or set(view.backfill)
    done = [p.completed_at for cid in required if (p := view.backfill.get(cid)) is not None]
    finished = [at for at in done if at is not None]
    if not required or len(finished) < len(required):
        return view
    return evolve(view, **{"initial_backfill_completed_at": time or max(finished)})


_SYNC_HANDLERS: dict[EventType, Callable[[SyncView, Envelope], SyncView]] = {
    EventType.SYNC_CREATED: _created,
    EventType.SYNC_UPDATED: _updated,
    EventType.SYNC_DISABLED: _disabled,
    EventType.SYNC_ENABLED: _enabled,
    EventType.SYNC_DELETED: _deleted,
    EventType.RUN_STARTED: run_started,
    EventType.RUN_SUCCEEDED: run_succeeded,
    EventType.RUN_FAILED: run_failed,
    EventType.CREDENTIAL_FAILED: _credential_failed,
    EventType.CREDENTIAL_RECOVERED: _credential_recovered,
    EventType.RATE_LIMITED: _rate_limited,
    EventType.BACKFILL_STARTED: _backfill_started,
    EventType.BACKFILL_PROGRESSED: _backfill_progressed,
    EventType.BACKFILL_COLLECTION_COMPLETED: _collection_completed,
}


# -- provider events ---------------------------------------------------------------------


def _incident_opened(view: ProviderView, event: Envelope) -> ProviderView:
    data: IncidentOpened = _data(event)
    incident = Incident(incident_id=data.incident_id, opened_at=event.time, notes=tuple(data.notes))
    return evolve(view, **{"incidents": {**view.incidents, data.incident_id: incident}})


def _incident_resolved(view: ProviderView, event: Envelope) -> ProviderView:
    data: IncidentResolved = _data(event)
    incidents = {k: v for k, v in view.incidents.items() if k != data.incident_id}
    return evolve(view, **{"incidents": incidents})


_PROVIDER_HANDLERS: dict[EventType, Callable[[ProviderView, Envelope], ProviderView]] = {
    EventType.PROVIDER_INCIDENT_OPENED: _incident_opened,
    EventType.PROVIDER_INCIDENT_RESOLVED: _incident_resolved,
}
