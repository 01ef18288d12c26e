"""Health on time against the real broker and Redis: no new event needed to go warn, then error."""

from __future__ import annotations

import itertools
import signal
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from monitor.app import create_app
from monitor.services import ensure_topics, free_port
from monitor.settings import Settings
from tests.eventlib import cloudevent, encode, produce_records, recent, sync_created
from tests.faultlib import read_topic, start_monitor
from tests.support import as_env, fast_settings

FAST = {
    "health_continuous_interval_seconds": 4.0,  # warn after 4 s without success, error after 8 s
    "health_tick_seconds": 0.2,
}


def healthy_sync(sync_id: str, provider: str = "stripe") -> list[dict[str, Any]]:
    """A sync whose backfill completed and whose last run succeeded just now."""
    data = sync_created(sync_id, provider, collection_ids=[f"{provider}:customer"])
    return [
        cloudevent("sync.created", sync_id, data, minute=0, sequence=1),
        cloudevent("sync.backfill.started", sync_id, {}, minute=0.01, sequence=2),
        cloudevent(
            "sync.backfill.collection_completed",
            sync_id,
            {"collection_id": f"{provider}:customer", "records_synced": 10},
            minute=0.02,
            sequence=3,
        ),
        cloudevent("sync.run.started", sync_id, {"run_id": "r1"}, minute=0.03, sequence=4),
        cloudevent(
            "sync.run.succeeded",
            sync_id,
            {"run_id": "r1", "records_upserted": 1, "records_deleted": 0, "duration_ms": 5},
            minute=0.04,
            sequence=5,
        ),
    ]


def settings_for(topics: Any, redis_url: str, health_topic: str, **extra: Any) -> Settings:
    return fast_settings(topics, redis_url, "live", health_topic=health_topic, **{**FAST, **extra})


@pytest.fixture
def health_topic(topics: Any) -> str:
    name = f"{topics.lifecycle}.health"
    ensure_topics(topics.bootstrap, {name: topics.partitions})
    return name


def read_changes(bootstrap: str, topic: str, partitions: int, settle: float = 1.0) -> list[Any]:
    """Every `sync.health.changed` on the topic (reads until nothing new for `settle` s)."""
    return [value for *_, value in read_topic(bootstrap, topic, partitions, settle)]


def ready(client: TestClient) -> None:
    """Waits until the consumer is in its group, so events are applied as soon as produced."""
    deadline = time.monotonic() + 30
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "consumer never joined its group"
        time.sleep(0.1)


def status_of(client: TestClient, sync_id: str) -> str:
    response = client.get(f"/v1/syncs/{sync_id}")
    return str(response.json()["health"]["status"]) if response.status_code == 200 else "absent"


def wait_status(client: TestClient, sync_id: str, want: str, timeout: float = 20) -> float:
    start = time.monotonic()
    while (got := status_of(client, sync_id)) != want:
        assert time.monotonic() - start < timeout, f"{sync_id} stuck at {got}, wanted {want}"
        time.sleep(0.05)
    return time.monotonic() - start


def test_runs_stop_so_health_turns_warn_then_error_on_time(
    topics: Any, redis_url: str, health_topic: str
) -> None:
    settings = settings_for(topics, redis_url, health_topic)
    with TestClient(create_app(settings)) as client:
        ready(client)
        recent(0.05)
        produce_records(topics.bootstrap, topics.lifecycle, [encode(e) for e in healthy_sync("s1")])
        wait_status(client, "s1", "healthy")
        detail = None
        wait_status(client, "s1", "warn", timeout=10)
        detail = client.get("/v1/syncs/s1/health").json()
        freshness = next(c for c in detail["checks"] if c["name"] == "freshness")
        assert freshness["status"] == "warn" and "expected every 4 s" in freshness["message"]
        wait_status(client, "s1", "error", timeout=10)
        error = client.get("/v1/syncs/s1/health").json()
        assert error["erroring_since"] and error["last_healthy_at"]
        listed = client.get("/v1/syncs", params={"health.status": "error"}).json()
        assert [s["id"] for s in listed["data"]] == ["s1"]

        # a new success brings it back to healthy at once
        recent(0)
        success = cloudevent(
            "sync.run.succeeded",
            "s1",
            {"run_id": "r2", "records_upserted": 1, "records_deleted": 0, "duration_ms": 5},
            minute=0,
            sequence=6,
        )
        produce_records(topics.bootstrap, topics.lifecycle, [encode(success)])
        wait_status(client, "s1", "healthy", timeout=10)
        time.sleep(1.0)  # let the publisher drain

    changes = [(c["data"]["from"], c["data"]["to"]) for c in read_changes(
        topics.bootstrap, health_topic, topics.partitions)]  # fmt: skip
    assert changes == [
        (None, "initializing"),
        ("initializing", "healthy"),
        ("healthy", "warn"),
        ("warn", "error"),
        ("error", "healthy"),
    ] or changes == [
        (None, "healthy"),
        ("healthy", "warn"),
        ("warn", "error"),
        ("error", "healthy"),
    ]


