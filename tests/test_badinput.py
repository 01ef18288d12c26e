"""Bad input: any Kafka record lands in the DLQ or yields a valid view; bad requests get 4xx.

The properties drive the real Processor on a real Redis and check, after every example, that
what Redis holds equals the pure fold of the same records, that every stored value parses and
keeps its invariants, and that the health engine and the API shape accept every stored view.
"""

from __future__ import annotations

import base64
import json
import string
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, note, settings
from hypothesis import event as hypothesis_event
from hypothesis import strategies as st

from consumers.decode import MAX_MESSAGE_BYTES, Headers, RawMessage, decode
from consumers.processor import Processor
from monitor.app import create_app
from monitor.enums import EventType, HealthStatus
from monitor.events import (
    EVENT_ADAPTER,
    KNOWN_TYPES,
    MAX_ID_LENGTH,
    MAX_INT,
    Envelope,
    UnknownEvent,
)
from monitor.fold import Position, View, step
from monitor.health import Thresholds, checks, evaluate
from monitor.patching import MASK, mask_secrets
from monitor.schemas import SyncOut, sync_out
from monitor.settings import Settings
from monitor.store.codec import FACTS, SEED, pack, unpack
from monitor.store.counters import EventCounters
from monitor.store.health import HealthViews
from monitor.store.providers import ProviderViews
from monitor.store.syncs import FACTS_PART, STORED_SEED, SyncViews
from monitor.views import ProviderView, SyncView
from tests.eventlib import expected_fold, produce_records
from tests.support import fast_settings

TOPIC = "sync.lifecycle.badinput"
LABELS = KNOWN_TYPES | {"unknown"}
SYNC_IDS = ["s1", "s2", "ünï/cødé:✓"]
PROVIDERS = ["stripe", "hub spot:π"]
TYPES = sorted(KNOWN_TYPES)
MIN_TIME = datetime(1970, 1, 1, tzinfo=UTC)
MAX_TIME = datetime(2199, 12, 31, 23, 59, 59, tzinfo=UTC)

# -- strategies: valid events ------------------------------------------------------------

_text = st.text(max_size=12)
_name = st.text(min_size=1, max_size=12)
_count = st.integers(0, MAX_INT)
_finite = st.floats(allow_nan=False, allow_infinity=False)
_collections = st.sampled_from(["c1", "c2", "ç3"])
_scalar = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | _finite | _text
_json = st.recursive(
    _scalar,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["a", "token", "client_secret", "Password", "private_key", "k"])
            | _text,
            inner,
            max_size=3,
        )
    ),
    max_leaves=10,
)
_offsets = st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
_times = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(2199, 12, 30), timezones=_offsets
)
_seed_time = _times.map(lambda t: t.isoformat()) | _times.map(
    lambda t: t.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ")  # the seed's form
)

_frequency = st.just("continuous") | st.sampled_from(
    [("d", 3650), ("h", 87600), ("m", 87600 * 60), ("s", 87600 * 3600)]
).flatmap(lambda u: st.builds("{}{}".format, st.integers(1, u[1]), st.just(u[0])))

_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "name": st.none() | _text,
    "stream_id": st.none() | _text,
    "org_id": st.none() | st.sampled_from(["org-1", "org/2"]) | _text,
    "status": st.sampled_from(["active", "disabled"]),
    "collection_ids": st.lists(_collections, unique=True, max_size=3),
    "rate_limit": st.none()
    | st.fixed_dictionaries(
        {},
        optional={
            "allowed_requests": st.none() | _count,
            "interval": st.none() | _count,
            "max_concurrent_requests": st.none() | _count,
            "burst": _json,
        },
    ),
    "credential_id": st.none() | _text,
    "credential": st.none()
    | st.fixed_dictionaries(
        {},
        optional={
            "id": _text,
            "properties": st.dictionaries(
                st.sampled_from(["kind", "secret", "api_key", "access_token", "name"]),
                _json,
                max_size=4,
            ),
            "oauth_app_id": st.none() | _text,
            "metadata": _json,
        },
    ),
    "max_age_days": st.none() | _count,
    "sync_frequency": _frequency,
    "metadata": st.dictionaries(_text, _json, max_size=3),
    "created_at": st.none() | _seed_time,
    "updated_at": st.none() | _seed_time,
}
_reason = st.fixed_dictionaries({}, optional={"reason": st.none() | _text})
_run_id = st.sampled_from(["r1", "r2"]) | _name

