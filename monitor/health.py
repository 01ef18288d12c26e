"""Health evaluation: a pure function of a view, the provider incidents and a clock."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from pydantic import BaseModel, ConfigDict

from monitor.enums import HealthStatus, SyncStatus
from monitor.views import Incident, SyncView


class Check(BaseModel):
    """One rule's verdict, with a message an on-call engineer can act on."""

    model_config = ConfigDict(frozen=True)

    name: str
    status: HealthStatus
    message: str
    since: datetime | None = None


class Health(BaseModel):
    """A sync's health: the worst check wins."""

    model_config = ConfigDict(frozen=True)

    sync_id: str
    status: HealthStatus
    checks: tuple[Check, ...] = ()
    evaluated_at: datetime


def evaluate(view: SyncView, now: datetime, incidents: Sequence[Incident] = ()) -> Health:
    """Paused when disabled, initializing until the initial backfill completes, else healthy."""
    checks = (_paused(view), _backfill(view))
    worst = max((c.status for c in checks), key=lambda s: s.rank)
    return Health(sync_id=view.id, status=worst, checks=checks, evaluated_at=now)


def _paused(view: SyncView) -> Check:
    if view.status is SyncStatus.DISABLED:
        reason = f": {view.disabled_reason}" if view.disabled_reason else ""
        return Check(
            name="paused",
            status=HealthStatus.PAUSED,
            message=f"sync is disabled{reason}",
            since=view.status_changed_at,
        )
    return Check(name="paused", status=HealthStatus.HEALTHY, message="sync is active")


def _backfill(view: SyncView) -> Check:
    if view.initial_backfill_completed_at is None:
        done = sum(1 for p in view.backfill.values() if p.completed_at is not None)
        total = len(view.collection_ids) or len(view.backfill)
        return Check(
            name="backfill",
            status=HealthStatus.INITIALIZING,
            message=f"initial backfill in progress: {done} of {total} collections complete",
            since=view.backfill_started_at or view.created_at,
        )
    return Check(
        name="backfill",
        status=HealthStatus.HEALTHY,
        message="initial backfill complete",
        since=view.initial_backfill_completed_at,
    )
