"""`/metrics` against real Redis and the broker: series per sync, cardinality modes, auth."""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from consumers.decode import RawMessage
from consumers.processor import Processor
from monitor.app import SCRAPE_REDIS_TIMEOUT, create_app
from monitor.metrics import MAX_LABEL, Selection, SyncmonCollector
from monitor.services import RedisServer
from monitor.settings import Settings
from tests.eventlib import cloudevent, encode, lifecycle, produce_records, recent
from tests.support import fast_settings


def settings_for(topics: Any, redis_url: str, **extra: Any) -> Settings:
    return fast_settings(topics, redis_url, "m", health_tick_seconds=0.2, **extra)


def scrape(client: TestClient, **headers: str) -> dict[str, list[Any]]:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    samples: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def wait_for(fn: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := fn()):
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.1)
    return result


def feed(topics: Any) -> None:
    recent(7)
    events = lifecycle("sync-a", "stripe") + lifecycle("sync-b", "hubspot")
    events.append(
        cloudevent("sync.credential.failed", "sync-b", {"http_status": 401, "message": "revoked"},
                   minute=6.5, sequence=30)
    )  # fmt: skip
    events.append(cloudevent("sync.teleported", "sync-a", {}, minute=6.6))
    records = [encode(e) for e in events] + [(b"sync-x", b"not json", [])]
    produce_records(topics.bootstrap, topics.lifecycle, records)


def test_every_contract_metric_per_sync_and_a_delete_leaves_no_series(
    topics: Any, redis_url: str
) -> None:
    with TestClient(create_app(settings_for(topics, redis_url))) as client:
        feed(topics)
        wait_for(lambda: len(scrape(client).get("syncmon_sync_info", [])) == 2)
        m = wait_for(
            lambda: (s := scrape(client))
            and any(x.labels["status"] == "error" and x.value == 1
                    for x in s["syncmon_sync_health_status"] if x.labels["sync_id"] == "sync-b")
            and s
        )  # fmt: skip
        info = {s.labels["sync_id"]: s.labels for s in m["syncmon_sync_info"]}
        assert info["sync-a"]["provider"] == "stripe" and info["sync-a"]["org_id"] == "org-1"
        assert info["sync-a"]["sync_frequency"] == "continuous" and info["sync-a"]["name"]
        states = [s for s in m["syncmon_sync_health_status"] if s.labels["sync_id"] == "sync-a"]
        assert sorted(s.labels["status"] for s in states) == sorted(
            ["healthy", "warn", "error", "initializing", "paused"]
        )
        assert {s.labels["status"]: s.value for s in states}["healthy"] == 1
        assert sum(s.value for s in states) == 1
        by_sync = {
            name: {s.labels["sync_id"]: s.value for s in m[name]}
            for name in (
                "syncmon_sync_last_success_timestamp_seconds",
                "syncmon_sync_backfill_completed",
                "syncmon_sync_consecutive_failures",
                "syncmon_sync_credential_failed",
            )
        }
        assert by_sync["syncmon_sync_backfill_completed"] == {"sync-a": 1, "sync-b": 1}
        assert by_sync["syncmon_sync_credential_failed"] == {"sync-a": 0, "sync-b": 1}
        assert (
            abs(by_sync["syncmon_sync_last_success_timestamp_seconds"]["sync-a"] - time.time())
            < 600
        )
        checks = {
            (s.labels["sync_id"], s.labels["check"]): s.labels["status"]
            for s in m["syncmon_sync_check_status"]
        }
        assert checks[("sync-b", "credential")] == "error"
        assert ("sync-a", "credential") not in checks  # only checks that are not healthy
        syncs = {(s.labels["provider"], s.labels["health"]): s.value for s in m["syncmon_syncs"]}
        assert syncs[("hubspot", "error")] == 1 and syncs[("stripe", "healthy")] == 1
        assert len(syncs) == 10  # every provider with all five statuses
        events = {
            (s.labels["type"], s.labels["outcome"]): s.value for s in m["syncmon_events_total"]
        }
        assert events[("sync.created", "applied")] == 2
        assert events[("unknown", "ignored")] == 1 and events[("unknown", "invalid")] == 1
        assert m["syncmon_dead_letters_total"][0].value == 1
        assert m["syncmon_build_info"][0].value == 1
        assert m["syncmon_consumer_in_group"][0].value == 1
        assert m["syncmon_redis_connected"][0].value == 1
        assert "syncmon_event_age_seconds_bucket" in m
        assert "syncmon_consumer_lag" in m
        secrets = client.get("/metrics").text
        assert "PLANTED_SECRET" not in secrets

        produce_records(
            topics.bootstrap,
            topics.lifecycle,
            [encode(cloudevent("sync.deleted", "sync-b", {}, minute=7, sequence=40))],
        )
        # one scrape reads the counts and the rows one after the other, not as a snapshot:
        # wait until both show the delete
        gone = wait_for(
            lambda: (
                (s := scrape(client))
                and all(x.labels["sync_id"] != "sync-b" for x in s["syncmon_sync_info"])
                and any(
                    x.labels == {"provider": "hubspot", "health": "error"} and x.value == 0
                    for x in s["syncmon_syncs"]
                )
                and s
            )
        )
        for name, samples in gone.items():
            assert all(s.labels.get("sync_id") != "sync-b" for s in samples), name
        syncs = {(s.labels["provider"], s.labels["health"]): s.value for s in gone["syncmon_syncs"]}
        assert syncs[("hubspot", "error")] == 0


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"metrics_per_sync": "none"}, set()),
        ({"metrics_per_sync": "unhealthy"}, {"sync-b"}),
        ({"metrics_providers_deny": ("hubspot",)}, {"sync-a"}),
        ({"metrics_providers_allow": ("hubspot",)}, {"sync-b"}),
        ({"metrics_orgs_deny": ("org-1",)}, set()),
    ],
)
def test_cardinality_modes(
    topics: Any, redis_url: str, extra: dict[str, Any], expected: set[str]
) -> None:
    with TestClient(create_app(settings_for(topics, redis_url, **extra))) as client:
        feed(topics)
        wait_for(lambda: sum(s.value for s in scrape(client).get("syncmon_syncs", [])) == 2)
        wait_for(
            lambda: any(s.labels["health"] == "error" and s.value == 1
                        for s in scrape(client)["syncmon_syncs"])
        )  # fmt: skip
        m = scrape(client)
        assert {s.labels["sync_id"] for s in m.get("syncmon_sync_info", [])} == expected
        assert sum(s.value for s in m["syncmon_syncs"]) == 2  # aggregates always