DATA: dict[str, st.SearchStrategy[Any]] = {
    EventType.SYNC_CREATED: st.fixed_dictionaries(
        {"provider": st.sampled_from(PROVIDERS)}, optional=_FIELDS
    ),
    EventType.SYNC_UPDATED: st.fixed_dictionaries(
        {},
        optional={
            **{k: st.none() | v for k, v in _FIELDS.items() if k != "status"},
            "status": st.sampled_from(["active", "disabled"]),
            "provider": st.sampled_from(PROVIDERS),
        },
    ),
    EventType.SYNC_DISABLED: _reason,
    EventType.SYNC_ENABLED: _reason,
    EventType.SYNC_DELETED: st.just({}),
    EventType.RUN_STARTED: st.fixed_dictionaries({"run_id": _run_id}),
    EventType.RUN_SUCCEEDED: st.fixed_dictionaries(
        {"run_id": _run_id},
        optional={
            "records_upserted": _count,
            "records_deleted": _count,
            "duration_ms": st.none() | _count,
        },
    ),
    EventType.RUN_FAILED: st.fixed_dictionaries(
        {
            "run_id": _run_id,
            "error": st.fixed_dictionaries(
                {"code": _text, "message": _text},
                optional={
                    "retryable": st.booleans(),
                    "http_status": st.none() | st.integers(-(2**63), MAX_INT),
                },
            ),
        }
    ),
    EventType.CREDENTIAL_FAILED: st.fixed_dictionaries(
        {},
        optional={
            "http_status": st.none() | st.integers(-(2**63), MAX_INT),
            "message": _text,
        },
    ),
    EventType.CREDENTIAL_RECOVERED: st.just({}),
    EventType.RATE_LIMITED: st.fixed_dictionaries(
        {"retry_after_seconds": _count | st.floats(0, 1e300)}
    ),
    EventType.BACKFILL_STARTED: st.fixed_dictionaries(
        {}, optional={"collection_ids": st.none() | st.lists(_collections, max_size=3)}
    ),
    EventType.BACKFILL_PROGRESSED: st.fixed_dictionaries(
        {"collection_id": _collections, "records_synced": _count},
        optional={"estimated_total": st.none() | _count},
    ),
    EventType.BACKFILL_COLLECTION_COMPLETED: st.fixed_dictionaries(
        {"collection_id": _collections, "records_synced": _count}
    ),
    EventType.PROVIDER_INCIDENT_OPENED: st.fixed_dictionaries(
        {"incident_id": st.sampled_from(["i1", "i2"])},
        optional={"notes": st.lists(_text, max_size=3)},
    ),
    EventType.PROVIDER_INCIDENT_RESOLVED: st.fixed_dictionaries(
        {"incident_id": st.sampled_from(["i1", "i2"])}
    ),
}
_FUTURE_TYPES = st.sampled_from(["sync.teleported", "provider.weather.changed", "x"])


@st.composite
def valid_events(draw: st.DrawFn) -> dict[str, Any]:
    """A structured-mode CloudEvent (as a dict) that decodes: any type, wide value ranges."""
    kind: str = draw(st.sampled_from(TYPES) | _FUTURE_TYPES)
    provider_event = kind.startswith("provider.")
    subject = draw(st.sampled_from(PROVIDERS if provider_event else SYNC_IDS))
    data = draw(DATA[kind]) if kind in DATA else draw(_json)
    if kind in (EventType.SYNC_CREATED, EventType.SYNC_UPDATED) and draw(st.booleans()):
        data = {**data, "id": subject}
    raw: dict[str, Any] = {
        "specversion": "1.0",
        "id": draw(st.sampled_from([f"e{i}" for i in range(12)]) | _name),
        "source": draw(st.just("//tests/badinput") | _name),
        "type": kind,
        "time": draw(_times).isoformat(),
        "subject": subject,
        "data": data,
    }
    if draw(st.booleans()):
        raw["sequence"] = draw(st.integers(0, 40) | _count)
    if draw(st.booleans()):
        raw["datacontenttype"] = "application/json"
    if draw(st.booleans()):
        raw[draw(st.sampled_from(["traceparent", "partitionkey", "x-extra"]))] = draw(_json)
    if kind in (EventType.SYNC_DISABLED, EventType.SYNC_DELETED) and draw(st.booleans()):
        del raw["data"]
    return raw


# -- strategies: near-valid and arbitrary records ------------------------------------------

_ATTRIBUTES = ["specversion", "id", "source", "type", "time", "subject", "sequence", "data"]
_bad_times = st.sampled_from(
    [
        "0001-01-01T00:00:00Z",
        "1969-12-31T23:59:59Z",
        "2700-01-01T00:00:00Z",
        "9999-12-31T23:59:59.999999Z",
        "9999-12-31T23:59:59-05:00",
        "0001-01-01T00:00:00+05:00",
        "2024-02-30T00:00:00Z",
        "2024-01-01T00:00:00",
        "yesterday",
        "1704067200",
    ]
)
_bad_ints = st.sampled_from([-1, 2**63, 2**64, 10**30, 10**400, -(10**20), 1.5, True, "7"])
_bad_floats_json = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1e400"])


@st.composite
def mutated(draw: st.DrawFn, raw: dict[str, Any]) -> dict[str, Any]:
    """The event with attributes or data perturbed: types changed, values out of range."""
    raw = json.loads(json.dumps(raw))
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.integers(0, 6))
        if how == 0:
            raw.pop(draw(st.sampled_from(_ATTRIBUTES)), None)
        elif how == 1:
            raw[draw(st.sampled_from(_ATTRIBUTES))] = draw(_json)
        elif how == 2:
            raw["time"] = draw(_bad_times)
        elif how == 3 and isinstance(raw.get("data"), dict) and raw["data"]:
            field = draw(st.sampled_from(sorted(raw["data"])))
            raw["data"][field] = draw(_json | _bad_ints)
        elif how == 4:
            raw["type"] = draw(st.sampled_from(TYPES))  # data now of another type
        elif how == 5:
            data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
            data[draw(st.sampled_from([*_FIELDS, "records_synced", "retry_after_seconds"]))] = draw(
                _json | _bad_ints | _bad_times
            )
            raw["data"] = data
        else:
            raw["sequence"] = draw(_bad_ints)
    return raw


