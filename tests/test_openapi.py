"""schemathesis against the OpenAPI the live app serves: no 5xx, every response as declared.

The app runs under uvicorn on 127.0.0.1 over a real Redis holding syncs folded by the real
Processor (healthy, failing, disabled, deleted, under a provider incident, evaluated and not),
so the 200 paths are exercised, not just the 404s. Once without tokens and once with tokens
and /metrics basic auth, where every request is sent both with and without credentials.
"""

from __future__ import annotations

import base64
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import positive_data_acceptance

from consumers.decode import RawMessage
from consumers.processor import Processor
from monitor.api import encode_cursor
from monitor.app import create_app
from monitor.services import RedisServer, free_port
from monitor.settings import Settings
from tests.eventlib import cloudevent, encode, lifecycle, recent

TOKENS = ("tok-one-" + uuid.uuid4().hex, "tok-two-" + uuid.uuid4().hex)
METRICS_AUTH = "prom:" + uuid.uuid4().hex
SYNC_IDS = ["sync-a", "sync-b", "sync-c", "sync-d", "sync-e", "sync-gone"]
CURSORS = [encode_cursor(i) for i in ("sync-a", "sync-c", "sync-e", "zzz")]


def load_syncs(url: str, prefix: str, topic: str) -> None:
    """A small fleet in every state the API renders, folded by the real Processor."""
    recent(30)
    events: list[dict[str, Any]] = []
    for i, sid in enumerate(SYNC_IDS):
        events += lifecycle(sid, ["stripe", "hubspot"][i % 2], start=i)
    failure = {"code": "http_500", "message": "boom", "http_status": 500, "retryable": True}
    events += [
        cloudevent("sync.run.failed", "sync-b", {"run_id": "r2", "error": failure}, minute=20),
        cloudevent("sync.disabled", "sync-c", {"reason": "paused by user"}, minute=20),
        cloudevent("sync.credential.failed", "sync-d", {"http_status": 401, "message": "no"},
                   minute=20),
        cloudevent("sync.rate_limited", "sync-e", {"retry_after_seconds": 1.5}, minute=25),
        cloudevent("sync.deleted", "sync-gone", {}, minute=21),
        cloudevent("provider.incident.opened", "hubspot",
                   {"incident_id": "inc-1", "notes": ["api degraded"]}, minute=22),
        cloudevent("sync.backfill.started", "sync-new", {"collection_ids": ["x:a"]}, minute=23),
        cloudevent("sync.created", "sync-new", {"provider": "github", "collection_ids": ["x:a"]},
                   minute=23),
        cloudevent("sync.created", "team/a", {"provider": "github"}, minute=24),
        cloudevent("sync.backfill.progressed", "sync-new",
                   {"collection_id": "x:a", "records_synced": 5, "estimated_total": 50},
                   minute=24),
    ]  # fmt: skip
    messages = []
    for offset, event in enumerate(events):
        key, value, headers = encode(event)
        messages.append(RawMessage(topic, 0, offset, key, value, headers))
    with redis.Redis.from_url(url) as client:
        processor = Processor(client, prefix, topic)
        prepared, _ = processor.process(messages)
        assert not prepared.dead
        processor.engine.sweep(client, [0])  # most syncs evaluated; sync-new stays due
        processor.engine.fan_out(client)


@dataclass
class Live:
    url: str
    settings: Settings
    schema: Any


def serve(settings: Settings) -> Iterator[str]:
    """The app under uvicorn in a thread on a free port of 127.0.0.1, until the generator ends."""
    config = uvicorn.Config(
        create_app(settings, consume=False),
        host=settings.http_host,
        port=settings.http_port,
        log_level="warning",
        lifespan="on",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://{settings.http_host}:{settings.http_port}"
    finally:
        server.should_exit = True
        thread.join(10)


def _live(redis_server: RedisServer, **extra: Any) -> Iterator[Live]:
    prefix = f"oapi-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        redis_url=redis_server.url,
        redis_prefix=prefix,
        kafka_topic="sync.lifecycle.oapi",
        http_port=free_port(),
        api_max_page=200,
        **extra,
    )
    load_syncs(settings.redis_url, prefix, settings.kafka_topic)
    for url in serve(settings):
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
        yield Live(url, settings, schema)


