"""The health sweep's fast paths give exactly what the plain ones give.

A sweep parses only the view fields the engine reads, stores health without rendering its
checks, and groups a chunk's writes by key; none of it may change a result or a stored byte,
and WATCH must still make a racing evaluator re-read.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import pytest
import redis

from monitor.engine import VIEW_FIELDS, HealthEngine, Writes, row_of, to_ms
from monitor.enums import HealthStatus
from monitor.health import (
    Health,
    History,
    ThresholdBook,
    Thresholds,
    assess,
    evaluate,
    health_of,
    next_deadline,
)
from monitor.store.health import HealthViews, LastHealth, StoredHealth
from monitor.store.syncs import SyncViews
from monitor.views import Incident, LastRun, SyncView
from tests.test_health import (
    CRED_FAILED,
    DISABLED,
    INCIDENT,
    NOT_BACKFILLED,
    NOW,
    RATE_LIMITED,
    RUN_ERROR,
    STALE_ERROR,
    STALE_WARN,
    STALLED,
    THREE_FAILURES,
    backfilling,
    ready,
)

PREFIX = "sweep"
FAILED_RUN = {**THREE_FAILURES, "last_run": LastRun(run_id="r9", succeeded=False, error=RUN_ERROR)}
VIEWS = [
    ready(),
    ready(**DISABLED, disabled_reason="paused by support"),
    ready(**CRED_FAILED, **RATE_LIMITED, retry_after_seconds=30),
    ready(**FAILED_RUN, **STALE_WARN),
    ready(**STALE_ERROR, org_id="org-1", name="Acme CRM", sync_frequency="4h"),
    ready(**NOT_BACKFILLED),
    ready(**STALLED),
    backfilling(),
    SyncView(id="sync-1", created_at=NOW - timedelta(hours=2)),
]
CASES = list(itertools.product(VIEWS, [(), INCIDENT]))


class Recorder:
    """A pipeline stand-in that keeps the commands queued on it."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, tuple[Any, ...]]] = []
        self.values: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        def command(*args: Any, **kwargs: Any) -> None:
            self.commands.append((name, args))
            if name == "mset":
                self.values.update(args[0])
            elif name == "set":
                self.values[args[0]] = args[1]

        return command


def stored(views: Sequence[SyncView]) -> tuple[list[str], list[Any]]:
    """The ids and `mget(keys(ids))` of these views, as the processor stores them."""
    syncs = SyncViews(PREFIX)
    pipe = Recorder()
    syncs.put_many(pipe, [(v, None) for v in views])  # type: ignore[arg-type]
    ids = [v.id for v in views]
    return ids, [pipe.values.get(k) for k in syncs.keys(ids)]


def parse_fields(
    ids: list[str], raw: list[Any], fields: frozenset[str] = VIEW_FIELDS
) -> list[SyncView | None]:
    """`parse_fields` as a sweep calls it: facts first, both parts again on request."""
    syncs = SyncViews(PREFIX)
    by_key = dict(zip(syncs.keys(ids), raw, strict=True))
    asked: list[str] = []

    def mget(keys: list[str]) -> list[Any]:
        asked.extend(keys)
        return [by_key[k] for k in keys]

    views = syncs.parse_fields(ids, raw[1::2], fields, mget)
    missing = [i for i, facts in zip(ids, raw[1::2], strict=True) if facts is None]
    assert asked == syncs.keys(missing), "facts of this split are read again only if missing"
    return views


@pytest.mark.parametrize(("view", "incidents"), CASES)
def test_a_view_of_the_engine_fields_judges_as_the_whole_view(
    view: SyncView, incidents: tuple[Incident, ...]
) -> None:
    ids, raw = stored([view])
    full = SyncViews.parse_many(SyncViews(PREFIX), ids, raw)[0]
    part = parse_fields(ids, raw)[0]
    assert full is not None and part is not None
    t = Thresholds()
    for now in (NOW, NOW + timedelta(hours=3)):
        health = evaluate(full, now, t, incidents)
        assert evaluate(part, now, t, incidents) == health  # messages too: every check rendered
        again = evaluate(part, now + timedelta(minutes=1), t, incidents, health)
        assert again == evaluate(full, now + timedelta(minutes=1), t, incidents, health)
        assert next_deadline(part, now, t, health) == next_deadline(full, now, t, health)
        assert row_of(part, health.checks) == row_of(full, health.checks)
    assert part.applied.partition == full.applied.partition
    assert (part.deleted, part.known, part.backfill_complete) == (
        full.deleted,
        full.known,
        full.backfill_complete,
    )
    with pytest.raises(AttributeError):
        _ = part.credential  # not parsed: never silently a default


def test_missing_views_and_unknown_fields() -> None:
    ids, raw = stored([ready()])
    assert parse_fields(["gone", *ids], [None, None, *raw])[0] is None
    with pytest.raises(ValueError, match="not fields"):
        parse_fields(ids, raw, frozenset({"no_such_field"}))
    with pytest.raises(ValueError, match="not facts"):
        parse_fields(ids, raw, frozenset({"credential"}))


