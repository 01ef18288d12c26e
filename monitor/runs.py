"""Run facts when event times arrive out of order: which run is shown, and failures in a row
(a success resets only the failures from before it, so the streak keeps their times)."""

from __future__ import annotations

from bisect import insort
from datetime import datetime
from typing import Any

from monitor.events import RunError
from monitor.views import LastRun, SyncView

# Times kept per streak: counts stay exact up to this many failures in a row, far above the
# error threshold; a longer streak keeps its newest times.
STREAK_TIMES = 10


def streak_after_failure(view: SyncView, time: datetime, error: RunError) -> dict[str, Any]:
    """A failure from before the latest success was reset by it: not "in a row"."""
    succeeded = view.last_success_at
    if succeeded is not None and time < succeeded:
        return {}
    failed = view.last_failure_at
    times = list(view.failures_at)
    insort(times, time)
    return {
        "consecutive_failures": view.consecutive_failures + 1,
        "failures_at": tuple(times[-STREAK_TIMES:]),
        "last_error": error if failed is None or time >= failed else view.last_error,
    }


def streak_after_success(view: SyncView, time: datetime) -> dict[str, Any]:
    """Only the failures after this success stay in the row; which those are, the kept
    times tell, unless the streak outgrew them and the success predates all it kept."""
    failed = view.last_failure_at
    if failed is None or time >= failed:
        return {"consecutive_failures": 0, "failures_at": (), "last_error": None}
    kept, count = view.failures_at, view.consecutive_failures
    after = tuple(t for t in kept if t > time)
    if len(kept) >= count or (kept and time >= kept[0]):
        count = len(after)  # every failure older than the kept ones is older than this success
    return {"consecutive_failures": count, "failures_at": after}


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
