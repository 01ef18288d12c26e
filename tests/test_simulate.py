"""Unit tests for the event simulator (no services: Kafka is replaced by a fake producer)."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import monitor.simulate as sim
from monitor.enums import EventType
from monitor.simdata import MASKED_WORDS, PROVIDERS, Fleet, secret_keys
from monitor.simulate import LiveFeed, Message, decode, history, iter_history, live

START = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
REQUIRED = ("specversion", "id", "source", "type", "time", "subject")
SEED_FIELDS = {
    "provider",
    "stream_id",
    "name",
    "status",
    "org_id",
    "collection_ids",
    "rate_limit",
    "credential_id",
    "credential",
    "max_age_days",
    "sync_frequency",
    "metadata",
    "created_at",
    "updated_at",
}
# contract section 1: keys each type's data must carry (optional ones are not listed)
DATA_KEYS: dict[EventType, set[str]] = {
    EventType.SYNC_CREATED: SEED_FIELDS,
    EventType.SYNC_UPDATED: set(),
    EventType.SYNC_DISABLED: set(),
    EventType.SYNC_ENABLED: set(),
    EventType.SYNC_DELETED: set(),
    EventType.RUN_STARTED: {"run_id"},
    EventType.RUN_SUCCEEDED: {"run_id", "records_upserted", "records_deleted", "duration_ms"},
    EventType.RUN_FAILED: {"run_id", "error"},
    EventType.CREDENTIAL_FAILED: {"http_status", "message"},
    EventType.CREDENTIAL_RECOVERED: set(),
    EventType.RATE_LIMITED: {"retry_after_seconds"},
    EventType.BACKFILL_STARTED: set(),
    EventType.BACKFILL_PROGRESSED: {"collection_id", "records_synced"},
    EventType.BACKFILL_COLLECTION_COMPLETED: {"collection_id", "records_synced"},
    EventType.PROVIDER_INCIDENT_OPENED: {"incident_id", "notes"},
    EventType.PROVIDER_INCIDENT_RESOLVED: {"incident_id"},
}


@pytest.fixture(scope="module")
def big() -> list[Message]:
    """One large history shared by the coverage tests (about 0.3 s to build)."""
    return history(50, 20_000, 7, START, 1.0)


def _events(msgs: list[Message]) -> list[dict[str, Any]]:
    return [decode(m) for m in msgs]


def test_deterministic_for_a_seed() -> None:
    a = history(20, 2_000, 11, START, 0.5)
    b = history(20, 2_000, 11, START, 0.5)
    assert [(m.key, m.value, m.headers) for m in a] == [(m.key, m.value, m.headers) for m in b]
    c = history(20, 2_000, 12, START, 0.5)
    assert [m.value for m in a] != [m.value for m in c]


def test_binary_ratio_changes_only_the_encoding() -> None:
    structured = _events(history(10, 1_000, 3, START, 1.0, binary_ratio=0.0))
    binary = _events(history(10, 1_000, 3, START, 1.0, binary_ratio=1.0))
    assert structured == [{**e, "datacontenttype": "application/json"} for e in binary]


@pytest.mark.parametrize(("syncs", "events"), [(1, 1), (5, 3), (3, 500), (100, 101), (10, 0)])
def test_history_returns_exactly_the_requested_count(syncs: int, events: int) -> None:
    msgs = history(syncs, events, 1, START, 1.0)
    assert len(msgs) == events
    created = {e["subject"] for e in _events(msgs) if e["type"] == EventType.SYNC_CREATED}
    assert len(created) >= min(syncs, events)


def test_every_sync_is_created_and_times_advance_by_step() -> None:
    msgs = history(300, 3_000, 5, START, 2.5)
    events = _events(msgs)
    for i, e in enumerate(events):
        assert datetime.fromisoformat(e["time"]) == START + timedelta(seconds=2.5 * i)
    created = Counter(e["type"] for e in events)[EventType.SYNC_CREATED]
    deleted = Counter(e["type"] for e in events)[EventType.SYNC_DELETED]
    assert created - deleted == 300  # deletions come with a replacement


def test_created_first_sequences_increase_and_nothing_after_delete(big: list[Message]) -> None:
    last_seq: dict[str, int] = {}
    deleted: set[str] = set()
    for m in big:
        e = decode(m)
        subject, etype = e["subject"], EventType(e["type"])
        assert subject not in deleted, "event after sync.deleted"
        if subject not in last_seq and not etype.is_provider_event:
            assert etype is EventType.SYNC_CREATED, f"first event of {subject} is {etype}"
        assert e["sequence"] == last_seq.get(subject, 0) + 1
        last_seq[subject] = e["sequence"]
        if etype is EventType.SYNC_DELETED:
            deleted.add(subject)


def test_every_event_type_appears(big: list[Message]) -> None:
    seen = {decode(m)["type"] for m in big}
    assert seen == {t.value for t in EventType}


def test_every_event_is_a_valid_cloudevent(big: list[Message]) -> None:
    ids: set[str] = set()
    for m in big:
        headers = dict(m.headers)
        if "ce_specversion" not in headers:
            assert headers["content-type"] == b"application/cloudevents+json"
            raw = json.loads(m.value)
            assert set(REQUIRED) <= raw.keys()
        e = decode(m)
        assert e["specversion"] == "1.0"
        assert e["source"] == sim.SOURCE
        assert e["datacontenttype"] == "application/json"
        assert e["id"] not in ids
        ids.add(e["id"])
        assert e["time"].endswith("Z")
        assert datetime.fromisoformat(e["time"]).tzinfo is not None
        assert isinstance(e["sequence"], int) and e["sequence"] >= 1
        assert m.key == e["subject"].encode()
        etype = EventType(e["type"])
        assert isinstance(e["data"], dict)
        assert DATA_KEYS[etype] <= e["data"].keys(), (etype, e["data"])
        if etype is EventType.RUN_FAILED:
            assert {"code", "message", "retryable"} <= e["data"]["error"].keys()
        if etype is EventType.SYNC_CREATED:
            assert e["data"]["id"] == e["subject"]
            assert e["data"]["created_at"] == e["data"]["updated_at"] == e["time"]
            assert all(
                c.startswith(e["data"]["provider"] + ":") for c in e["data"]["collection_ids"]
            )
        if etype.is_provider_event:
            assert e["subject"] in PROVIDERS


def test_updates_are_merge_patches_including_removals(big: list[Message]) -> None:
    patches = [e["data"] for e in _events(big) if e["type"] == EventType.SYNC_UPDATED]
    assert patches and all("updated_at" in p for p in patches)
    assert any(v is None for p in patches for v in p.get("metadata", {}).values())
    assert any("name" in p for p in patches)
    assert any("credential" in p for p in patches)


def test_raw_secrets_are_sent_unmasked(big: list[Message]) -> None:
    words: set[str] = set()
    for e in _events(big):
        if e["type"] != EventType.SYNC_CREATED:
            continue
        cred = e["data"]["credential"]
        assert cred["id"] == e["data"]["credential_id"]
        assert set(cred) == {
            "id",
            "provider",
            "properties",
            "oauth_app_id",
            "oauth_app",
            "metadata",
            "created_at",
            "updated_at",
        }
        keys = secret_keys(cred["properties"])
        assert keys, cred["properties"]
        for k in keys:
            value = cred["properties"][k]
            assert isinstance(value, str) and len(value) >= 16 and "*" * 5 not in value
            words.update(w for w in MASKED_WORDS if w in k)
    assert words == set(MASKED_WORDS)  # every masking rule gets exercised


def test_binary_mode_headers_and_data_only_value() -> None:
    msgs = history(10, 500, 2, START, 1.0, binary_ratio=1.0)
    for m in msgs:
        h = dict(m.headers)
        assert {
            "ce_specversion",
            "ce_id",
            "ce_type",
            "ce_source",
            "ce_time",
            "ce_subject",
            "ce_sequence",
            "content-type",
        } <= h.keys()
        assert h["ce_specversion"] == b"1.0"
        assert h["content-type"] == b"application/json"
        assert h["ce_sequence"].decode().isdigit()
        assert h["ce_subject"] == m.key
        value = json.loads(m.value)
        assert "specversion" not in value and value == decode(m)["data"]


def test_default_binary_ratio_is_about_a_tenth() -> None:
    msgs = history(20, 4_000, 9, START, 1.0)
    share = sum("ce_specversion" in dict(m.headers) for m in msgs) / len(msgs)
    assert 0.07 < share < 0.13


def test_fleet_shape() -> None:
    fleet = Fleet(200, 4)
    assert len(fleet.syncs) == 200
    assert 1 < len(fleet.orgs) < 20
    assert len({s.id for s in fleet.syncs}) == 200
    assert {s.sync_frequency for s in fleet.syncs} == {"continuous", "4h"}
    assert any(s.max_age_days is None for s in fleet.syncs)
    assert len({s.provider for s in fleet.syncs}) >= 8
    for s in fleet.syncs:
        assert s.name.startswith(s.org.company + " - ")
        assert s.stream_id in s.org.streams
        assert set(s.rate_limit) == {"allowed_requests", "interval", "max_concurrent_requests"}
    assert len({s.profile for s in fleet.syncs}) == 6


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        history(0, 10, 1, START, 1.0)
    with pytest.raises(ValueError):
        history(1, 10, 1, START, 1.0, binary_ratio=1.5)


def test_live_feed_shows_variety_within_a_minute() -> None:
    feed = LiveFeed(30, 5, START)
    msgs = feed.poll(START + timedelta(seconds=60))
    assert feed.poll(START + timedelta(seconds=60)) == []
    events = _events(msgs)
    types = {e["type"] for e in events}
    assert {
        EventType.SYNC_CREATED,
        EventType.BACKFILL_COLLECTION_COMPLETED,
        EventType.RUN_SUCCEEDED,
        EventType.RUN_FAILED,
    } <= types
    assert types & {EventType.SYNC_DISABLED, EventType.CREDENTIAL_FAILED}
    times = [datetime.fromisoformat(e["time"]) for e in events]
    assert times == sorted(times) and times[-1] <= START + timedelta(seconds=60)
    assert sum(e["type"] == EventType.SYNC_CREATED for e in events) == 30
    nd = feed.next_due()
    assert nd is not None and nd > (START + timedelta(seconds=60)).timestamp()
    same = LiveFeed(30, 5, START).poll(START + timedelta(seconds=60))
    assert [m.value for m in same] == [m.value for m in msgs]


def test_live_feed_runs_follow_frequency() -> None:
    feed = LiveFeed(40, 8, START)
    events = _events(feed.poll(START + timedelta(minutes=30)))
    freq = {
        e["subject"]: e["data"]["sync_frequency"]
        for e in events
        if e["type"] == EventType.SYNC_CREATED
    }
    runs: dict[str, int] = defaultdict(int)
    for e in events:
        if e["type"] == EventType.RUN_STARTED:
            runs[e["subject"]] += 1
    cont = [runs[s] for s, f in freq.items() if f == "continuous" and runs[s]]
    slow = [runs[s] for s, f in freq.items() if f == "4h" and runs[s]]
    assert cont and slow
    assert max(slow) < sorted(cont)[len(cont) // 2]  # "4h" runs far less often


def test_live_iterator_uses_the_given_clock() -> None:
    now = [START]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += timedelta(seconds=max(s, 0.1))

    it = live(5, 1, clock=lambda: now[0], sleep=sleep)
    first = [decode(next(it)) for _ in range(20)]
    assert first[0]["type"] == EventType.SYNC_CREATED
    assert slept and all(0 <= s <= 1.0 for s in slept)
    assert datetime.fromisoformat(first[-1]["time"]) <= now[0]


def test_iter_history_matches_history() -> None:
    assert [m.value for m in iter_history(5, 300, 4, START, 1.0)] == [
        m.value for m in history(5, 300, 4, START, 1.0)
    ]


# --- run(): the producer loop, against a fake KafkaProducer -------------------------------


class _Future:
    def __init__(self, error: BaseException | None) -> None:
        self.error = error

    def add_callback(self, f: Any, *args: Any) -> _Future:
        if self.error is None:
            f(*args, None)
        return self

    def add_errback(self, f: Any, *args: Any) -> _Future:
        if self.error is not None:
            f(*args, self.error)
        return self


class FakeProducer:
    """Acks immediately; can fail deliveries or block sends to exercise the retry paths."""

    def __init__(self, fail_first: int = 0, block_first: int = 0) -> None:
        self.sent: list[tuple[str, bytes, bytes, list[tuple[str, bytes]]]] = []
        self.fail_first, self.block_first = fail_first, block_first
        self.flushed = self.closed = False

    def send(
        self, topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]]
    ) -> _Future:
        from kafka.errors import KafkaError, KafkaTimeoutError

        if self.block_first:
            self.block_first -= 1
            raise KafkaTimeoutError("metadata not available")
        if self.fail_first:
            self.fail_first -= 1
            return _Future(KafkaError("broker went away"))
        self.sent.append((topic, key, value, headers))
        return _Future(None)

    def flush(self, timeout: float | None = None) -> None:
        self.flushed = True

    def close(self, timeout: float | None = None) -> None:
        self.closed = True


def _fake(monkeypatch: pytest.MonkeyPatch, producer: FakeProducer) -> None:
    monkeypatch.setattr(sim, "_connect", lambda *a: producer)
    monkeypatch.setattr(sim, "RETRY_BACKOFF", 0.01)


def test_run_stops_at_max_events(monkeypatch: pytest.MonkeyPatch) -> None:
    producer = FakeProducer()
    _fake(monkeypatch, producer)
    n = sim.run("x:1", "sync.lifecycle", 500, 10_000.0, 3, 10.0, 25, 0.1, None)
    assert n == 25 and len(producer.sent) == 25
    assert producer.flushed and producer.closed
    assert {t for t, *_ in producer.sent} == {"sync.lifecycle"}
    assert decode(Message(*producer.sent[0][1:])).get("type") == EventType.SYNC_CREATED


def test_run_sends_the_warmup_backlog_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    producer = FakeProducer()
    _fake(monkeypatch, producer)
    t0 = time.monotonic()
    assert sim.run("x:1", "t", 5, 1_000.0, 3, 30.0, 60, 0.1, None) == 60
    assert time.monotonic() - t0 < 2.0
    times = [decode(Message(k, v, h))["time"] for _, k, v, h in producer.sent]
    assert times == sorted(times)
    assert datetime.fromisoformat(times[0]) < datetime.now(UTC) - timedelta(seconds=200)


def test_run_is_rate_limited(monkeypatch: pytest.MonkeyPatch) -> None:
    producer = FakeProducer()
    _fake(monkeypatch, producer)
    t0 = time.monotonic()
    n = sim.run("x:1", "t", 500, 40.0, 1, 1.0, None, 0.1, None)
    assert 0.9 < time.monotonic() - t0 < 2.0
    assert 25 <= n <= 45  # 40/s for one second plus a small burst


def test_run_stops_on_event(monkeypatch: pytest.MonkeyPatch) -> None:
    producer = FakeProducer()
    _fake(monkeypatch, producer)
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    t0 = time.monotonic()
    sim.run("x:1", "t", 5, 100.0, 1, None, None, 0.1, stop)
    assert time.monotonic() - t0 < 2.0


def test_run_resends_failed_and_blocked_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    producer = FakeProducer(fail_first=3, block_first=2)
    _fake(monkeypatch, producer)
    n = sim.run("x:1", "t", 1000, 10_000.0, 6, 10.0, 30, 0.0, None)
    assert n == 30
    seqs: dict[bytes, list[int]] = defaultdict(list)
    for _, key, value, _ in producer.sent:
        seqs[key].append(json.loads(value)["sequence"])
    assert all(s == sorted(s) for s in seqs.values())


def test_run_returns_zero_when_kafka_never_comes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sim, "_connect", lambda *a: None)
    assert sim.run("x:1", "t", 5, 10.0, 1, 0.1, None, 0.1, None) == 0
