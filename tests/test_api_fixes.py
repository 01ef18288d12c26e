"""API defects found in review: every time ISO 8601 in UTC, the longest id pages, every /v1
request needs a token, and a list never contradicts its filters."""

from __future__ import annotations

import itertools
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from consumers.decode import RawMessage
from consumers.processor import Processor
from monitor.api import MAX_CURSOR_LENGTH, encode_cursor
from monitor.app import create_app
from monitor.events import MAX_ID_LENGTH
from monitor.settings import Settings
from monitor.store.indexes import Indexes
from monitor.store.syncs import SyncViews
from tests.eventlib import cloudevent, encode, iso, lifecycle, recent, sync_created

TOPIC = "sync.lifecycle"
TOKEN = "t0k3n-" + uuid.uuid4().hex
BEARER = {"Authorization": f"Bearer {TOKEN}"}
FAILURE = {"code": "http_500", "message": "boom", "http_status": 500, "retryable": True}
ISO_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
TIME_NAMES = ("since", "time")  # with every name ending in `_at`


class Fleet:
    """Views folded by the real Processor into one prefix, served by the app."""

    def __init__(self, url: str, **settings: Any) -> None:
        self.prefix = f"fx{uuid.uuid4().hex[:6]}"
        self.client = redis.Redis.from_url(url)
        self.processor = Processor(self.client, self.prefix, TOPIC)
        self.offsets = itertools.count()
        values = {"redis_url": url, "redis_prefix": self.prefix, "kafka_topic": "t", **settings}
        self.app = create_app(Settings(**values), consume=False)

    def feed(self, events: list[dict[str, Any]], evaluate: bool = True) -> None:
        messages = [RawMessage(TOPIC, 0, next(self.offsets), *encode(e)) for e in events]
        prepared, _ = self.processor.process(messages)
        assert not prepared.dead, [d.reason for d in prepared.dead]
        if evaluate:
            self.processor.engine.sweep(self.client, [0])
            self.processor.engine.fan_out(self.client)


@pytest.fixture
def fleet(redis_url: str) -> Iterator[Fleet]:
    recent(9)
    f = Fleet(redis_url)
    yield f
    f.client.close()


def ids(api: TestClient, query: str) -> list[str]:
    response = api.get(f"/v1/syncs?{query}")
    assert response.status_code == 200, response.text
    return [s["id"] for s in response.json()["data"]]


