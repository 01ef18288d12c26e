"""Query strings on /v1: a misspelt or repeated filter is a 400, never the whole fleet."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from consumers.decode import RawMessage
from consumers.processor import Processor
from monitor.app import create_app
from monitor.settings import Settings
from tests.eventlib import cloudevent, encode, lifecycle, recent

TOPIC = "sync.lifecycle"
FAILURE = {"code": "http_500", "message": "boom", "http_status": 500, "retryable": True}
LIST_PARAMETERS = ["provider", "status", "health.status", "org_id", "stream_id", "limit", "cursor"]


def load(url: str, prefix: str) -> None:
    """sync-a healthy (stripe), sync-b in error (hubspot), sync-c paused (stripe)."""
    recent(9)  # the last runs succeeded a minute or two ago
    events: list[dict[str, Any]] = []
    for i, (sid, provider) in enumerate([("sync-a", "stripe"), ("sync-b", "hubspot")]):
        events += lifecycle(sid, provider, start=i)
    events += lifecycle("sync-c", "stripe", start=2)
    for n in range(3):
        run = {"run_id": f"f{n}", "error": FAILURE}
        events.append(cloudevent("sync.run.failed", "sync-b", run, minute=7.5 + n / 10))
    events.append(cloudevent("sync.disabled", "sync-c", {"reason": "paused"}, minute=8.5))
    messages = [RawMessage(TOPIC, 0, n, *encode(e)) for n, e in enumerate(events)]
    with redis.Redis.from_url(url) as client:
        processor = Processor(client, prefix, TOPIC)
        prepared, _ = processor.process(messages)
        assert not prepared.dead
        processor.engine.sweep(client, [0])


@pytest.fixture
def api(redis_url: str) -> Iterator[TestClient]:
    prefix = f"q{uuid.uuid4().hex[:6]}"
    load(redis_url, prefix)
    settings = Settings(redis_url=redis_url, redis_prefix=prefix, kafka_topic="t")
    with TestClient(create_app(settings, consume=False)) as client:
        yield client


def ids(api: TestClient, query: str) -> list[str]:
    response = api.get(f"/v1/syncs?{query}")
    assert response.status_code == 200, response.text
    return [s["id"] for s in response.json()["data"]]


def refused(api: TestClient, path: str) -> str:
    response = api.get(path)
    assert response.status_code == 400, (path, response.status_code, response.text[:200])
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == "invalid_request", body
    message: str = body["error"]["message"]
    return message


def test_every_documented_filter_still_filters(api: TestClient) -> None:
    assert ids(api, "") == ["sync-a", "sync-b", "sync-c"]
    assert ids(api, "provider=stripe") == ["sync-a", "sync-c"]
    assert ids(api, "health.status=error") == ["sync-b"]
    assert ids(api, "status=disabled") == ["sync-c"]
    assert ids(api, "org_id=org-1&provider=hubspot") == ["sync-b"]
    assert ids(api, "stream_id=stream-sync-c") == ["sync-c"]
    page = api.get("/v1/syncs?limit=2").json()
    assert [s["id"] for s in page["data"]] == ["sync-a", "sync-b"]
    assert ids(api, f"limit=2&cursor={page['next_cursor']}") == ["sync-c"]


@pytest.mark.parametrize(
    ("query", "name", "hint"),
    [
        ("health_status=error", "health_status", "did you mean health.status?"),
        ("health=error", "health", "did you mean health.status?"),
        ("provider=stripe&Provider=hubspot", "Provider", "did you mean provider?"),
        ("providers=stripe", "providers", "did you mean provider?"),
        ("org=org-1", "org", "accepted: provider, status, health.status, org_id"),
        ("filter[health]=error", "filter[health]", ""),
        ("verbose", "verbose", ""),  # no value is still a parameter
    ],
)
def test_an_unknown_parameter_is_refused_and_named(
    api: TestClient, query: str, name: str, hint: str
) -> None:
    message = refused(api, f"/v1/syncs?{query}")
    assert message.startswith(f"{name}: not a parameter of this endpoint"), message
    assert hint in message


@pytest.mark.parametrize(
    "query",
    [
        "provider=stripe&provider=hubspot",
        "health.status=error&health.status=healthy",
        "limit=1&limit=2",
        "status=active&status=active",  # the same value twice is still ambiguous intent
    ],
)
def test_a_repeated_parameter_is_refused_and_named(api: TestClient, query: str) -> None:
    name = query.split("=")[0]
    assert refused(api, f"/v1/syncs?{query}").startswith(f"{name}: given 2 times")


def test_every_v1_route_refuses_parameters_it_does_not_take(api: TestClient) -> None:
    """`/v1/summary?provider=stripe` would otherwise count the whole fleet."""
    assert "provider: not a parameter" in refused(api, "/v1/summary?provider=stripe")
    assert "accepted: none" in refused(api, "/v1/summary?provider=stripe")
    for path in ("/v1/syncs/sync-a", "/v1/syncs/sync-a/health", "/v1/syncs/a%2Fhealth"):
        assert refused(api, f"{path}?foo=1").startswith("foo: not a parameter"), path
    assert api.get("/v1/summary").status_code == 200
    assert api.get("/v1/syncs/sync-a").status_code == 200
    assert api.get("/v1/syncs/sync-a/health").status_code == 200
    assert api.get("/healthz?probe=1").status_code == 200  # not /v1: probes may add anything


def test_the_openapi_lists_every_parameter_and_the_400(api: TestClient) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    listed = [p["name"] for p in paths["/v1/syncs"]["get"]["parameters"]]
    assert listed == LIST_PARAMETERS
    for path in ("/v1/syncs", "/v1/summary", "/v1/syncs/{sync_id}", "/v1/syncs/{sync_id}/health"):
        assert "400" in paths[path]["get"]["responses"], path


def test_without_a_token_it_is_still_a_401(redis_url: str) -> None:
    """Who may ask comes first: an anonymous caller learns nothing about the parameters."""
    settings = Settings(redis_url=redis_url, redis_prefix="qlock", api_tokens="t0k3n-1234")
    with TestClient(create_app(settings, consume=False)) as client:
        assert client.get("/v1/syncs?health=error").status_code == 401
        bearer = {"Authorization": "Bearer t0k3n-1234"}
        assert client.get("/v1/syncs?health=error", headers=bearer).status_code == 400
