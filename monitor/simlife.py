"""The simulated sync engine: a seeded discrete-event scheduler and per-sync state machines."""

from __future__ import annotations

import heapq
import random
from collections.abc import Generator
from typing import Any

from monitor.enums import EventType as ET
from monitor.enums import SyncStatus
from monitor.simdata import (
    DISABLE_REASONS,
    ENABLE_REASONS,
    ENVIRONMENTS,
    INCIDENT_NOTES,
    PROVIDERS,
    RUN_ERRORS,
    Fleet,
    Profile,
    SimSync,
    credential_properties,
    metadata_value,
    new_uuid,
    secret_keys,
    tok,
)

# Demo-compressed timings, in seconds of simulated time.
CONTINUOUS_INTERVAL = (20.0, 60.0)  # "continuous": a run every 20-60 s
PERIODIC_INTERVAL = (120.0, 300.0)  # "4h": every few minutes
RUN_SECONDS = {"continuous": (0.3, 6.0), "4h": (4.0, 40.0)}
RETRY_SECONDS = (5.0, 20.0)  # after a retryable failure
BACKFILL_QUICK, BACKFILL_SLOW = (10.0, 30.0), (30.0, 120.0)
PAUSE_SECONDS, PAUSED_PROFILE_SECONDS = (60.0, 600.0), (600.0, 1800.0)
STALL_SECONDS = (1800.0, 7200.0)  # a stuck backfill, long enough for the 30-min check
INCIDENT_GAP_MEAN, INCIDENT_SECONDS = 1800.0, (120.0, 900.0)
FAIL_P = {
    Profile.HEALTHY: 0.02,
    Profile.FLAKY: 0.3,
    Profile.FAILING: 0.9,
    Profile.STUCK: 0.05,
    Profile.CREDENTIAL_BROKEN: 0.05,
    Profile.PAUSED: 0.02,
}
# per run cycle, cumulative thresholds for side events
P_DELETE, P_UPDATE, P_RATE, P_DISABLE, P_CRED = 0.002, 0.04, 0.04, 0.008, 0.006

Ev = tuple[str, ET, dict[str, Any]]
Step = tuple[float, tuple[Ev, ...]]
Actor = Generator[Step, None, None]


class Engine:
    """Discrete-event scheduler: a heap of actors (syncs, providers) keyed by due time."""

    def __init__(self, fleet: Fleet, seed: int, now: float) -> None:
        self.fleet = fleet
        self.rng = random.Random(f"{seed}/life")
        self.now = now
        self.heap: list[tuple[float, int, tuple[Ev, ...], Actor]] = []
        self._n = 0
        self.incidents: dict[str, str] = {}

    def schedule(self, actor: Actor, base: float) -> None:
        """Advance an actor to its next step and queue it that step's delay after `base`."""
        self.now = base
        step = next(actor, None)
        if step is not None:
            self._n += 1
            heapq.heappush(self.heap, (base + step[0], self._n, step[1], actor))

    def pop(self, room: int) -> tuple[float, tuple[Ev, ...]]:
        """Next due step that fits in `room` messages, so a burst is never cut in half."""
        deferred: list[tuple[float, int, tuple[Ev, ...], Actor]] = []
        item = heapq.heappop(self.heap)
        while len(item[2]) > room:
            deferred.append(item)
            item = heapq.heappop(self.heap)
        for d in deferred:
            heapq.heappush(self.heap, d)
        due, _, evs, actor = item
        self.schedule(actor, due)
        return due, evs

    def add_providers(self, providers: list[str], now: float) -> None:
        """One incident actor per provider; one opens early so demos show an incident."""
        if not providers:
            return
        early = self.rng.choice(providers)
        for p in providers:
            first = (
                self.rng.uniform(20, 50)
                if p == early
                else self.rng.expovariate(1 / INCIDENT_GAP_MEAN)
            )
            self.schedule(_provider_life(self, p, first), now)
        self.now = now


def _one(subject: str, etype: ET, data: dict[str, Any]) -> tuple[Ev, ...]:
    """A single-event step payload."""
    return ((subject, etype, data),)


def _interval(eng: Engine, s: SimSync) -> float:
    """Time to the next run, following the sync's (possibly patched) frequency."""
    lo, hi = CONTINUOUS_INTERVAL if s.sync_frequency == "continuous" else PERIODIC_INTERVAL
    return eng.rng.uniform(lo, hi)


def _provider_life(eng: Engine, provider: str, first: float) -> Actor:
    """Incidents open and resolve forever; syncs of the provider fail more meanwhile."""
    rng, delay = eng.rng, first
    while True:
        inc = f"inc_{tok(rng, 12, '0123456789abcdefghijklmnopqrstuvwxyz')}"
        notes = rng.sample(INCIDENT_NOTES, rng.randint(1, 3))
        yield (
            delay,
            _one(provider, ET.PROVIDER_INCIDENT_OPENED, {"incident_id": inc, "notes": notes}),
        )
        eng.incidents[provider] = inc
        yield (
            rng.uniform(*INCIDENT_SECONDS),
            _one(provider, ET.PROVIDER_INCIDENT_RESOLVED, {"incident_id": inc}),
        )
        del eng.incidents[provider]
        delay = rng.expovariate(1 / INCIDENT_GAP_MEAN)