def _dumps(raw: Any) -> bytes:
    return json.dumps(raw, ensure_ascii=False, allow_nan=True).encode()


@st.composite
def structured_values(draw: st.DrawFn) -> tuple[bytes | None, Headers]:
    raw = draw(valid_events())
    if draw(st.integers(0, 2)) == 0:
        raw = draw(mutated(raw))
    value = _dumps(raw)
    trick = draw(st.integers(0, 12))
    if trick == 0:  # truncated
        value = value[: draw(st.integers(0, len(value)))]
    elif trick == 1 and b'"data": {' in value:  # a non-standard number in data
        value = value.replace(
            b'"data": {', b'"data": {"n": ' + draw(_bad_floats_json).encode() + b", ", 1
        )
    elif trick == 2:  # a duplicate key (the last one wins in every parser syncmon uses)
        value = value[:-1] + b', "type": ' + _dumps(draw(st.sampled_from(TYPES))) + b"}"
    elif trick == 3:
        value = value.decode().encode("utf-16")
    return value, draw(st.just([]) | _extra_headers)


def _header_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


@st.composite
def binary_values(draw: st.DrawFn) -> tuple[bytes | None, Headers]:
    """CloudEvents binary mode: attributes in ce_ headers, the value is data alone."""
    raw = draw(valid_events())
    if draw(st.integers(0, 2)) == 0:
        raw = draw(mutated(raw))
    headers: Headers = []
    for key, attr in raw.items():
        if key in ("data", "datacontenttype"):
            continue
        name = f"ce_{key}" if draw(st.integers(0, 5)) else f"CE_{key.upper()}"
        headers.append((name, _header_text(attr).encode()))
    headers.append(("content-type", b"application/json"))
    if draw(st.integers(0, 4)) == 0:
        i = draw(st.integers(0, len(headers) - 1))
        headers[i] = (headers[i][0], draw(st.none() | st.binary(max_size=20)))
    value: bytes | None = (
        _dumps(raw["data"]) if "data" in raw else draw(st.sampled_from([None, b""]))
    )
    if draw(st.integers(0, 5)) == 0:
        value = draw(st.binary(max_size=30))
    return value, headers + draw(st.just([]) | _extra_headers)


_header_names = st.sampled_from(
    ["ce_specversion", "ce_type", "ce_id", "ce_", "CE_TIME", "content-type", "traceparent"]
) | st.text(max_size=16)
_header_values = st.none() | st.binary(max_size=24) | st.sampled_from([b"1.0", b"sync.created"])
_extra_headers = st.lists(st.tuples(_header_names, _header_values), max_size=3)


@st.composite
def arbitrary_values(draw: st.DrawFn) -> tuple[bytes | None, Headers]:
    """Any bytes at all, with any headers."""
    value = draw(st.none() | st.binary(max_size=300))
    headers = draw(st.lists(st.tuples(st.text(max_size=16), _header_values), max_size=5))
    return value, headers


_keys = (
    st.none()
    | st.binary(max_size=40)
    | st.sampled_from([*SYNC_IDS, *PROVIDERS]).map(lambda s: s.encode())
)
_records = st.tuples(
    _keys,
    st.integers(0, 2),
    st.one_of(structured_values(), binary_values(), structured_values(), arbitrary_values()),
)
_batches = st.lists(_records, min_size=1, max_size=8)


def as_messages(records: list[Any], start: dict[int, int]) -> list[RawMessage]:
    """Records as RawMessages at increasing offsets per partition (as Kafka delivers them)."""
    out = []
    for key, partition, (value, headers) in records:
        offset = start.get(partition, 0)
        start[partition] = offset + 1
        out.append(RawMessage(TOPIC, partition, offset, key, value, list(headers)))
    return out


# -- invariants ----------------------------------------------------------------------------


def assert_masked(value: Any) -> None:
    assert mask_secrets(value) == value
    if isinstance(value, dict):
        for k, v in value.items():
            if any(
                w in k.lower() for w in ("secret", "password", "token", "api_key", "private_key")
            ):
                assert v is None or v == MASK, k
            assert_masked(v)
    elif isinstance(value, list):
        for v in value:
            assert_masked(v)