@pytest.fixture(scope="module")
def open_app(redis_server: RedisServer) -> Iterator[Live]:
    yield from _live(redis_server)


@pytest.fixture(scope="module")
def locked_app(redis_server: RedisServer) -> Iterator[Live]:
    yield from _live(redis_server, api_tokens=TOKENS, metrics_basic_auth=METRICS_AUTH)


def operations(schema: Any) -> list[Any]:
    return [result.ok() for result in schema.get_all_operations()]


def _labels(live: Live) -> list[str]:
    return sorted(op.label for op in operations(live.schema))


def test_the_served_schema_lists_every_route(open_app: Live) -> None:
    assert _labels(open_app) == [
        "GET /healthz",
        "GET /metrics",
        "GET /readyz",
        "GET /v1/summary",
        "GET /v1/syncs",
        "GET /v1/syncs/{sync_id}",
        "GET /v1/syncs/{sync_id}/health",
    ]
    spec = httpx.get(f"{open_app.url}/openapi.json").json()
    limit = next(p for p in spec["paths"]["/v1/syncs"]["get"]["parameters"] if p["name"] == "limit")
    assert limit["schema"]["maximum"] == open_app.settings.api_max_page


def test_ids_with_slashes_over_uvicorn(open_app: Live) -> None:
    """uvicorn hands the raw path over: `team%2Fa` is the sync `team/a`, not a route miss."""
    one = httpx.get(f"{open_app.url}/v1/syncs/team%2Fa")
    assert one.status_code == 200 and one.json()["id"] == "team/a"
    health = httpx.get(f"{open_app.url}/v1/syncs/team%2Fa/health")
    assert health.status_code == 200 and health.json()["sync_id"] == "team/a"
    assert httpx.get(f"{open_app.url}/v1/syncs/team/a").status_code == 404


def _sync_ids() -> st.SearchStrategy[str]:
    """Known ids half the time, so the 200 branch of /v1/syncs/{id} is really exercised."""
    return st.sampled_from([*SYNC_IDS, "sync-new"])


def _strategy(
    op: Any, mode: GenerationMode, fixed: dict[str, str] | None = None
) -> st.SearchStrategy[Any]:
    """Cases for one operation; `fixed` headers are part of every case (never negated)."""
    strategy = op.as_strategy(generation_mode=mode, headers=fixed)
    if mode is not GenerationMode.POSITIVE:
        return strategy
    if "{sync_id}" in op.path:
        known = _sync_ids().flatmap(
            lambda sid: op.as_strategy(
                generation_mode=mode, headers=fixed, path_parameters={"sync_id": sid}
            )
        )
        strategy = st.one_of(strategy, known)
    if op.path == "/v1/syncs":
        paged = st.sampled_from(CURSORS).flatmap(
            lambda c: op.as_strategy(generation_mode=mode, headers=fixed, query={"cursor": c})
        )
        strategy = st.one_of(strategy, paged)
    return strategy


def _has_query(op: Any) -> bool:
    """Negative cases need a parameter that can be made invalid: a string path parameter
    cannot (any string is a valid id), a typed or bounded query parameter can."""
    return any(p.get("in") == "query" for p in op.definition.raw.get("parameters", []))


def run_operation(
    live: Live,
    op: Any,
    mode: GenerationMode,
    auth_headers: list[dict[str, str]],
    examples: int,
    statuses: Counter[tuple[str, int]],
    fixed: dict[str, str] | None = None,
) -> None:
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=_strategy(op, mode, fixed))
    def check(case: Any) -> None:
        # A cursor is opaque: one the API did not hand out is refused (400), schema-valid or
        # not, so only that check is off for such cases (the real cursors stay checked).
        foreign = (case.query or {}).get("cursor") not in (None, *CURSORS)
        excluded = [positive_data_acceptance] if foreign else []
        for headers in auth_headers:
            response = case.call_and_validate(
                base_url=live.url, headers=headers, excluded_checks=excluded
            )
            assert response.status_code < 500, response.text
            statuses[(op.label, response.status_code)] += 1

    check()