def times(body: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every value in a JSON body under a time's name (`*_at`, `since`, `time`)."""
    if isinstance(body, dict):
        for key, value in body.items():
            if key.endswith("_at") or key in TIME_NAMES:
                yield f"{path}{key}", value
            yield from times(value, f"{path}{key}.")
    elif isinstance(body, list):
        for n, item in enumerate(body):
            yield from times(item, f"{path}{n}.")


def test_every_time_in_every_response_is_iso_8601_utc(fleet: Fleet) -> None:
    """`last_run` was the stored model, whose times are epoch seconds; no nested time is."""
    fleet.feed(
        [
            *lifecycle("e1", "stripe"),
            cloudevent("sync.run.failed", "e1", {"run_id": "f1", "error": FAILURE}, minute=7),
            cloudevent("sync.credential.failed", "e1", {"http_status": 401}, minute=7.1),
            cloudevent("sync.rate_limited", "e1", {"retry_after_seconds": 30}, minute=7.2),
            cloudevent("provider.incident.opened", "stripe", {"incident_id": "i1"}, minute=7.3),
        ]
    )
    with TestClient(fleet.app) as api:
        one = api.get("/v1/syncs/e1").json()
        bodies = [one, api.get("/v1/syncs").json(), api.get("/v1/syncs/e1/health").json()]
    assert one["last_run"]["run_id"] == "f1" and one["last_run"]["started_at"] is None
    assert one["last_run"]["finished_at"] == iso(7)
    assert one["health"]["credential"]["time"] == iso(7.1)
    found = [t for body in bodies for t in times(body)]
    assert {"last_run.finished_at", "health.credential.time", "backfill.started_at"} <= {
        name for name, _ in found
    }
    assert any(name.startswith("checks.") for name, _ in found)
    bad = [(name, v) for name, v in found if v is not None and not ISO_UTC.match(str(v))]
    assert not bad, bad


def test_the_openapi_types_every_time_as_date_time(fleet: Fleet) -> None:
    with TestClient(fleet.app) as api:
        schemas = api.get("/openapi.json").json()["components"]["schemas"]
    assert schemas["SyncOut"]["properties"]["last_run"]["anyOf"][0] == {
        "$ref": "#/components/schemas/LastRunOut"
    }
    seen = set()
    for model, schema in schemas.items():
        for name, prop in schema.get("properties", {}).items():
            if name.endswith("_at") or name in TIME_NAMES:
                types = [t for t in prop.get("anyOf", [prop]) if t.get("type") != "null"]
                assert types == [{"type": "string", "format": "date-time"}], (model, name, prop)
                seen.add(f"{model}.{name}")
    assert {"LastRunOut.started_at", "LastRunOut.finished_at", "CredentialHealth.time"} <= seen


def test_the_longest_id_pages_on(fleet: Fleet) -> None:
    """A cursor of an id of MAX_ID_LENGTH 4-byte characters was over the query's bound."""
    longest, after = "😀" * MAX_ID_LENGTH, "😁"  # 😁 sorts after 😀😀... (by UTF-8 bytes)
    assert len(encode_cursor(longest)) == MAX_CURSOR_LENGTH
    fleet.feed(
        [cloudevent("sync.created", i, sync_created("s", stream_id=None)) for i in (longest, after)]
    )
    with TestClient(fleet.app) as api:
        spec = api.get("/openapi.json").json()
        first = api.get("/v1/syncs?limit=1").json()
        assert [s["id"] for s in first["data"]] == [longest]
        assert len(first["next_cursor"]) == MAX_CURSOR_LENGTH
        assert ids(api, f"limit=1&cursor={first['next_cursor']}") == [after]
    cursor = next(
        p for p in spec["paths"]["/v1/syncs"]["get"]["parameters"] if p["name"] == "cursor"
    )
    assert cursor["schema"]["anyOf"][0]["maxLength"] == MAX_CURSOR_LENGTH


def test_credential_times_are_shown_as_api_times_and_stored_as_sent(fleet: Fleet) -> None:
    naive, offset = "2023-12-15 01:29:29", "2023-12-15T03:29:29.5+02:00"
    credential = {"id": "c", "created_at": naive, "updated_at": offset, "expires_at": naive}
    odd = {"id": "d", "created_at": "yesterday", "updated_at": 1702603769}
    fleet.feed(
        [
            cloudevent("sync.created", "c1", sync_created("c1", credential=credential)),
            cloudevent("sync.created", "c2", sync_created("c2", credential=odd)),
        ]
    )
    with TestClient(fleet.app) as api:
        shown = api.get("/v1/syncs/c1").json()["credential"]
        listed = [s["credential"] for s in api.get("/v1/syncs").json()["data"]]
    assert shown["created_at"] == "2023-12-15T01:29:29Z"
    assert shown["updated_at"] == "2023-12-15T01:29:29.500000Z"
    assert shown["expires_at"] == naive  # only the seed's two keys
    assert listed == [shown, odd]  # what does not parse as a date-time is left as it is
    stored = SyncViews(fleet.prefix).get_many(fleet.client, ["c1"])[0]
    assert stored is not None and stored.credential == credential


@pytest.fixture
def locked(redis_url: str) -> Iterator[TestClient]:
    recent(9)
    f = Fleet(redis_url, api_tokens=f"other-token,{TOKEN}")
    f.feed(lifecycle("s0"))
    with TestClient(f.app, follow_redirects=False) as client:
        yield client
    f.client.close()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/nope"),
        ("GET", "/v1"),
        ("GET", "/v1/"),
        ("POST", "/v1/syncs"),
        ("DELETE", "/v1/syncs/s0"),
        ("PUT", "/v1/syncs/s0/health"),
        ("HEAD", "/v1/summary"),
        ("GET", "/v1/summary/"),  # a redirect to /v1/summary would say it exists
        ("GET", "/v1/syncs"),
    ],
)
def test_every_v1_request_without_a_token_is_a_401(
    locked: TestClient, method: str, path: str
) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        response = locked.request(method, path, headers=headers)
        assert response.status_code == 401, (method, path, headers, response.status_code)
        assert response.headers["www-authenticate"] == "Bearer"
        if method != "HEAD":
            error = {"code": "unauthorized", "message": "a valid bearer token is required"}
            assert response.json() == {"error": error}