def sync_life(eng: Engine, s: SimSync, announce: bool = True) -> Actor:
    """The whole lifecycle: created, initial backfill, then runs until deleted."""
    if announce:
        yield 0.0, _one(s.id, ET.SYNC_CREATED, s.created_data())
    if s.profile is Profile.PAUSED:
        yield from _pause(eng, s, eng.rng.uniform(3, 10), PAUSED_PROFILE_SECONDS)
    yield from _backfill(eng, s)
    yield from _runs(eng, s)


def _pause(eng: Engine, s: SimSync, delay: float, span: tuple[float, float]) -> Actor:
    """Disable, then re-enable after `span`; reasons are optional in the contract."""
    rng = eng.rng
    data = {"reason": rng.choice(DISABLE_REASONS)} if rng.random() < 0.8 else {}
    yield delay, _one(s.id, ET.SYNC_DISABLED, data)
    s.status = SyncStatus.DISABLED
    data = {"reason": rng.choice(ENABLE_REASONS)} if rng.random() < 0.8 else {}
    yield rng.uniform(*span), _one(s.id, ET.SYNC_ENABLED, data)
    s.status = SyncStatus.ACTIVE


def _backfill(eng: Engine, s: SimSync) -> Actor:
    """Initial backfill: per collection a few progress events then completion (or a stall)."""
    rng, sid, cols = eng.rng, s.id, list(s.collection_ids)
    data: dict[str, Any] = {"collection_ids": cols} if rng.random() < 0.9 else {}
    yield rng.uniform(2, 8), _one(sid, ET.BACKFILL_STARTED, data)
    quick = rng.random() < 0.4 or s.profile in (Profile.FAILING, Profile.CREDENTIAL_BROKEN)
    per = rng.uniform(*(BACKFILL_QUICK if quick else BACKFILL_SLOW)) / len(cols)
    stall_at = rng.randrange(len(cols)) if s.profile is Profile.STUCK else -1
    for ci, col in enumerate(cols):
        est = int(rng.lognormvariate(9, 2)) + 10
        n = rng.randint(1, 4)
        synced = 0
        for j in range(1, n + 1):
            synced = max(synced + 1, int(est * j / (n + 1) * rng.uniform(0.9, 1.1)))
            prog: dict[str, Any] = {"collection_id": col, "records_synced": synced}
            if rng.random() < 0.9:
                prog["estimated_total"] = est
            yield per / (n + 1) * rng.uniform(0.7, 1.3), _one(sid, ET.BACKFILL_PROGRESSED, prog)
            if ci == stall_at and j == 1:
                until = eng.now + rng.uniform(*STALL_SECONDS)
                while eng.now < until:  # stuck behind the provider's rate limit
                    retry = rng.randint(60, 900)
                    yield (
                        rng.uniform(60, 300),
                        _one(sid, ET.RATE_LIMITED, {"retry_after_seconds": retry}),
                    )
            elif rng.random() < 0.03:
                yield 1.0, _one(sid, ET.RATE_LIMITED, {"retry_after_seconds": rng.randint(1, 60)})
        final = max(synced, int(est * rng.uniform(0.98, 1.02)))
        yield (
            per / (n + 1),
            _one(
                sid,
                ET.BACKFILL_COLLECTION_COMPLETED,
                {"collection_id": col, "records_synced": final},
            ),
        )


def _patch(eng: Engine, s: SimSync) -> dict[str, Any]:
    """A JSON merge patch the engine might send; applied to our copy so later ones make sense."""
    rng = eng.rng
    kind = rng.choices(
        ("meta", "unmeta", "rename", "age", "freq", "rate", "cred"), (3, 2, 2, 1, 1, 1, 1)
    )[0]
    if kind == "unmeta" and s.metadata:
        key = rng.choice(sorted(s.metadata))
        del s.metadata[key]
        return {"metadata": {key: None}}
    if kind in ("meta", "unmeta"):
        key = rng.choice(("team", "owner", "cost_center", "custom_property", "tier"))
        s.metadata[key] = metadata_value(rng, key, s.org.slug)
        return {"metadata": {key: s.metadata[key]}}
    if kind == "rename":
        env = rng.choice([e for e, _ in ENVIRONMENTS if e != s.env])
        s.env, s.name = env, f"{s.org.company} - {PROVIDERS[s.provider][0]} {env}"
        return {"name": s.name}
    if kind == "age":
        s.max_age_days = None if s.max_age_days else rng.choice((30, 90, 365))
        return {"max_age_days": s.max_age_days}
    if kind == "freq":
        s.sync_frequency = "4h" if s.sync_frequency == "continuous" else "continuous"
        return {"sync_frequency": s.sync_frequency}
    if kind == "rate":
        s.rate_limit["allowed_requests"] = max(
            1, int(s.rate_limit["allowed_requests"] * rng.choice((0.5, 2.0)))
        )
        return {"rate_limit": {"allowed_requests": s.rate_limit["allowed_requests"]}}
    return _rotation(eng, s)