def check_sync_view(view: SyncView, sync_id: str, now: datetime) -> None:
    """What every stored sync view must satisfy, and that health and the API accept it."""
    assert view.id == sync_id
    assert view.consecutive_failures >= 0 and view.runs_succeeded >= 0 and view.runs_failed >= 0
    assert len(view.applied.event_ids) <= 8
    assert_masked(view.credential)
    if view.deleted:
        assert view.provider is None and view.credential is None and not view.backfill
        return
    if view.known:
        assert isinstance(view.provider, str) and view.provider
        assert len(view.id) <= MAX_ID_LENGTH
    if view.initial_backfill_completed_at is not None:
        required = set(view.collection_ids) or set(view.backfill)
        assert required
        assert all(
            view.backfill[c].completed_at is not None for c in required if c in view.backfill
        )
    for t in (view.last_event_at, view.created_at, view.updated_at, view.last_success_at):
        assert t is None or (t.tzinfo is not None and MIN_TIME <= t <= MAX_TIME)
    for progress in view.backfill.values():
        ratio = progress.ratio
        assert ratio is None or 0 <= ratio <= 1
    # The health rules and the API shape take every view (they run at read time too).
    health = evaluate(view, now, Thresholds())
    assert health.status in set(HealthStatus)
    assert len(checks(view, now, Thresholds(), ())) == 7
    out = sync_out(view, health)
    assert SyncOut.model_validate_json(out.model_dump_json()) == out


def check_namespace(client: redis.Redis, prefix: str) -> Counter[str]:
    """Every key of the namespace is of a known family and every stored value parses."""
    syncs, healths = SyncViews(prefix), HealthViews(prefix)
    now = datetime.now(UTC)
    families: Counter[str] = Counter()
    for raw_key in client.scan_iter(match=f"{prefix}:*", count=1000):
        key = raw_key.decode()
        family, _, rest = key[len(prefix) + 1 :].partition(":")
        families[family] += 1
        if family == "sync":
            seed, facts = client.mget(syncs.keys([rest]))
            assert seed is not None
            json.loads(unpack(seed))
            if facts is not None:
                json.loads(unpack(facts))
            view = syncs.parse(rest, seed, facts)
            assert view is not None
            check_sync_view(view, rest, now)
        elif family == "facts":
            assert client.exists(syncs.key(rest))
        elif family == "provider":
            view = ProviderViews(prefix).get_many(client, [rest])[0]
            assert view is not None and view.name == rest
        elif family == "health":
            stored = healths.parse(rest, client.get(key))
            assert stored is not None and stored.sync_id == rest
        else:
            assert family in {
                "idx", "idx-values", "fence", "counters", "due", "providers", "fanout", "outbox",
                "epoch", "hold",
            }, key  # fmt: skip
    return families


def reference_fold(
    messages: list[RawMessage],
) -> tuple[dict[str, View | None], Counter[tuple[str, str]]]:
    """The pure fold of the records in the order the Processor was given them."""
    return expected_fold(messages, in_log_order=False)


def stored_views(client: redis.Redis, prefix: str, keys: list[str]) -> dict[str, View | None]:
    syncs, providers = SyncViews(prefix), ProviderViews(prefix)
    out: dict[str, View | None] = {}
    for key in keys:
        kind, _, name = key.partition(":")
        out[key] = (
            syncs.get(client, name) if kind == "sync" else providers.get_many(client, [name])[0]
        )
    return out


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url) as c:
        yield c


# -- property: any record lands in the DLQ or yields a valid view --------------------------


def test_any_record_is_dead_lettered_or_folded_into_a_valid_view(client: redis.Redis) -> None:
    seen: Counter[str] = Counter()

    @settings(
        max_examples=250,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(first=_batches, second=_batches)
    def run(first: list[Any], second: list[Any]) -> None:
        client.flushdb()  # this test's own DB: every example starts empty
        prefix = "bi"
        processor = Processor(client, prefix, TOPIC)
        offsets: dict[int, int] = {}
        log: list[RawMessage] = []
        folded = 0
        for records in (first, second):
            messages = as_messages(records, offsets)
            note(f"batch: {messages!r}")
            log += messages
            prepared, result = processor.process(messages)
            dead = {id(d.message): d for d in prepared.dead}
            decoded = {id(m) for m, _ in prepared.events}
            assert len(dead) + len(decoded) == len(messages)
            for m in messages:
                assert (id(m) in dead) != (id(m) in decoded)
            for d in prepared.dead:
                assert isinstance(d.reason, str) and 0 < len(d.reason) < 1000
                assert d.type_label in LABELS
                seen["dead"] += 1
            for _, event in prepared.events:
                assert isinstance(event, Envelope)
                seen["decoded"] += 1
            assert sum(result.counts.values()) == len(messages)
            seen["applied"] += sum(n for (_, o), n in result.counts.items() if o == "applied")
            folded += len(prepared.events)
            # The health engine evaluates every touched sync without raising.
            processor.engine.sweep(client, range(3))
            processor.engine.fan_out(client)

        hypothesis_event(f"decoded: {min(folded, 4)}")
        # Replaying what was already processed changes nothing (fences).
        before = client.hgetall(EventCounters(prefix).key)
        processor.process(log)
        assert client.hgetall(EventCounters(prefix).key) == before

        expected, counts = reference_fold(log)
        note(f"expected keys: {sorted(expected)}")
        assert stored_views(client, prefix, list(expected)) == expected
        assert Counter(EventCounters(prefix).read(client)) == counts
        families = check_namespace(client, prefix)
        seen["syncs"] += families["sync"]

    run()
    # Both branches really ran, often: not a DLQ-only fuzz.
    print(f"FIGURES {dict(seen)}")
    assert seen["dead"] >= 500, seen
    assert seen["decoded"] >= 300, seen
    assert seen["applied"] >= 120, seen
    assert seen["syncs"] >= 80, seen


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=st.one_of(structured_values(), binary_values()), key=_keys)
def test_decode_agrees_with_the_models_and_never_quotes_input(
    value: tuple[bytes | None, Headers], key: bytes | None
) -> None:
    """A decoded event of a known type survives JSON (what storage does) unchanged, and its
    identifiers fit the API's bounds. (Unknown types are skipped, never stored.)"""
    message = RawMessage(TOPIC, 0, 0, key, value[0], value[1])
    try:
        event = decode(message)
    except Exception as exc:
        assert type(exc).__name__ == "DecodeError", repr(exc)
        hypothesis_event("dead")
        return
    hypothesis_event("decoded")
    if isinstance(event, UnknownEvent):
        return
    again = EVENT_ADAPTER.validate_json(event.model_dump_json(by_alias=True))
    assert again == event
    assert len(event.subject) <= MAX_ID_LENGTH


