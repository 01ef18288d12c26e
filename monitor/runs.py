"""Run events into the view, whatever order their times arrive in: which run is shown, and
failures in a row (a success resets only the failures before it, so a streak keeps their
times)."""

from __future__ import annotations

from bisect import insort
from datetime import datetime
from typing import Any

from monitor.events import Envelope, RunError, RunFailed, RunStarted, RunSucceeded
from monitor.views import LastRun, SyncView, evolve

# Times kept per streak: counts stay exact up to this many failures in a row, far above the
# error threshold; a longer streak keeps its newest times.
STREAK_TIMES = 10


def streak_after_failure(view: SyncView, time: datetime, error: RunError) -> dict[str, Any]:
    """A failure from before the latest success was reset by it: not "in a row"."""
    succeeded = view.last_success_at
    if succeeded is not None and time < succeeded:
        return {}
    failed, kept = view.last_failure_at, view.failures_at
    times = list(kept)
    untimed = view.consecutive_failures > len(kept) and len(kept) < STREAK_TIMES
    if not untimed:  # else a streak stored before its times were kept: its times are unknown
        insort(times, time)
    return {
        "consecutive_failures": view.consecutive_failures + 1,
        "failures_at": tuple(times[-STREAK_TIMES:]),
        "last_error": error if failed is None or time >= failed else view.last_error,
    }


def streak_after_success(view: SyncView, time: datetime) -> dict[str, Any]:
    """Only the failures after this success stay in the row; which those are, the kept
    times tell when they are all there, or when the streak outgrew them (the ones dropped
    are its oldest) and the success is not older than all it kept. Otherwise (a view stored
    before streaks kept times) the count stands: too many rather than too few."""
    failed = view.last_failure_at
    if failed is None or time >= failed:
        return {"consecutive_failures": 0, "failures_at": (), "last_error": None}
    kept, count = view.failures_at, view.consecutive_failures
    capped = len(kept) == STREAK_TIMES
    if not (len(kept) >= count or (capped and time >= kept[0])):
        return {}
    after = tuple(t for t in kept if t > time)
    reset = {} if after else {"last_error": None}
    return {"consecutive_failures": len(after), "failures_at": after, **reset}


def finishes(run: LastRun | None, run_id: str, time: datetime) -> bool:
    """Whether a run's end may be shown: the end of the run shown (even stamped before its
    start, clocks differ) unless it already has a later one; another run's only if newer."""
    if run is None:
        return True
    if run.run_id == run_id:
        return run.finished_at is None or time >= run.finished_at
    shown = run.finished_at or run.started_at
    return shown is None or time >= shown


def run_of(view: SyncView, run_id: str) -> LastRun:
    if view.last_run is not None and view.last_run.run_id == run_id:
        return view.last_run
    return LastRun(run_id=run_id)


def latest(seen: datetime | None, time: datetime) -> datetime:
    """Events of one sync can carry times out of order: its "last" is the latest, not the last
    delivered, so a late event with an older time never moves it back."""
    return time if seen is None or time > seen else seen


def activity(view: SyncView, time: datetime, **update: Any) -> SyncView:
    first = view.first_activity_at
    update["first_activity_at"] = time if first is None or time < first else first
    return evolve(view, **update)


def run_started(view: SyncView, event: Envelope) -> SyncView:
    data: RunStarted = event.data  # type: ignore[attr-defined]
    run, time = view.last_run, event.time
    if run is not None and run.run_id == data.run_id:
        if run.started_at is None:
            run = evolve(run, started_at=time)  # the start of the run shown, delivered late
    elif run is None or time >= (run.finished_at or run.started_at or time):
        run = LastRun(run_id=data.run_id, started_at=time)  # not a late start of an older run
    return activity(view, time, last_run=run)


def _ended(view: SyncView, run_id: str, time: datetime, **outcome: Any) -> LastRun | None:
    """The run to show once `run_id` ended at `time`: it, unless a newer one is shown."""
    if not finishes(view.last_run, run_id, time):
        return view.last_run
    return evolve(run_of(view, run_id), finished_at=time, **outcome)


def run_succeeded(view: SyncView, event: Envelope) -> SyncView:
    data: RunSucceeded = event.data  # type: ignore[attr-defined]
    time = event.time
    run = _ended(
        view,
        data.run_id,
        time,
        succeeded=True,
        records_upserted=data.records_upserted,
        records_deleted=data.records_deleted,
        duration_ms=data.duration_ms,
        error=None,
    )
    return activity(
        view,
        time,
        last_run=run,
        last_success_at=latest(view.last_success_at, time),
        runs_succeeded=view.runs_succeeded + 1,
        **streak_after_success(view, time),
    )


def run_failed(view: SyncView, event: Envelope) -> SyncView:
    data: RunFailed = event.data  # type: ignore[attr-defined]
    time = event.time
    run = _ended(view, data.run_id, time, succeeded=False, error=data.error)
    return activity(
        view,
        time,
        last_run=run,
        last_failure_at=latest(view.last_failure_at, time),
        runs_failed=view.runs_failed + 1,
        **streak_after_failure(view, time, data.error),
    )