def _rotation(eng: Engine, s: SimSync) -> dict[str, Any]:
    """Rotate the credential's secrets: raw secrets also arrive inside merge patches."""
    props = s.credential["properties"]
    fresh = credential_properties(eng.rng, s.provider, s.org.slug)
    keys = [k for k in secret_keys(fresh) if k in props] or secret_keys(props)[:1]
    new = {k: fresh.get(k, tok(eng.rng, 40)) for k in keys}
    props.update(new)
    return {"credential": {"properties": new}}


def _runs(eng: Engine, s: SimSync) -> Actor:
    """Steady state: runs at the sync's frequency, with side events and failure streaks."""
    rng, sid = eng.rng, s.id
    display = PROVIDERS[s.provider][0]
    delay = rng.uniform(2, 10)
    bad_cred_runs = 0
    if s.profile is Profile.CREDENTIAL_BROKEN:
        bad_cred_runs = rng.randint(10, 40)
        yield delay, _cred_failed(eng, s)
        delay = rng.uniform(1, 5)
    while True:
        r = rng.random()
        if r < P_DELETE:
            new = eng.fleet.new_sync(s.org)
            yield delay, ((sid, ET.SYNC_DELETED, {}), (new.id, ET.SYNC_CREATED, new.created_data()))
            eng.schedule(sync_life(eng, new, announce=False), eng.now)
            return
        side = True
        r -= P_DELETE + P_UPDATE
        p_rate = P_RATE * (3 if s.profile is Profile.FLAKY else 1)
        if r < 0:
            yield delay, _one(sid, ET.SYNC_UPDATED, _patch(eng, s))
        elif r < p_rate:
            yield delay, _one(sid, ET.RATE_LIMITED, {"retry_after_seconds": rng.randint(1, 120)})
        elif r < p_rate + P_DISABLE:
            yield from _pause(eng, s, delay, PAUSE_SECONDS)
        elif r < p_rate + P_DISABLE + P_CRED and not bad_cred_runs:
            bad_cred_runs = rng.randint(1, 4)
            yield delay, _cred_failed(eng, s)
        else:
            side = False
        if side:
            delay = rng.uniform(1, 5)
        run_id = new_uuid(rng)
        yield delay, _one(sid, ET.RUN_STARTED, {"run_id": run_id})
        lo, hi = RUN_SECONDS.get(s.sync_frequency, RUN_SECONDS["continuous"])
        took = rng.uniform(lo, hi)
        p_fail = FAIL_P[s.profile] + (0.5 if s.provider in eng.incidents else 0.0)
        delay = _interval(eng, s)
        if bad_cred_runs:
            bad_cred_runs -= 1
            err: dict[str, Any] = {
                "code": "unauthorized",
                "http_status": 401,
                "retryable": False,
                "message": f"{display} rejected the credential (401)",
            }
            yield took, _one(sid, ET.RUN_FAILED, {"run_id": run_id, "error": err})
            if not bad_cred_runs:
                if rng.random() < 0.6:
                    yield rng.uniform(5, 30), _one(sid, ET.SYNC_UPDATED, _rotation(eng, s))
                yield rng.uniform(2, 20), _one(sid, ET.CREDENTIAL_RECOVERED, {})
                delay = rng.uniform(2, 8)
        elif rng.random() < p_fail:
            code, text, http, retryable = rng.choice(RUN_ERRORS)
            err = {"code": code, "message": text.format(p=display), "retryable": retryable}
            if http is not None:
                err["http_status"] = http
            yield took, _one(sid, ET.RUN_FAILED, {"run_id": run_id, "error": err})
            if retryable:
                delay = rng.uniform(*RETRY_SECONDS)
        else:
            big = s.sync_frequency != "continuous"
            ups = min(10**6, int((rng.paretovariate(1.2) - 1) * (2000 if big else 20)))
            dels = int((rng.paretovariate(2.0) - 1) * 5) if rng.random() < 0.3 else 0
            yield (
                took,
                _one(
                    sid,
                    ET.RUN_SUCCEEDED,
                    {
                        "run_id": run_id,
                        "records_upserted": ups,
                        "records_deleted": dels,
                        "duration_ms": int(took * 1000),
                    },
                ),
            )
        if s.profile is Profile.FAILING and rng.random() < 0.01:
            s.profile = Profile.FLAKY  # a sick sync sometimes gets fixed


def _cred_failed(eng: Engine, s: SimSync) -> tuple[Ev, ...]:
    """A `sync.credential.failed` step with a provider-flavoured reason."""
    status, why = eng.rng.choice(
        (
            (401, "invalid_grant: refresh token revoked"),
            (401, "access token expired"),
            (401, "API key revoked"),
            (403, "insufficient scopes for the requested objects"),
        )
    )
    return _one(
        s.id,
        ET.CREDENTIAL_FAILED,
        {"http_status": status, "message": f"{PROVIDERS[s.provider][0]}: {why}"},
    )