# -- property: the fold never raises, whatever the order or repetition ----------------------


@st.composite
def shuffled_logs(draw: st.DrawFn) -> list[tuple[Envelope, Position | None]]:
    events = [EVENT_ADAPTER.validate_python(e) for e in draw(st.lists(valid_events(), max_size=20))]
    log = events + draw(st.lists(st.sampled_from(events), max_size=10)) if events else []
    log = draw(st.permutations(log))
    return [(e, draw(st.none() | st.builds(Position, st.integers(0, 2), st.integers(0, 30))))
            for e in log]  # fmt: skip


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shuffled_logs())
def test_fold_never_raises_and_every_view_survives_storage(
    log: list[tuple[Envelope, Position | None]],
) -> None:
    views: dict[str, View | None] = {}
    now = datetime.now(UTC)
    for event, at in log:
        key = ("provider:" if event.type.startswith("provider.") else "sync:") + event.subject
        before = views.get(key)
        result = step(before, event, at)
        views[key] = result.view
        if result.outcome.value != "applied":
            assert result.view is before
    for key, view in views.items():
        if isinstance(view, SyncView):
            check_sync_view(view, view.id, now)
            seed = pack(SEED, view.model_dump_json(include=STORED_SEED, exclude_defaults=True))
            facts = pack(FACTS, view.model_dump_json(include=FACTS_PART, exclude_defaults=True))
            assert SyncViews.parse(view.id, seed, facts) == view, key
        elif isinstance(view, ProviderView):
            assert ProviderView.model_validate_json(view.model_dump_json()) == view


# -- explicit bad records ------------------------------------------------------------------


def _event(**overrides: Any) -> dict[str, Any]:
    raw = {
        "specversion": "1.0",
        "id": "big-1",
        "source": "//tests",
        "type": "sync.created",
        "time": "2024-01-01T00:00:00Z",
        "subject": "s-big",
        "data": {"provider": "stripe"},
    }
    raw.update(overrides)
    return raw


OVERSIZED = [
    (
        "value",
        _dumps(_event(data={"provider": "p", "metadata": {"x": "y" * MAX_MESSAGE_BYTES}})),
        [],
    ),
    ("headers", _dumps(_event()), [("ce_pad", b"x" * MAX_MESSAGE_BYTES)]),
    ("many_headers", _dumps(_event()), [(f"h{i}", b"x" * 1024) for i in range(1030)]),
    ("binary_data", b'"' + b"z" * MAX_MESSAGE_BYTES + b'"', [("ce_specversion", b"1.0")]),
]


@pytest.mark.parametrize(
    ("value", "headers"), [o[1:] for o in OVERSIZED], ids=[o[0] for o in OVERSIZED]
)
def test_oversized_messages_are_dead_lettered_with_a_reason(
    client: redis.Redis, value: bytes, headers: Headers
) -> None:
    message = RawMessage(TOPIC, 0, 0, b"s-big", value, headers)
    prepared, result = Processor(client, "big", TOPIC).process([message])
    assert [d.message for d in prepared.dead] == [message]
    assert "limit" in prepared.dead[0].reason and str(MAX_MESSAGE_BYTES) in prepared.dead[0].reason
    assert result.counts == Counter({("unknown", "invalid"): 1})
    assert SyncViews("big").get(client, "s-big") is None


def test_a_message_just_under_the_limit_is_read(client: redis.Redis) -> None:
    raw = _event(data={"provider": "p", "metadata": {"x": ""}})
    pad = MAX_MESSAGE_BYTES - len(_dumps(raw))
    raw["data"]["metadata"]["x"] = "y" * pad
    value = _dumps(raw)
    assert len(value) == MAX_MESSAGE_BYTES
    prepared, _ = Processor(client, "edge", TOPIC).process(
        [RawMessage(TOPIC, 0, 0, b"s-big", value, [])]
    )
    assert not prepared.dead
    view = SyncViews("edge").get(client, "s-big")
    assert view is not None and len(view.metadata["x"]) == pad