def test_metrics_basic_auth(topics: Any, redis_url: str) -> None:
    settings = settings_for(topics, redis_url, metrics_basic_auth="prom:s3cret")
    with TestClient(create_app(settings)) as client:
        assert client.get("/metrics").status_code == 401
        bad = base64.b64encode(b"prom:nope").decode()
        assert client.get("/metrics", headers={"Authorization": f"Basic {bad}"}).status_code == 401
        good = base64.b64encode(b"prom:s3cret").decode()
        assert scrape(client, Authorization=f"Basic {good}")["syncmon_build_info"]


def _fold(url: str, prefix: str, events: list[dict[str, Any]], offset: int = 0) -> None:
    """Events through the real Processor and one sweep, as the consumer and scheduler do."""
    messages = [RawMessage("t", 0, offset + i, *encode(e)) for i, e in enumerate(events)]
    with redis.Redis.from_url(url) as r:
        processor = Processor(r, prefix, "t")
        prepared, _ = processor.process(messages)
        assert not prepared.dead, prepared.dead
        processor.engine.sweep(r, [0])


def _render(url: str, prefix: str) -> dict[str, list[Any]]:
    with redis.Redis.from_url(url) as r:
        text = SyncmonCollector(r, prefix, Selection(per_sync="all")).render().decode()
    samples: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def test_backfill_progress_counts_every_required_collection(redis_url: str) -> None:
    """One of four collections complete is 25%, not the 100% of the one heard of."""
    recent(5)
    created = {"provider": "stripe", "collection_ids": ["c1", "c2", "c3", "c4"]}
    done = {"collection_id": "c1", "records_synced": 10}
    _fold(redis_url, "bf", [
        cloudevent("sync.created", "s1", created, minute=0),
        cloudevent("sync.backfill.collection_completed", "s1", done, minute=1),
    ])  # fmt: skip
    m = _render(redis_url, "bf")
    assert [s.value for s in m["syncmon_sync_backfill_progress_ratio"]] == [0.25]
    assert [s.value for s in m["syncmon_sync_backfill_completed"]] == [0]


def test_label_values_stay_bounded(redis_url: str) -> None:
    """A sync's name is cut to MAX_LABEL characters; a `provider.*` subject that no sync has
    leaves no series once its incidents are resolved."""
    recent(5)
    opened = {"incident_id": "i1", "notes": []}
    _fold(redis_url, "lb", [
        cloudevent("sync.created", "s1", {"provider": "stripe", "name": "n" * 100_000}, minute=0),
        cloudevent("provider.incident.opened", "no-such-provider", opened, minute=1),
    ])  # fmt: skip
    m = _render(redis_url, "lb")
    (info,) = m["syncmon_sync_info"]
    assert len(info.labels["name"]) == MAX_LABEL and info.labels["name"].endswith("…")
    open_now = {s.labels["provider"]: s.value for s in m["syncmon_provider_incidents_open"]}
    assert open_now == {"stripe": 0, "no-such-provider": 1}  # open: worth showing
    resolved = {"incident_id": "i1"}
    _fold(redis_url, "lb", [
        cloudevent("provider.incident.resolved", "no-such-provider", resolved, minute=2),
    ], offset=2)  # fmt: skip
    m = _render(redis_url, "lb")
    open_now = {s.labels["provider"]: s.value for s in m["syncmon_provider_incidents_open"]}
    assert open_now == {"stripe": 0}


def test_a_hung_redis_costs_a_scrape_seconds_not_the_scrape() -> None:
    """Redis stopped (SIGSTOP, the port open): /metrics answers with the process's metrics and
    `syncmon_redis_connected 0` well within Prometheus's 10 s scrape timeout (it took 10 s)."""
    server = RedisServer().start()
    try:
        settings = Settings(redis_url=server.url, redis_prefix="hung", kafka_topic="t")
        with TestClient(create_app(settings, consume=False)) as client:
            assert scrape(client)["syncmon_redis_connected"][0].value == 1
            server.pause()
            try:
                started = time.monotonic()
                m = scrape(client)
                elapsed = time.monotonic() - started
            finally:
                server.resume()
            assert m["syncmon_redis_connected"][0].value == 0
            assert "syncmon_syncs" not in m
            assert elapsed < 2 * SCRAPE_REDIS_TIMEOUT + 2, elapsed
            assert scrape(client)["syncmon_redis_connected"][0].value == 1  # and back
    finally:
        server.stop()
