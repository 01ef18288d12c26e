"""Events into the real broker, views out of the real API: the whole path, in one process."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from consumers.records import RawName
from monitor.app import create_app
from monitor.settings import Settings
from tests.eventlib import cloudevent, encode, encode_binary, iso, lifecycle, recent
from tests.support import fast_settings, wait_for

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def settings(topics: Any, redis_url: str) -> Settings:
    return fast_settings(topics, redis_url, "it", api_tokens=(TOKEN,))


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


def produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes, list[Any]]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for key, value, headers in records:
        producer.send(topic, key=key, value=value, headers=headers)
    producer.flush()
    producer.close()


def test_events_in_api_out(settings: Settings, client: TestClient) -> None:
    recent(7)  # the last run succeeded a minute ago: healthy for four more minutes
    events = lifecycle("sync-a", "stripe") + lifecycle("sync-b", "hubspot")
    records = [encode(e) if e["subject"] == "sync-a" else encode_binary(e) for e in events]
    produce(settings.kafka_bootstrap_servers, settings.kafka_topic, records)

    def both_healthy() -> bool:
        page = client.get("/v1/syncs", params={"health.status": "healthy"}, headers=AUTH).json()
        return {s["id"] for s in page["data"]} == {"sync-a", "sync-b"}

    wait_for(both_healthy)
    body = client.get("/v1/syncs/sync-a", headers=AUTH).json()
    seed_fields = {
        "id", "provider", "stream_id", "name", "status", "org_id", "health", "collection_ids",
        "rate_limit", "credential_id", "credential", "max_age_days", "sync_frequency",
        "initial_backfill_completed_at", "metadata", "created_at", "updated_at",
    }  # fmt: skip
    assert seed_fields <= body.keys()
    health = body["health"]
    assert health["status"] == "healthy" and health["sync_id"] == "sync-a"
    assert health["credential"] == {"status": "valid", "notes": [], "time": None}, health
    assert health["provider"] == {"status": "operational", "notes": []}
    assert health["erroring_since"] is None and health["last_healthy_at"]
    detail = client.get("/v1/syncs/sync-a/health", headers=AUTH).json()
    assert [c["name"] for c in detail["checks"]] == [
        "freshness", "failures", "credential", "rate_limit", "provider", "backfill", "activity",
    ]  # fmt: skip
    assert {c["status"] for c in detail["checks"]} == {"healthy"}
    summary = client.get("/v1/summary", headers=AUTH).json()
    assert summary["total"] == 2 and summary["by_health"]["healthy"] == 2
    assert summary["by_provider"]["hubspot"] == {
        "total": 1,
        "by_health": {"healthy": 1, "initializing": 0, "warn": 0, "error": 0, "paused": 0},
    }
    assert body["credential"]["properties"]["secret"] == "***********"
    assert body["created_at"] == iso(0)
    assert body["initial_backfill_completed_at"] == iso(3)
    assert body["rate_limit"] == {
        "allowed_requests": 1000,
        "interval": 60,
        "max_concurrent_requests": 0,
    }
    assert body["backfill"]["collections"][0]["ratio"] == 1.0

    binary = client.get("/v1/syncs/sync-b", headers=AUTH).json()
    assert binary["provider"] == "hubspot" and binary["last_run"]["records_upserted"] == 5

    # filters, pagination and errors
    only = client.get("/v1/syncs", params={"provider": "hubspot"}, headers=AUTH).json()
    assert [s["id"] for s in only["data"]] == ["sync-b"] and only["next_cursor"] is None
    first = client.get("/v1/syncs", params={"limit": 1}, headers=AUTH).json()
    assert [s["id"] for s in first["data"]] == ["sync-a"] and first["next_cursor"]
    second = client.get(
        "/v1/syncs", params={"limit": 1, "cursor": first["next_cursor"]}, headers=AUTH
    ).json()
    assert [s["id"] for s in second["data"]] == ["sync-b"] and second["next_cursor"] is None
    combined = client.get(
        "/v1/syncs",
        params={"provider": "stripe", "org_id": "org-1", "status": "active"},
        headers=AUTH,
    ).json()
    assert [s["id"] for s in combined["data"]] == ["sync-a"]

    assert client.get("/v1/syncs/sync-a").status_code == 401
    assert (
        client.get("/v1/syncs/sync-a", headers={"Authorization": "Bearer nope"}).status_code == 401
    )
    missing = client.get("/v1/syncs/nope", headers=AUTH)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    bad = client.get("/v1/syncs", params={"cursor": "%%%"}, headers=AUTH)
    assert bad.status_code == 400 and "error" in bad.json()
    assert client.get("/v1/syncs", params={"limit": 100000}, headers=AUTH).status_code == 400
    assert client.get("/healthz").status_code == 200
    wait_for(lambda: client.get("/readyz").status_code == 200)
    assert client.get("/openapi.json").json()["info"]["title"] == "syncmon"

    # a disable shows as paused, a delete removes the sync from view, list and indexes
    produce(
        settings.kafka_bootstrap_servers,
        settings.kafka_topic,
        [
            encode(
                cloudevent(
                    "sync.disabled", "sync-a", {"reason": "customer request"}, minute=9, sequence=20
                )
            ),
            encode(cloudevent("sync.deleted", "sync-b", {}, minute=9, sequence=20)),
        ],
    )
    wait_for(lambda: client.get("/v1/syncs/sync-b", headers=AUTH).status_code == 404)
    paused = wait_for(
        lambda: (
            (b := client.get("/v1/syncs/sync-a", headers=AUTH).json())["health"]["status"]
            == "paused"
            and b
        )
    )
    assert paused["status"] == "disabled" and paused["disabled_reason"] == "customer request"
    listed = client.get("/v1/syncs", headers=AUTH).json()
    assert [s["id"] for s in listed["data"]] == ["sync-a"]
    assert (
        client.get("/v1/syncs", params={"health.status": "healthy"}, headers=AUTH).json()["data"]
        == []
    )


def read_topic(bootstrap: str, topic: str, partitions: int, expected: int) -> list[Any]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
    out: list[Any] = []
    deadline = time.monotonic() + 20
    while len(out) < expected and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            out.extend(batch)
    consumer.close()
    return out


def test_poison_messages_go_to_the_dlq_and_the_stream_goes_on(
    settings: Settings, client: TestClient
) -> None:
    good = lifecycle("sync-ok")
    bad_json = (b"sync-x", b"{not json", [("trace", b"abc")])
    bad_utf8 = (b"sync-x", b"\xff\xfe\x00", [])
    missing_attr = encode(
        {k: v for k, v in cloudevent("sync.created", "sync-x").items() if k != "time"}
    )
    wrong_type = encode(cloudevent("sync.run.succeeded", "sync-ok", {"run_id": 5}))
    unknown = encode(cloudevent("sync.teleported", "sync-ok", {"to": "mars"}))
    records = [*map(encode, good[:2]), bad_json, bad_utf8, missing_attr, wrong_type, unknown]
    records += [encode(e) for e in good[2:]]
    produce(settings.kafka_bootstrap_servers, settings.kafka_topic, records)

    wait_for(
        lambda: (
            client.get("/v1/syncs/sync-ok", headers=AUTH).json().get("health", {}).get("status")
            == "healthy"
        )
    )
    dead = read_topic(settings.kafka_bootstrap_servers, settings.kafka_dlq_topic, 3, expected=4)
    assert len(dead) == 4
    by_value = {m.value: m for m in dead}
    assert set(by_value) == {bad_json[1], bad_utf8[1], missing_attr[1], wrong_type[1]}
    poisoned = by_value[bad_json[1]]
    headers = dict(poisoned.headers)
    assert poisoned.key == b"sync-x" and headers["trace"] == b"abc"
    assert b"JSON" in headers["syncmon_error"]
    assert (
        int(headers["syncmon_source_offset"]) >= 0 and headers["syncmon_source_partition"].isdigit()
    )
    assert b"time" in dict(by_value[missing_attr[1]].headers)["syncmon_error"]


def test_a_header_name_that_is_not_utf8_is_dead_lettered_unchanged_and_the_stream_goes_on(
    settings: Settings, client: TestClient
) -> None:
    """kafka-python alone fails every fetch of such a record as corrupt, for good: the
    partition (and, as the consumer restarts, every partition) would never move again."""
    recent(7)  # the last run succeeded a minute ago: healthy for four more minutes
    good = lifecycle("sync-raw")
    name = RawName(b"trace-\xff".decode("utf-8", "surrogateescape"))  # as a Go producer sends
    bad = (b"sync-raw", encode(good[2])[1], [(name, b"x"), ("plain", b"y")])
    records = [*map(encode, good[:2]), bad, *map(encode, good[2:])]
    produce(settings.kafka_bootstrap_servers, settings.kafka_topic, records)

    wait_for(
        lambda: (
            client.get("/v1/syncs/sync-raw", headers=AUTH).json().get("health", {}).get("status")
            == "healthy"
        )
    )
    dead = read_topic(settings.kafka_bootstrap_servers, settings.kafka_dlq_topic, 3, expected=1)
    assert len(dead) == 1
    letter = dead[0]
    assert (letter.key, letter.value) == (bad[0], bad[1])
    names = [(k.encode("utf-8"), v) for k, v in letter.headers]
    assert names[:2] == [(b"trace-\xff", b"x"), (b"plain", b"y")]  # the very bytes received
    assert dict(letter.headers)["syncmon_error"] == b"a header name is not UTF-8"
    counts = client.get("/metrics").text
    assert 'syncmon_events_total{type="unknown",outcome="invalid"} 1' in counts.splitlines()