DEAD = [
    ("subject_too_long", _event(subject="s" * (MAX_ID_LENGTH + 1)), "subject"),
    ("provider_too_long", _event(data={"provider": "p" * (MAX_ID_LENGTH + 1)}), "provider"),
    ("time_far_future", _event(time="2700-01-01T00:00:00Z"), "time"),
    ("time_before_1970", _event(time="1969-12-31T23:59:59Z"), "time"),
    ("time_overflows_to_utc", _event(time="9999-12-31T23:59:59-05:00"), "time"),
    ("time_underflows_to_utc", _event(time="0001-01-01T00:00:00+05:00"), "time"),
    ("created_at_overflows",
     _event(data={"provider": "p", "created_at": "9999-12-31T23:00:00-05:00"}), "created_at"),
    ("created_at_year_1", _event(data={"provider": "p", "created_at": "0001-01-01T00:00:00Z"}),
     "created_at"),
    ("count_over_int64", _event(type="sync.backfill.progressed",
                                data={"collection_id": "c", "records_synced": 2**63}),
     "records_synced"),
    ("retry_after_huge_int", _event(type="sync.rate_limited",
                                    data={"retry_after_seconds": 10**400}), "retry_after"),
    ("frequency_overflows", _event(data={"provider": "p", "sync_frequency": "99999999999d"}),
     "sync_frequency"),
    ("frequency_zero", _event(data={"provider": "p", "sync_frequency": "0m"}), "at least 1s"),
    ("frequency_zero_padded", _event(data={"provider": "p", "sync_frequency": "000s"}),
     "at least 1s"),
    ("frequency_unicode_digits", _event(data={"provider": "p", "sync_frequency": "٤h"}),
     "sync_frequency"),
    ("sequence_over_int64", _event(sequence=2**64), "sequence"),
]  # fmt: skip


@pytest.mark.parametrize(("raw", "word"), [d[1:] for d in DEAD], ids=[d[0] for d in DEAD])
def test_values_the_view_cannot_hold_are_dead_lettered(
    client: redis.Redis, raw: dict[str, Any], word: str
) -> None:
    message = RawMessage(TOPIC, 0, 0, b"k", _dumps(raw), [])
    prepared, _ = Processor(client, "dead", TOPIC).process([message])
    assert len(prepared.dead) == 1, "decoded a value the view cannot hold"
    assert word in prepared.dead[0].reason


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e999"])
def test_non_finite_numbers_are_not_json(client: redis.Redis, number: bytes) -> None:
    """NaN and Infinity are not JSON, and 1e400 is no finite float: such data cannot be
    stored as it was read, so it is dead-lettered instead of silently becoming null."""
    for data in (
        b'{"provider": "p", "metadata": {"x": %s}}' % number,
        b'{"provider": "p", "rate_limit": {"burst": %s}}' % number,
        b'{"provider": "p", "credential": {"properties": {"n": [%s]}}}' % number,
    ):
        value = _dumps(_event(data="DATA")).replace(b'"DATA"', data)
        message = RawMessage(TOPIC, 0, 0, b"k", value, [])
        assert len(Processor(client, "nan", TOPIC).prepare([message]).dead) == 1, data
        binary = RawMessage(TOPIC, 0, 0, b"k", data, [
            ("ce_specversion", b"1.0"), ("ce_id", b"n"), ("ce_source", b"s"),
            ("ce_type", b"sync.created"), ("ce_time", b"2024-01-01T00:00:00Z"),
            ("ce_subject", b"k"),
        ])  # fmt: skip
        assert len(Processor(client, "nan", TOPIC).prepare([binary]).dead) == 1, data
    rate = value.replace(b'"sync.created"', b'"sync.rate_limited"').replace(
        data, b'{"retry_after_seconds": %s}' % number
    )
    assert (
        len(Processor(client, "nan", TOPIC).prepare([RawMessage(TOPIC, 0, 0, b"k", rate, [])]).dead)
        == 1
    )


def test_bad_records_reach_the_dlq_topic_unchanged(
    topics: Any, redis_url: str, client: redis.Redis
) -> None:
    """End to end: the consumer forwards each unreadable record with its reason, and goes on,
    also past a record over the size limit (which the DLQ producer must be able to send)."""
    from kafka import KafkaConsumer, TopicPartition

    settings = fast_settings(topics, redis_url, "e2e")
    big = _dumps(_event(subject="s-ok", data={"provider": "p", "pad": "x" * 2 * MAX_MESSAGE_BYTES}))
    records = [
        (b"s-ok", big, [("trace", b"t1")]),
        (b"s-ok", b"\x00\x01 not json", [("weird \u2603", b"\xff"), ("ce_x", b"")]),
        (b"s-ok", _dumps(_event(subject="s-ok", time="2700-01-01T00:00:00Z", id="bad-time")), []),
        (b"s-ok", _dumps(_event(subject="s-ok", id="ok-1")), []),
    ]
    produced = produce_records(topics.bootstrap, topics.lifecycle, records, 8 << 20)
    got: list[Any] = []
    view = None
    with TestClient(create_app(settings)):
        consumer = KafkaConsumer(bootstrap_servers=topics.bootstrap, auto_offset_reset="earliest")
        consumer.assign([TopicPartition(topics.dlq, p) for p in range(topics.partitions)])
        deadline = time.monotonic() + 40
        while len(got) < 3 and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=300).values():
                got.extend(batch)
        consumer.close()
        while view is None and time.monotonic() < deadline:
            view = SyncViews("e2e").get(client, "s-ok")
            time.sleep(0.05)
    assert view is not None and view.provider == "stripe"
    assert len(got) == 3
    by_value = {r.value: r for r in got}
    for sent in produced[:3]:
        dead = by_value[sent.value]
        headers = dict(dead.headers)
        assert dead.key == sent.key
        assert [h for h in dead.headers if not h[0].startswith("syncmon_")] == list(sent.headers)
        assert headers["syncmon_error"]
        assert headers["syncmon_source_offset"] == str(sent.offset).encode()
        assert headers["syncmon_source_partition"] == str(sent.partition).encode()
    assert b"limit" in dict(by_value[big].headers)["syncmon_error"]
    assert b"time" in dict(by_value[produced[2].value].headers)["syncmon_error"]