@pytest.mark.parametrize(("view", "incidents"), CASES)
def test_dump_stores_what_put_stores(view: SyncView, incidents: tuple[Incident, ...]) -> None:
    healths = HealthViews(PREFIX)
    t = Thresholds()
    first = evaluate(view, to_ms(NOW), t, incidents)
    previous = StoredHealth.model_validate({**first.model_dump(), "m": None})
    for a in (
        assess(view, to_ms(NOW), t, incidents),
        assess(view, to_ms(NOW + timedelta(minutes=7)), t, incidents, previous),
    ):
        row = row_of(view, a.verdicts)
        pipe = Recorder()
        healths.put(pipe, health_of(view, incidents, a), row)  # type: ignore[arg-type]
        written = pipe.values[healths.key(view.id)]
        assert healths.dump(a, row) == written
        back = healths.parse(view.id, written)
        last = healths.parse_last(written)
        assert back is not None and last is not None
        assert back.m == row
        for name in type(last).model_fields:
            want = back.m.p if name == "m" and back.m else getattr(back, name)
            got = last.m.p if name == "m" and last.m else getattr(last, name)
            assert got == want, name


def test_the_history_a_sweep_reads_is_declared_as_in_health() -> None:
    history = {n: f for n, f in LastHealth.model_fields.items() if n != "m"}
    for name, f in history.items():
        assert f.annotation == Health.model_fields[name].annotation, name
        assert f.default == Health.model_fields[name].default, name
    carried = {n for n, v in vars(History).items() if isinstance(v, property)}
    assert carried and carried <= set(history)


def test_writes_keep_the_last_operation_on_each_member() -> None:
    writes = Writes()
    writes.member("s1", "a", True)
    writes.member("s1", "a", False)
    writes.member("s1", "b", True)
    writes.member("s2", "a", True)
    writes.schedule("z", "a", None)
    writes.schedule("z", "a", datetime.fromtimestamp(10, tz=NOW.tzinfo))
    writes.schedule("z", "b", datetime.fromtimestamp(20, tz=NOW.tzinfo))
    writes.schedule("z", "b", None)
    writes.healths["h:a"] = "{}"
    writes.healths["h:b"] = None
    writes.events += [("a", "e1"), ("b", "e2")]
    pipe = Recorder()
    writes.queue(pipe, HealthEngine(PREFIX, ThresholdBook(Thresholds())).outbox)  # type: ignore[arg-type]
    assert pipe.commands == [
        ("delete", ("h:b",)),
        ("mset", ({"h:a": "{}"},)),
        ("srem", ("s1", "a")),
        ("sadd", ("s1", "b")),
        ("sadd", ("s2", "a")),
        ("zrem", ("z", "b")),
        ("zadd", ("z", {"a": 10.0})),
        ("xadd", (f"{PREFIX}:outbox", {"sync_id": "a", b"event": "e1"})),
        ("xadd", (f"{PREFIX}:outbox", {"sync_id": "b", b"event": "e2"})),
    ]


def _fleet(client: redis.Redis, n: int) -> list[str]:
    views = [
        ready(id=f"s{i:03}", **(STALE_ERROR if i % 3 else {}), provider=f"p{i % 2}")
        for i in range(n)
    ]
    pipe = client.pipeline(transaction=False)
    SyncViews(PREFIX).put_many(pipe, [(v, None) for v in views])
    pipe.execute()
    return [v.id for v in views]


def test_a_racing_evaluator_makes_the_chunk_re_read_and_each_change_is_queued_once(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = redis.Redis.from_url(redis_url)
    ids = _fleet(client, 30)
    clock = itertools.count()

    def now() -> datetime:
        return NOW + timedelta(seconds=next(clock))

    ours, theirs = (HealthEngine(PREFIX, ThresholdBook(Thresholds()), now) for _ in range(2))
    reads = 0
    real_all = ours.providers.all

    def all_then_race(pipe: Any) -> Any:
        nonlocal reads
        reads += 1
        if reads == 1:  # between our WATCH/MGET and our EXEC, another process evaluates
            assert theirs.evaluate_ids(client, ids) == len(ids)
        return real_all(pipe)

    monkeypatch.setattr(ours.providers, "all", all_then_race)
    assert ours.evaluate_ids(client, ids) == len(ids)
    assert reads == 2  # WATCH saw their writes: the chunk was read again
    entries: Any = client.xrange(f"{PREFIX}:outbox")
    assert sorted(e[1][b"sync_id"].decode() for e in entries) == sorted(ids)  # one each
    healths = HealthViews(PREFIX).get_many(client, ids)
    assert all(h is not None and h.transitions == 1 for h in healths)
    counts = {
        (p, s.value): client.scard(ours.indexes.health_key(p, s))
        for p in ("p0", "p1")
        for s in HealthStatus
    }
    assert sum(counts.values()) == len(ids)
    assert counts[("p0", "error")] + counts[("p1", "error")] == 20
    due = sum(client.zcard(ours.due.key(p)) for p in (None, 0))
    assert due == 10  # the healthy ones have a next deadline; the stale ones none


def test_a_sweep_stores_what_one_by_one_staging_stores(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    ids = _fleet(client, 12)
    t0 = to_ms(NOW)
    engine = HealthEngine(PREFIX, ThresholdBook(Thresholds()), lambda: t0)
    engine.evaluate_ids(client, ids)
    swept: Any = client.mget(engine.healths.keys(ids))
    views = engine.syncs.get_many(client, ids)
    pipe = Recorder()
    for view in views:
        assert view is not None
        engine.stage(pipe, view, None, (), t0)  # type: ignore[arg-type]
    assert [pipe.values[k].encode() for k in engine.healths.keys(ids)] == swept