def test_provider_incident_turns_its_syncs_warn_and_back(
    topics: Any, redis_url: str, health_topic: str
) -> None:
    settings = settings_for(
        topics, redis_url, health_topic, health_continuous_interval_seconds=600.0
    )
    with TestClient(create_app(settings)) as client:
        ready(client)
        recent(0.05)
        events = healthy_sync("st-1") + healthy_sync("st-2") + healthy_sync("hs-1", "hubspot")
        produce_records(topics.bootstrap, topics.lifecycle, [encode(e) for e in events])
        for sync_id in ("st-1", "st-2", "hs-1"):
            wait_status(client, sync_id, "healthy")
        opened = cloudevent(
            "provider.incident.opened",
            "stripe",
            {"incident_id": "inc-1", "notes": ["Stripe API elevated 5xx"]},
            minute=0.05,
            sequence=1,
        )
        produce_records(topics.bootstrap, topics.lifecycle, [encode(opened)])
        took = max(wait_status(client, s, "warn", timeout=10) for s in ("st-1", "st-2"))
        assert took < 5
        assert status_of(client, "hs-1") == "healthy"
        health = client.get("/v1/syncs/st-1/health").json()
        assert health["provider"] == {"status": "incident", "notes": ["Stripe API elevated 5xx"]}
        summary = client.get("/v1/summary").json()
        assert summary["by_provider"]["stripe"]["by_health"]["warn"] == 2

        resolved = cloudevent(
            "provider.incident.resolved",
            "stripe",
            {"incident_id": "inc-1"},
            minute=0.06,
            sequence=2,
        )
        produce_records(topics.bootstrap, topics.lifecycle, [encode(resolved)])
        for sync_id in ("st-1", "st-2"):
            wait_status(client, sync_id, "healthy", timeout=10)


def test_two_processes_in_one_group_publish_each_transition_once(
    topics: Any, redis_url: str, health_topic: str, tmp_path: Path
) -> None:
    group = f"pair-{uuid.uuid4().hex[:6]}"
    ports = [free_port(), free_port()]
    base = as_env(
        fast_settings(
            topics, redis_url, "pair", kafka_group_id=group, health_topic=health_topic, **FAST
        )
    )
    procs = [
        start_monitor({**base, "SYNCMON_HTTP_PORT": str(port)}, tmp_path / f"run{i}.log")
        for i, port in enumerate(ports)
    ]
    try:
        deadline = time.monotonic() + 40
        for port in ports:  # both joined the group and share the partitions
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, (tmp_path / "run0.log").read_text()[-2000:]
                time.sleep(0.2)
        recent(0.05)
        ids = [f"pair-{i}" for i in range(12)]
        produce_records(
            topics.bootstrap, topics.lifecycle, [encode(e) for s in ids for e in healthy_sync(s)]
        )
        # every sync goes healthy -> warn (3 s) -> error (6 s) with no further event
        url = f"http://127.0.0.1:{ports[0]}"
        deadline = time.monotonic() + 30
        while True:
            page = httpx.get(f"{url}/v1/syncs", params={"health.status": "error", "limit": 50})
            if len(page.json()["data"]) == len(ids):
                break
            assert time.monotonic() < deadline, page.text
            time.sleep(0.2)
        time.sleep(1.5)  # let both publishers drain
        stored = {s: httpx.get(f"{url}/v1/syncs/{s}/health").json() for s in ids}
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(timeout=40) for proc in procs]
    assert codes == [0, 0]
    logs = [(tmp_path / f"run{i}.log").read_text() for i in range(2)]
    assert all("partitions assigned" in log for log in logs)  # both did work

    changes = read_changes(topics.bootstrap, health_topic, topics.partitions)
    by_sync: dict[str, list[Any]] = defaultdict(list)
    for change in changes:
        by_sync[change["subject"]].append(change)
    assert set(by_sync) == set(ids)
    ids_seen = [c["id"] for c in changes]
    assert len(ids_seen) == len(set(ids_seen)), "a transition was published twice"
    for sync_id, chain in by_sync.items():
        chain.sort(key=lambda c: c["sequence"])
        assert [c["sequence"] for c in chain] == list(range(1, len(chain) + 1)), sync_id
        for before, after in itertools.pairwise(chain):
            assert after["data"]["from"] == before["data"]["to"], sync_id
        assert chain[-1]["data"]["to"] == "error"
        assert stored[sync_id]["status"] == "error"


@pytest.fixture(autouse=True)
def _fresh_clock() -> Iterator[None]:
    yield
    recent()