@pytest.mark.parametrize("root_path", ["/", "/v", "/api"])
def test_the_token_gate_reads_the_path_as_the_router_does(redis_url: str, root_path: str) -> None:
    """Behind a server or mount that passes `root_path` without it in the path, the router
    still matches `/v1/...`: so must the gate (`/v` once let `/v1/syncs` through unasked)."""
    recent(9)
    f = Fleet(redis_url, api_tokens=TOKEN)
    try:
        with TestClient(f.app, root_path=root_path) as client:
            assert client.get("/v1/syncs").status_code == 401
            assert client.get("/v1/syncs", headers=BEARER).status_code == 200
    finally:
        f.client.close()


def test_with_a_token_unknown_routes_are_json_404_and_405(locked: TestClient) -> None:
    missing = locked.get("/v1/nope", headers=BEARER)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "http_error"
    for path in ("/v1/syncs", "/v1/syncs/s0", "/v1/syncs/s0/health", "/v1/summary"):
        wrong = locked.post(path, headers=BEARER)
        assert wrong.status_code == 405 and wrong.headers["allow"] == "GET", path
        assert wrong.json()["error"]["code"] == "http_error"
    assert locked.get("/v1/syncs/s0", headers=BEARER).status_code == 200
    assert locked.get("/healthz").status_code == 200  # not /v1: no token
    assert locked.get("/nope").status_code == 404
    spec = locked.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert spec["paths"]["/v1/syncs"]["get"]["security"] == [{"bearer": []}]
    assert "401" in spec["paths"]["/v1/syncs"]["get"]["responses"]


def test_without_tokens_unknown_routes_are_still_404_and_405(fleet: Fleet) -> None:
    with TestClient(fleet.app) as api:
        assert api.get("/v1/nope").status_code == 404
        assert api.post("/v1/syncs").status_code == 405


def test_a_sync_moved_to_another_provider_leaves_the_old_ones_health_filter(
    fleet: Fleet,
) -> None:
    """The health index moves at the sync's next evaluation; the view moves at once."""
    fleet.feed(lifecycle("s0", "stripe") + lifecycle("s1", "stripe", start=0.1))
    moved = cloudevent("sync.updated", "s0", {"provider": "github"}, minute=7, sequence=100)
    with TestClient(fleet.app) as api:
        assert ids(api, "provider=stripe&health.status=healthy") == ["s0", "s1"]
        fleet.feed([moved], evaluate=False)
        assert ids(api, "provider=stripe&health.status=healthy") == ["s1"]
        assert ids(api, "provider=github&health.status=healthy") == []  # until evaluated
        fleet.feed([], evaluate=True)
        assert ids(api, "provider=github&health.status=healthy") == ["s0"]
        assert ids(api, "provider=stripe&health.status=healthy") == ["s1"]


@pytest.mark.parametrize(
    ("field", "value"),
    [("provider", "hubspot"), ("status", "disabled"), ("org_id", "org-9"), ("stream_id", "x")],
)
def test_a_view_that_contradicts_a_filter_is_not_listed(
    fleet: Fleet, field: str, value: str
) -> None:
    """An index entry the view has left (a lagging or stale index) lists nothing wrong."""
    fleet.feed(lifecycle("s0") + lifecycle("s1", start=0.1))
    key = Indexes(fleet.prefix).key(field, value)
    if field == "status":
        fleet.client.zadd(key, {"s0": 0})
    else:
        fleet.client.sadd(key, "s0")
    with TestClient(fleet.app) as api:
        assert ids(api, f"{field}={value}") == []
        assert ids(api, f"{field}={value}&health.status=healthy") == []
        assert ids(api, f"{field}={value}&limit=1") == []  # a page may hold fewer than limit