# -- the API on bad requests -------------------------------------------------------------


@pytest.fixture
def api(redis_url: str, client: redis.Redis) -> Iterator[TestClient]:
    """An app without the consumer, over a Redis holding a few syncs."""
    settings = Settings(
        redis_url=redis_url, redis_prefix="api", kafka_topic=TOPIC, api_max_page=100
    )
    processor = Processor(client, "api", settings.kafka_topic)
    messages = [
        RawMessage(settings.kafka_topic, 0, i, sid.encode(), _dumps(
            _event(subject=sid, id=f"c-{sid}", data={"provider": "stripe", "org_id": "o"})
        ), [])
        for i, sid in enumerate(["a", "b", "c", "ü/✓"])
    ]  # fmt: skip
    prepared, _ = processor.process(messages)
    assert not prepared.dead
    with TestClient(create_app(settings, consume=False), follow_redirects=False) as c:
        yield c


def assert_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["message"] and isinstance(body["error"]["message"], str)
    if code is not None:
        assert body["error"]["code"] == code, body
    return body


@pytest.mark.parametrize(
    "limit", ["0", "-1", str(10**30), "-" + str(10**30), "abc", "1.5", "", "1e3", "NaN", "101"]
)
def test_bad_limits_are_400(api: TestClient, limit: str) -> None:
    body = assert_error(api.get("/v1/syncs", params={"limit": limit}), 400, "invalid_request")
    assert "limit" in body["error"]["message"]


def test_limits_within_range_page(api: TestClient) -> None:
    for limit, pages in ((1, 4), (3, 2), (100, 1)):
        seen, cursor = [], None
        for _ in range(pages):
            params: dict[str, Any] = {"limit": limit}
            if cursor:
                params["cursor"] = cursor
            page = api.get("/v1/syncs", params=params).json()
            seen += [s["id"] for s in page["data"]]
            cursor = page["next_cursor"]
        assert seen == ["a", "b", "c", "ü/✓"] and cursor is None


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


BAD_CURSORS = [
    "not base64!",
    "%%%",
    "====",
    "a",
    _b64(b"\x00\xff\xfe random bytes"),
    _b64(b"c1"),
    _b64(b"c2:a"),
    _b64("c1:\udcff".encode("utf-8", "surrogatepass")),
    base64.b64encode(b"c1:>>>").decode(),  # standard alphabet ("+"), not the URL-safe one
    "x" * 1025,
    "\u2603",
    "\x00",
]


@pytest.mark.parametrize("cursor", BAD_CURSORS, ids=range(len(BAD_CURSORS)))
def test_malformed_cursors_are_400(api: TestClient, cursor: str) -> None:
    response = api.get("/v1/syncs", params={"cursor": cursor})
    body = assert_error(response, 400)
    assert body["error"]["code"] in {"invalid_cursor", "invalid_request"}
    assert "cursor" in body["error"]["message"]


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(cursor=st.text(max_size=60) | st.binary(max_size=40).map(_b64))
def test_random_cursors_never_5xx(api: TestClient, cursor: str) -> None:
    response = api.get("/v1/syncs", params={"cursor": cursor})
    assert response.status_code in (200, 400), response.text
    if response.status_code == 400:
        assert_error(response, 400)
    else:
        assert set(response.json()) == {"data", "next_cursor"}


def test_a_cursor_from_another_filter_is_harmless(api: TestClient) -> None:
    """A cursor names a position (a sync id), so under another filter it just pages on."""
    first = api.get("/v1/syncs", params={"limit": 1, "org_id": "o"}).json()
    cursor = first["next_cursor"]
    assert cursor
    other = api.get("/v1/syncs", params={"limit": 10, "provider": "nope", "cursor": cursor})
    assert other.status_code == 200 and other.json() == {"data": [], "next_cursor": None}
    rest = api.get("/v1/syncs", params={"limit": 10, "status": "active", "cursor": cursor}).json()
    assert [s["id"] for s in rest["data"]] == ["b", "c", "ü/✓"]