def run_schemathesis(
    live: Live,
    mode: GenerationMode,
    auth_headers: list[dict[str, str]],
    examples: int,
    fixed: dict[str, str] | None = None,
) -> Counter[tuple[str, int]]:
    """Every operation, `examples` cases each, sent once per header set; all checks on.

    Negative cases need something to break: only operations with query parameters have it.
    Credentials for negative cases go in `fixed`, so schemathesis knows they are sent (a
    header added at call time could turn a case it made invalid by omitting it valid again).
    """
    statuses: Counter[tuple[str, int]] = Counter()
    for op in operations(live.schema):
        if mode is GenerationMode.NEGATIVE and not _has_query(op):
            continue
        run_operation(live, op, mode, auth_headers, examples, statuses, fixed)
    return statuses


def test_open_api_positive(open_app: Live) -> None:
    statuses = run_schemathesis(open_app, GenerationMode.POSITIVE, [{}], 40)
    assert statuses[("GET /v1/syncs/{sync_id}", 200)] > 0, statuses
    assert statuses[("GET /v1/syncs/{sync_id}/health", 200)] > 0, statuses
    assert statuses[("GET /v1/syncs/{sync_id}", 404)] > 0, statuses
    assert statuses[("GET /v1/syncs", 200)] > 0, statuses
    assert statuses[("GET /v1/summary", 200)] > 0, statuses
    assert statuses[("GET /metrics", 200)] > 0, statuses


def test_open_api_negative(open_app: Live) -> None:
    statuses = run_schemathesis(open_app, GenerationMode.NEGATIVE, [{}], 40)
    assert statuses[("GET /v1/syncs", 400)] > 0, statuses


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _basic(credentials: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}


def test_locked_api_with_and_without_credentials(locked_app: Live) -> None:
    headers = [
        {},
        _bearer(TOKENS[0]),
        _bearer(TOKENS[1]),
        _bearer("wrong"),
        _basic(METRICS_AUTH),
        _basic("prom:wrong"),
    ]
    statuses = run_schemathesis(locked_app, GenerationMode.POSITIVE, headers, 25)
    v1 = {(label, s) for label, s in statuses if label.startswith("GET /v1/")}
    assert ("GET /v1/syncs", 401) in v1 and ("GET /v1/syncs", 200) in v1, statuses
    assert ("GET /v1/syncs/{sync_id}", 200) in v1, statuses
    assert statuses[("GET /metrics", 401)] > 0 and statuses[("GET /metrics", 200)] > 0, statuses


def test_locked_api_negative(locked_app: Live) -> None:
    anonymous = run_schemathesis(locked_app, GenerationMode.NEGATIVE, [{}], 25)
    assert set(anonymous) == {("GET /v1/syncs", 401)}, anonymous
    statuses = run_schemathesis(
        locked_app, GenerationMode.NEGATIVE, [{}], 25, fixed=_bearer(TOKENS[0])
    )
    assert statuses[("GET /v1/syncs", 400)] > 0, statuses


def test_a_redis_outage_is_a_declared_503() -> None:
    """With Redis gone, /v1 and /readyz answer 503 with the bodies their schema declares;
    /healthz still says the process is alive, and /metrics serves the process's own metrics
    (so `syncmon_redis_connected 0` can raise its alert, not a failed scrape)."""
    server = RedisServer().start()
    try:
        settings = Settings(
            redis_url=server.url, redis_prefix="down", http_port=free_port(), kafka_topic="t"
        )
        load_syncs(settings.redis_url, "down", "t")
        for url in serve(settings):
            schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
            server.stop()
            seen = set()
            for op in operations(schema):
                case = op.Case(
                    path_parameters={"sync_id": "sync-a"} if "{sync_id}" in op.path else {}
                )
                response = case.call_and_validate(
                    base_url=url, excluded_checks=[not_a_server_error]
                )
                expected = 200 if op.path in ("/healthz", "/metrics") else 503
                assert response.status_code == expected, (op.label, response.text)
                if op.path == "/metrics":
                    assert "syncmon_redis_connected 0.0" in response.text
                    assert "syncmon_build_info" in response.text
                    assert "syncmon_sync_info" not in response.text  # nothing read from Redis
                seen.add(op.path)
            assert {"/metrics", "/readyz", "/v1/syncs", "/v1/syncs/{sync_id}"} <= seen
    finally:
        server.stop()