@pytest.mark.parametrize(
    ("params", "word"),
    [
        ({"status": "paused"}, "status"),
        ({"health.status": "fine"}, "health.status"),
        ({"provider": "p" * 257}, "provider"),
        ({"org_id": "o" * 10_000}, "org_id"),
    ],
)
def test_bad_filters_are_400(api: TestClient, params: dict[str, str], word: str) -> None:
    body = assert_error(api.get("/v1/syncs", params=params), 400, "invalid_request")
    assert word in body["error"]["message"]


BAD_IDS = [
    "x" * (MAX_ID_LENGTH + 1),
    "x" * 20_000,
    "ünïcødé-☃-𝄞",
    "%00",
    "a%00b",
    "%0a%0d",
    "%1b[31m",
    "..%2F..%2Fetc%2Fpasswd",
    "%2F",
    "a%2Fb",
    "%25",
    "%ff%fe",
    "'; DROP TABLE syncs; --",
    "*",
    "syncmon:sync:a",
    "%09",
    "a%2Fhealth",
    "b%2F",
    "%2E",
    "%2E%2E",
    "",
]


@pytest.mark.parametrize("sync_id", BAD_IDS, ids=range(len(BAD_IDS)))
@pytest.mark.parametrize("suffix", ["", "/health"])
def test_odd_ids_are_clean_404s(api: TestClient, sync_id: str, suffix: str) -> None:
    response = api.get(f"/v1/syncs/{sync_id}{suffix}")
    body = assert_error(response, 404)
    assert body["error"]["code"] in {"not_found", "http_error"}


def test_ids_with_slashes_are_addressed_by_their_encoded_form(
    api: TestClient, client: redis.Redis
) -> None:
    """`x%2Fhealth` is the sync `x/health`, `x/health` the health of sync `x`."""
    topic = TOPIC
    messages = [
        RawMessage(topic, 1, i, sid.encode(), _dumps(
            _event(subject=sid, id=f"c-{sid}", data={"provider": "github", "name": sid})
        ), [])
        for i, sid in enumerate(["x", "x/health", "ü/✓/z"])
    ]  # fmt: skip
    assert not Processor(client, "api", topic).process(messages)[0].dead
    plain = api.get("/v1/syncs/x").json()
    assert plain["id"] == "x" and plain["name"] == "x"
    slashed = api.get("/v1/syncs/x%2Fhealth")
    assert slashed.status_code == 200 and slashed.json()["name"] == "x/health"
    assert slashed.json()["health"]["sync_id"] == "x/health"
    health = api.get("/v1/syncs/x/health").json()
    assert health["sync_id"] == "x" and "checks" in health
    assert api.get("/v1/syncs/x%2Fhealth/health").json()["sync_id"] == "x/health"
    deep = api.get("/v1/syncs/%C3%BC%2F%E2%9C%93%2Fz")
    assert deep.status_code == 200 and deep.json()["id"] == "ü/✓/z"
    assert api.get("/v1/syncs/%C3%BC%2F%E2%9C%93%2Fz/health").json()["sync_id"] == "ü/✓/z"
    assert_error(api.get("/v1/syncs/%C3%BC/%E2%9C%93%2Fz"), 404, "not_found")
    assert api.get("/v1/syncs/%C3%BC%2F%E2%9C%93").json()["id"] == "ü/✓"
    listed = [s["id"] for s in api.get("/v1/syncs", params={"provider": "github"}).json()["data"]]
    assert listed == ["x", "x/health", "ü/✓/z"]


@pytest.mark.parametrize("path", ["/v1/syncs", "/v1/syncs/a", "/v1/summary"])
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_wrong_methods_are_405_json(api: TestClient, path: str, method: str) -> None:
    assert_error(api.request(method, path), 405, "http_error")


def test_unknown_paths_are_404_json(api: TestClient) -> None:
    for path in ("/v2/syncs", "/v1", "/v1/syncs/a/b/c", "/" + "x" * 5000):
        assert_error(api.get(path), 404)


def test_header_junk_never_5xx(api: TestClient) -> None:
    for value in ("Bearer", "Bearer " + "x" * 10_000, "Basic ???", "\u00ff", "Bearer \u00e9"):
        response = api.get("/v1/syncs", headers={"Authorization": value.encode("latin-1")})  # type: ignore[dict-item]
        assert response.status_code == 200


def test_printable_query_junk_never_5xx(api: TestClient) -> None:
    for junk in (string.printable, "\x00", "%00", "a" * 5000):
        for name in ("provider", "org_id", "stream_id", "cursor", "limit", "status", junk[:20]):
            response = api.get("/v1/syncs", params={name: junk})
            assert response.status_code < 500, (name, junk, response.text)
            if response.status_code != 200:
                assert_error(response, response.status_code)


def test_an_unexpected_reader_error_is_dead_lettered(
    client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever goes wrong while reading a record, it must not halt the partition."""
    import consumers.decode

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise OverflowError("a bug")

    monkeypatch.setattr(consumers.decode.EVENT_ADAPTER, "validate_python", broken)
    good = RawMessage(TOPIC, 0, 0, b"s-big", _dumps(_event()), [])
    prepared, result = Processor(client, "bug", TOPIC).process([good])
    assert [d.reason for d in prepared.dead] == ["unreadable (OverflowError)"]
    assert result.counts == Counter({("unknown", "invalid"): 1})
