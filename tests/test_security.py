"""Security: tokens compared in constant time and never logged; a planted credential secret
appears in no Redis value, log line, API response or metric; the API binds to 127.0.0.1;
Redis AUTH, ACL users and TLS work end to end; Kafka SSL/SASL reach kafka-python; /metrics
basic auth.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import redis
import trustme
from fastapi.testclient import TestClient
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from consumers.decode import MAX_MESSAGE_BYTES, RawMessage
from consumers.processor import Processor
from monitor.app import RedisCredentialsError, create_app
from monitor.patching import MASK
from monitor.services import RedisServer, free_port
from monitor.settings import Settings, SettingsError, load_settings, redis_client
from monitor.store.codec import unpack
from tests.eventlib import cloudevent, encode, encode_binary, produce_records, recent
from tests.support import as_env, fast_settings, wait_for

SYNCMON = [sys.executable, "-m", "monitor.cli", "run"]
MARK = "PLANTED"  # every planted secret holds it
SECRET = f"sk_live_{MARK}_{uuid.uuid4().hex}"
SECRET2 = f"rt_{MARK}_{uuid.uuid4().hex}"
DEAD = f"dl_{MARK}_{uuid.uuid4().hex}"
TOKENS = (f"tok-a-{uuid.uuid4().hex}", f"tok-b-{uuid.uuid4().hex}", f"tok-c-{uuid.uuid4().hex}")
METRICS_PASSWORD = f"mpw-{uuid.uuid4().hex}"
METRICS_AUTH = f"prom:{METRICS_PASSWORD}"
CLIENT_LOGGERS = ("httpx", "httpcore")  # the test's own HTTP client logs the URLs it sends
NEVER_SHOWN = (SECRET, SECRET2, DEAD, MARK, *TOKENS, METRICS_PASSWORD)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def basic(credentials: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}


def assert_clean(text: str | bytes, where: str, allowed: tuple[str, ...] = ()) -> None:
    data = text if isinstance(text, bytes) else text.encode("utf-8", "replace")
    for needle in NEVER_SHOWN:
        if needle in allowed:
            continue
        assert needle.encode() not in data, f"{needle!r} leaked into {where}"


# -- tokens ------------------------------------------------------------------------------


@pytest.fixture
def locked(redis_url: str) -> Iterator[TestClient]:
    settings = Settings(
        redis_url=redis_url,
        redis_prefix="lock",
        kafka_topic="t",
        api_tokens=TOKENS,
        metrics_basic_auth=METRICS_AUTH,
    )
    with TestClient(create_app(settings, consume=False)) as client:
        yield client


def test_every_token_is_compared_in_constant_time(
    locked: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """hmac.compare_digest on equal-length digests, against every token, match or not."""
    calls: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    for headers, status in [
        (bearer(TOKENS[0]), 200),  # the first matches; the other two are still compared
        (bearer(TOKENS[2]), 200),
        (bearer("x"), 401),
        (bearer(TOKENS[0][:-1]), 401),
        (bearer(TOKENS[0] + "x" * 500), 401),
        ({}, 401),
    ]:
        calls.clear()
        assert locked.get("/v1/summary", headers=headers).status_code == status
        assert len(calls) == len(TOKENS), calls
        assert {a for a, _ in calls} == {b for _, b in calls} == {32}, calls  # sha256 digests
    for headers, status in [(basic(METRICS_AUTH), 200), (basic("prom:nope"), 401)]:
        calls.clear()
        assert locked.get("/metrics", headers=headers).status_code == status
        assert calls == [(32, 32)]


def test_bearer_and_basic_auth(locked: TestClient) -> None:
    for path in ("/v1/syncs", "/v1/summary", "/v1/syncs/x", "/v1/syncs/x/health"):
        for headers in ({}, bearer("wrong"), basic(METRICS_AUTH), {"Authorization": TOKENS[0]},
                        {"Authorization": f"Token {TOKENS[0]}"}):  # fmt: skip
            response = locked.get(path, headers=headers)
            assert response.status_code == 401, (path, headers)
            assert response.headers["www-authenticate"] == "Bearer"
            assert response.json()["error"]["code"] == "unauthorized"
        ok = locked.get(path, headers=bearer(TOKENS[1]))
        assert ok.status_code in (200, 404), (path, ok.text)
        lower = locked.get(path, headers={"Authorization": f"bearer {TOKENS[1]}"})
        assert lower.status_code == ok.status_code
    assert locked.get("/v1/syncs", params={"token": TOKENS[0]}).status_code == 401
    assert locked.get("/v1/syncs", params={"access_token": TOKENS[0]}).status_code == 401
    # /metrics: basic auth, 401 without or with wrong credentials, 200 with the right ones
    refused = [
        {},
        basic("prom:wrong"),
        basic("other:" + METRICS_PASSWORD),
        basic(METRICS_PASSWORD),
        bearer(TOKENS[0]),
        {"Authorization": "Basic !!"},
    ]
    for headers in refused:
        response = locked.get("/metrics", headers=headers)
        assert response.status_code == 401, headers
        assert response.headers["www-authenticate"] == 'Basic realm="syncmon"'
        assert response.json()["error"]["code"] == "unauthorized"
    good = locked.get("/metrics", headers=basic(METRICS_AUTH))
    assert good.status_code == 200 and "syncmon_build_info" in good.text
    # the ops probes stay open: orchestrators call them without credentials
    assert locked.get("/healthz").status_code == 200
    assert locked.get("/readyz").status_code == 200


def test_tokens_are_never_logged_or_echoed(
    locked: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    bodies = []
    for token in TOKENS:
        for headers in (bearer(token), bearer(token + "x"), {"Authorization": token}):
            for params in ({}, {"token": token}, {"access_token": token}, {"cursor": token},
                           {"limit": token}, {"provider": token * 10}):  # fmt: skip
                response = locked.get("/v1/syncs", headers=headers, params=params)
                assert response.status_code < 500
                bodies.append(response.text + json.dumps(dict(response.headers)))
        bodies.append(locked.get("/metrics", headers=basic(METRICS_AUTH)).text)
        bodies.append(locked.get("/metrics", headers=basic("prom:" + token)).text)
    server_side = [r for r in caplog.records if not r.name.startswith(CLIENT_LOGGERS)]
    for record in server_side:
        assert_clean(record.getMessage() + (record.exc_text or ""), f"log {record.name}")
    for body in bodies:
        assert_clean(body, "a response")


def test_settings_never_show_credentials() -> None:
    settings = Settings(
        redis_url=f"redis://user:{SECRET}@127.0.0.1:1/0",
        api_tokens=TOKENS,
        metrics_basic_auth=METRICS_AUTH,
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username="u",
        kafka_sasl_password=SECRET2,
        kafka_ssl_password=DEAD,
    )
    assert_clean(repr(settings), "repr(Settings)")
    assert_clean(str(settings), "str(Settings)")
    for bad in (
        {"metrics_basic_auth": SECRET},  # no colon: refused, without quoting it
        {"redis_url": f"http://u:{SECRET}@host/0"},
        {"api_tokens": SECRET, "api_max_page": 0},
        {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_password": SECRET},
    ):
        with pytest.raises(SettingsError) as info:
            load_settings(**bad)
        assert_clean(str(info.value), "a settings error")


# -- binding -----------------------------------------------------------------------------


def test_http_host_defaults_to_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SYNCMON_HTTP_HOST", raising=False)
    assert Settings().http_host == "127.0.0.1"
    assert Settings.model_fields["http_host"].default == "127.0.0.1"
    monkeypatch.setenv("SYNCMON_HTTP_HOST", "0.0.0.0")
    assert Settings().http_host == "0.0.0.0"  # told otherwise


def test_serve_passes_the_host_to_uvicorn(monkeypatch: pytest.MonkeyPatch) -> None:
    from monitor import cli

    seen: dict[str, Any] = {}
    monkeypatch.setattr(cli.uvicorn, "run", lambda app, **kw: seen.update(kw))
    monkeypatch.setattr(cli.signal, "signal", lambda *a: None)
    cli.serve(Settings(http_host="0.0.0.0", http_port=1234))
    assert (seen["host"], seen["port"]) == ("0.0.0.0", 1234)
    assert seen["access_log"] is False  # an access log line would carry any token in a URL
    cli.serve(Settings(http_port=1234))
    assert seen["host"] == "127.0.0.1"


def listeners(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on `port` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].split(":")
            if fields[3] != "0A" or int(port_hex, 16) != port:  # 0A: LISTEN
                continue
            if len(address) == 8:
                found.add(".".join(str(b) for b in reversed(bytes.fromhex(address))))
            else:
                found.add(f"ipv6:{address}")
    return found


# -- a real run with planted secrets ---------------------------------------------------------


def credential(secret: str) -> dict[str, Any]:
    """The seed's credential, with the secret in every place a secret can sit."""
    return {
        "id": "cred-1",
        "provider": "stripe",
        "properties": {
            "kind": "stripe_key",
            "name": "TEST ACCOUNT",
            "secret": secret,
            "password": secret,
            "access_token": secret,
            "refresh_token": secret,
            "client_secret": secret,
            "api_key": secret,
            "API_KEY": secret,
            "private_key": secret,
            "test": True,
            "nested": {"auth_token": secret, "list": [{"password": secret}, {"kind": "x"}]},
            "tokens": [secret, secret],
            "secret_ref": {"value": secret},
        },
        "oauth_app_id": None,
        "oauth_app": {"kind": "sequin", "client_secret": secret},
        "metadata": {"custom_credential_property": 42, "webhook_secret": secret},
        "created_at": "2023-12-15 01:29:29",
        "updated_at": "2023-12-15 01:29:29",
    }


def created(sync_id: str, secret: str | None) -> dict[str, Any]:
    return {
        "provider": "stripe",
        "stream_id": f"stream-{sync_id}",
        "name": f"Choam Corp - {sync_id}",
        "status": "active",
        "org_id": "org-1",
        "collection_ids": ["stripe:customer"],
        "rate_limit": {"allowed_requests": 1000, "interval": 60, "max_concurrent_requests": 0},
        "credential_id": "cred-1",
        "credential": credential(secret) if secret else None,
        "max_age_days": 365,
        "sync_frequency": "continuous",
        "metadata": {"custom_property": 42},
    }


def planted_records() -> tuple[list[tuple[bytes, bytes, list[Any]]], int]:
    """Readable events that carry secrets where the seed puts them, and unreadable records that
    carry one anywhere; returns the records and how many of them must be dead letters."""
    recent(10)
    good = [
        encode(cloudevent("sync.created", "sec-1", created("sec-1", SECRET), minute=0)),
        encode_binary(cloudevent("sync.created", "sec-2", created("sec-2", SECRET), minute=0)),
        encode(cloudevent("sync.created", "sec-3", created("sec-3", None), minute=0)),
        encode(cloudevent("sync.updated", "sec-1", {"name": "renamed", "credential": {
            "properties": {"secret": SECRET2, "session_token": SECRET2, "kind": "k2"}}},
            minute=1)),
        encode(cloudevent("sync.updated", "sec-2", {"credential": credential(SECRET2)}, minute=1)),
        encode_binary(cloudevent("sync.updated", "sec-3", {"credential": credential(SECRET2)},
                                 minute=1)),
        encode(cloudevent("sync.backfill.started", "sec-1", {}, minute=2)),
        encode(cloudevent("sync.credential.failed", "sec-2", {"http_status": 401,
                                                             "message": "expired"}, minute=2)),
        encode(cloudevent("sync.teleported", "sec-1", {"secret": DEAD, "password": DEAD})),
    ]  # fmt: skip
    # A readable event whose key, extra attribute and headers hold a secret: none is kept.
    extra = cloudevent("sync.run.started", "sec-1", {"run_id": "r1", "token": DEAD}, minute=3)
    extra["authorization"] = DEAD
    _, value, _ = encode(extra)
    good.append((DEAD.encode(), value, [("authorization", DEAD.encode())]))

    bad_created = cloudevent("sync.created", "sec-9", {**created("sec-9", DEAD), "provider": 7})
    bad: list[tuple[bytes, bytes, list[Any]]] = [
        (b"sec-1", f'{{"secret": "{DEAD}", broken'.encode(), []),
        (b"sec-1", f'{{"password": "{DEAD}\xff"}}'.encode("latin-1"), []),
        encode(bad_created),
        encode(cloudevent("sync.created", "sec-9", created("sec-9", DEAD)) | {"time": DEAD}),
        encode(cloudevent("sync.run.started", "sec-1", {"run_id": "r"}) | {"id": {"s": DEAD}}),
        encode(cloudevent("sync.updated", "sec-1", {"credential": DEAD})),
        encode(cloudevent("sync.updated", "sec-1", {"credential": {"secret": DEAD},
                                                    "max_age_days": DEAD})),
        (DEAD.encode(), b"", [("ce_specversion", b"1.0"), ("ce_time", DEAD.encode()),
                              ("ce_id", DEAD.encode()), ("ce_type", b"sync.created")]),
        (b"sec-1", json.dumps(cloudevent("sync.created", "sec-9", {
            **created("sec-9", DEAD), "pad": "x" * MAX_MESSAGE_BYTES})).encode(), []),
        encode(cloudevent("sync.created", "sec-9" + DEAD * 10, created("sec-9", DEAD))),
    ]  # fmt: skip
    return good + bad, len(bad)


def read_topic(bootstrap: str, topic: str, partitions: int, want: int, timeout: float) -> list[Any]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=300).values():
            got.extend(batch)
    consumer.close()
    return got


def redis_dump(url: str) -> list[bytes]:
    """Every key and every stored byte of the DB, with compressed values also inflated."""
    out: list[bytes] = []
    with redis.Redis.from_url(url) as client:
        keys = list(client.scan_iter(count=1000))
        assert keys
        for key in keys:
            out.append(key)
            kind = client.type(key).decode()
            if kind == "string":
                raw = client.get(key)
                out += [raw, unpack(raw)]
            elif kind == "hash":
                for field, value in client.hgetall(key).items():
                    out += [field, value]
            elif kind == "set":
                out += list(client.smembers(key))
            elif kind == "zset":
                out += [m for m, _ in client.zrange(key, 0, -1, withscores=True)]
            elif kind == "list":
                out += list(client.lrange(key, 0, -1))
            elif kind == "stream":
                for _, fields in client.xrange(key):
                    for field, value in fields.items():
                        out += [field, value]
                        with contextlib.suppress(Exception):
                            out.append(unpack(value))
            else:
                raise AssertionError(f"unexpected key type {kind} for {key!r}")
    return out


def test_planted_secrets_appear_nowhere(topics: Any, redis_url: str, tmp_path: Path) -> None:
    """A real `syncmon run` at DEBUG: secrets and tokens are in no log line, Redis byte, API
    response, metric or health event; dead letters reach the DLQ topic unchanged."""
    records, dead_count = planted_records()
    health_topic = f"{topics.lifecycle}.health"
    port = free_port()
    settings = fast_settings(
        topics,
        redis_url,
        "sec",
        api_tokens=TOKENS[:2],
        metrics_basic_auth=METRICS_AUTH,
        health_topic=health_topic,
        http_port=port,
        log_level="DEBUG",
        health_tick_seconds=0.2,
    )
    env = as_env(settings)
    env.pop("SYNCMON_HTTP_HOST", None)  # the default bind address is under test
    producer = KafkaProducer(bootstrap_servers=topics.bootstrap, max_request_size=8 << 20)
    for key, value, headers in records:
        producer.send(topics.lifecycle, key=key, value=value, headers=headers)
    producer.flush()
    producer.close()

    log_path = tmp_path / "run.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(SYNCMON, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    auth = bearer(TOKENS[0])
    responses: list[str] = []
    try:

        def get(path: str, **kw: Any) -> httpx.Response:
            response = httpx.get(f"{url}{path}", timeout=10, **kw)
            responses.append(response.text + json.dumps(dict(response.headers)))
            return response

        def settled() -> bool:
            try:
                page = httpx.get(f"{url}/v1/syncs", headers=auth, timeout=5).json()
            except httpx.HTTPError:
                return False
            names = {s["id"]: s for s in page.get("data", [])}
            return (
                names.keys() == {"sec-1", "sec-2", "sec-3"}
                and names["sec-1"]["name"] == "renamed"
                and names["sec-3"]["credential"] is not None
                and all(s["health"].get("evaluated_at") for s in names.values())
            )

        wait_for(settled, 60, "all events applied")
        dead = read_topic(topics.bootstrap, topics.dlq, topics.partitions, dead_count, 30)
        health_events = read_topic(topics.bootstrap, health_topic, topics.partitions, 3, 30)

        # The API binds to loopback only (nothing told it otherwise).
        assert listeners(port) == {"127.0.0.1"}, listeners(port)

        # Every API response, with and without tokens, in the header and in the query string.
        page = get("/v1/syncs", headers=auth).json()
        for sync in page["data"]:
            get(f"/v1/syncs/{sync['id']}", headers=auth)
            get(f"/v1/syncs/{sync['id']}/health", headers=auth)
        one = get("/v1/syncs/sec-1", headers=auth).json()
        props = one["credential"]["properties"]
        assert props["secret"] == props["session_token"] == props["api_key"] == MASK
        assert props["nested"] == {"auth_token": MASK, "list": [{"password": MASK}, {"kind": "x"}]}
        assert props["kind"] == "k2" and props["tokens"] == MASK
        assert get("/v1/syncs/sec-2", headers=auth).json()["credential"]["oauth_app"] == {
            "kind": "sequin",
            "client_secret": MASK,
        }
        get("/v1/summary", headers=auth)
        get("/v1/syncs", params={"token": TOKENS[0]})
        get("/v1/syncs", params={"access_token": TOKENS[1]}, headers=auth)
        get("/v1/syncs", headers=bearer(TOKENS[2]))  # not configured: 401
        get("/v1/syncs", headers=bearer("wrong"))
        get(f"/v1/syncs?cursor={TOKENS[0]}", headers=auth)
        get("/readyz")
        get("/healthz")
        get("/openapi.json")
        assert get("/metrics").status_code == 401
        metrics = get("/metrics", headers=basic(METRICS_AUTH))
        assert metrics.status_code == 200 and 'sync_id="sec-1"' in metrics.text
        get("/metrics", headers=basic(f"prom:{TOKENS[0]}"))
        redis_bytes = redis_dump(redis_url)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    logs = log_path.read_bytes()
    assert code == 0, logs[-3000:]
    assert b"DEBUG" in logs and b"serving on 127.0.0.1" in logs  # really captured at DEBUG

    assert_clean(logs, "the logs of syncmon run")
    for body in responses:
        assert_clean(body, "an API response")
    assert_clean(metrics.text, "/metrics")
    for value in redis_bytes:
        assert_clean(value, "Redis")
    assert len(health_events) >= 3
    for event in health_events:
        assert_clean(event.value + repr(event.headers).encode(), "the health topic")
    # Dead letters: unchanged (the secret stays in the record itself, by contract), but the
    # reason syncmon adds never quotes it.
    assert len(dead) == dead_count
    sent = {value for _, value, _ in records[-dead_count:]}
    assert {r.value for r in dead} == sent
    for record in dead:
        headers = dict(record.headers)
        assert headers["syncmon_error"]
        assert_clean(headers["syncmon_error"], "a DLQ reason")


# -- Redis AUTH, ACL users and TLS ----------------------------------------------------------


def sync_records(topic: str, sync_id: str = "auth-1") -> list[RawMessage]:
    recent(10)
    events = [
        cloudevent("sync.created", sync_id, created(sync_id, SECRET), minute=0),
        cloudevent("sync.run.started", sync_id, {"run_id": "r1"}, minute=1),
    ]
    return [RawMessage(topic, 0, i, *encode(e)) for i, e in enumerate(events)]


def serve_and_check(url: str, prefix: str = "auth") -> None:
    """Events folded through the app's own Redis client, then read back through the API."""
    settings = Settings(redis_url=url, redis_prefix=prefix, kafka_topic="t", api_tokens=TOKENS)
    client = redis_client(settings)
    try:
        processor = Processor(client, prefix, "t")
        prepared, result = processor.process(sync_records("t"))
        assert not prepared.dead and result.touched == {"auth-1"}
        processor.engine.sweep(client, [0])
    finally:
        client.close()
    with TestClient(create_app(settings, consume=False)) as api:
        assert api.get("/readyz").json() == {"redis": True, "consumer_in_group": True}
        body = api.get("/v1/syncs/auth-1", headers=bearer(TOKENS[0])).json()
        assert body["provider"] == "stripe" and body["credential"]["properties"]["secret"] == MASK
        assert body["health"]["evaluated_at"]
        assert api.get("/metrics").status_code == 200


@pytest.fixture(scope="module")
def password_redis() -> Iterator[RedisServer]:
    server = RedisServer(password=f"pw-{uuid.uuid4().hex}").start()
    yield server
    server.stop()


def test_redis_password_auth(password_redis: RedisServer) -> None:
    assert password_redis.password
    serve_and_check(password_redis.url, "pw")


def test_redis_acl_user_limited_to_its_keys(password_redis: RedisServer) -> None:
    """A username+password URL, for an ACL user that may touch only its own key prefix."""
    user, password = f"syncmon-{uuid.uuid4().hex[:6]}", f"u-{uuid.uuid4().hex}"
    with password_redis.client() as admin:
        admin.acl_setuser(
            user,
            enabled=True,
            passwords=[f"+{password}"],
            keys=["acl:*"],
            channels=["*"],
            commands=["+@all", "-@dangerous", "-@admin"],
        )
    url = f"redis://{user}:{password}@127.0.0.1:{password_redis.port}/0"
    with redis.Redis.from_url(url) as limited, pytest.raises(redis.exceptions.NoPermissionError):
        limited.get("other:key")
    serve_and_check(url, "acl")


def start_up_error(url: str) -> str:
    """The message the app's start-up stops with for this Redis URL."""
    settings = Settings(redis_url=url, redis_prefix="x", kafka_topic="t")
    with (
        pytest.raises(RedisCredentialsError) as info,
        TestClient(create_app(settings, consume=False)),
    ):
        pass
    return str(info.value)


@pytest.mark.parametrize("how", ["wrong", "missing", "wrong_user"])
def test_refused_credentials_stop_start_up_without_showing_them(
    password_redis: RedisServer, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    auth = {"wrong": f":{SECRET}@", "missing": "", "wrong_user": f"nobody:{SECRET}@"}[how]
    message = start_up_error(f"redis://{auth}127.0.0.1:{password_redis.port}/0")
    assert "SYNCMON_REDIS_URL" in message and "refused the credentials" in message
    assert f"127.0.0.1:{password_redis.port}" in message
    assert_clean(message, "the start-up error")
    assert_clean(caplog.text, "the logs")


def test_a_database_the_server_does_not_have_stops_start_up(password_redis: RedisServer) -> None:
    """`/99` on a 16-database Redis waited forever as "not answering yet" (readyz 503)."""
    message = start_up_error(password_redis.url.rsplit("/", 1)[0] + "/99")
    assert "SYNCMON_REDIS_URL" in message and "DB index is out of range" in message
    assert password_redis.password and password_redis.password not in message


def test_syncmon_run_with_a_wrong_redis_password_exits_clearly(
    password_redis: RedisServer,
) -> None:
    env = {
        **os.environ,
        "SYNCMON_REDIS_URL": f"redis://:{SECRET}@127.0.0.1:{password_redis.port}/0",
        "SYNCMON_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "SYNCMON_HTTP_PORT": str(free_port()),
        "SYNCMON_LOG_LEVEL": "DEBUG",
    }
    done = subprocess.run(SYNCMON, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    output = done.stdout + done.stderr
    assert "SYNCMON_REDIS_URL" in output and "refused the credentials" in output, output
    assert "Traceback" not in output, output
    assert_clean(output, "the output of syncmon run")


class TlsRedis(RedisServer):
    """redis-server with only a TLS port, certificates from a test CA; clients must present a
    certificate of that CA too (mutual TLS)."""

    def __init__(self, certs: dict[str, Path], password: str | None = None) -> None:
        super().__init__(password=password)
        self.certs = certs

    def url_with(self, ca: Path, client: bool = True) -> str:
        auth = f":{self.password}@" if self.password else ""
        query = f"ssl_cert_reqs=required&ssl_ca_certs={quote(str(ca))}"
        if client:
            query += f"&ssl_certfile={quote(str(self.certs['client_crt']))}"
            query += f"&ssl_keyfile={quote(str(self.certs['client_key']))}"
        return f"rediss://{auth}127.0.0.1:{self.port}/0?{query}"

    @property
    def url(self) -> str:
        return self.url_with(self.certs["ca"])

    def _command(self) -> list[str]:
        cmd = super()._command()
        at = cmd.index("--port")
        cmd[at : at + 2] = ["--port", "0", "--tls-port", str(self.port)]
        return [
            *cmd,
            "--tls-cert-file", str(self.certs["server_crt"]),
            "--tls-key-file", str(self.certs["server_key"]),
            "--tls-ca-cert-file", str(self.certs["ca"]),
            "--tls-auth-clients", "yes",
        ]  # fmt: skip


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tls")
    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("syncmon-client")
    paths = {n: d / n for n in ("ca", "other_ca", "server_crt", "server_key", "client_crt",
                                 "client_key")}  # fmt: skip
    ca.cert_pem.write_to_path(str(paths["ca"]))
    other.cert_pem.write_to_path(str(paths["other_ca"]))
    server.cert_chain_pems[0].write_to_path(str(paths["server_crt"]))
    server.private_key_pem.write_to_path(str(paths["server_key"]))
    client.cert_chain_pems[0].write_to_path(str(paths["client_crt"]))
    client.private_key_pem.write_to_path(str(paths["client_key"]))
    return paths


@pytest.fixture(scope="module")
def tls_redis(certs: dict[str, Path]) -> Iterator[TlsRedis]:
    server = TlsRedis(certs, password=f"tls-{uuid.uuid4().hex}").start()
    yield server
    server.stop()


def test_rediss_with_auth_end_to_end(tls_redis: TlsRedis, topics: Any) -> None:
    """The whole pipeline (consumer, health engine, publisher, API) on a TLS-only Redis."""
    with pytest.raises(redis.exceptions.ConnectionError):  # plain TCP is not served
        redis.Redis(port=tls_redis.port, password=tls_redis.password, socket_timeout=2).ping()
    serve_and_check(tls_redis.url, "tls")
    settings = fast_settings(topics, tls_redis.url, "tlse2e", health_tick_seconds=0.2)
    recent(10)
    events = [
        cloudevent("sync.created", "tls-1", created("tls-1", SECRET), minute=0),
        cloudevent("sync.run.started", "tls-1", {"run_id": "r1"}, minute=1),
    ]
    with TestClient(create_app(settings)) as api:
        wait_for(lambda: api.get("/readyz").status_code == 200, 30, "ready over TLS")
        produce_records(topics.bootstrap, topics.lifecycle, [encode(e) for e in events])

        def applied() -> Any:
            body = api.get("/v1/syncs/tls-1").json()
            return body.get("last_run") and body["health"].get("evaluated_at") and body

        body = wait_for(applied, 30, "events applied over TLS")
        assert body["credential"]["properties"]["secret"] == MASK


def test_rediss_with_an_untrusted_certificate_is_not_ready(
    tls_redis: TlsRedis, caplog: pytest.LogCaptureFixture
) -> None:
    for url in (
        tls_redis.url_with(tls_redis.certs["other_ca"]),  # server not trusted
        tls_redis.url_with(tls_redis.certs["ca"], client=False),
    ):  # no client cert
        settings = Settings(redis_url=url, redis_prefix="bad", kafka_topic="t")
        with TestClient(create_app(settings, consume=False)) as api:
            ready = api.get("/readyz")
            assert ready.status_code == 503 and ready.json()["redis"] is False
            assert api.get("/v1/summary").status_code == 503
    assert "not answering yet" in caplog.text
    assert tls_redis.password and tls_redis.password not in caplog.text


# -- Kafka SSL and SASL ----------------------------------------------------------------------


KAFKA_SECURITY = {
    "kafka_security_protocol": "SASL_SSL",
    "kafka_sasl_mechanism": "SCRAM-SHA-512",
    "kafka_sasl_username": "syncmon",
    "kafka_sasl_password": SECRET,
    "kafka_ssl_cafile": "/etc/kafka/ca.pem",
    "kafka_ssl_certfile": "/etc/kafka/client.pem",
    "kafka_ssl_keyfile": "/etc/kafka/client.key",
    "kafka_ssl_password": SECRET2,
    "kafka_ssl_check_hostname": False,
}
EXPECTED_KAFKA = {
    "security_protocol": "SASL_SSL",
    "sasl_mechanism": "SCRAM-SHA-512",
    "sasl_plain_username": "syncmon",
    "sasl_plain_password": SECRET,
    "ssl_cafile": "/etc/kafka/ca.pem",
    "ssl_certfile": "/etc/kafka/client.pem",
    "ssl_keyfile": "/etc/kafka/client.key",
    "ssl_password": SECRET2,
    "ssl_check_hostname": False,
}


class _Stop(Exception):
    pass


def test_kafka_ssl_and_sasl_reach_every_kafka_client(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    from kafka import KafkaAdminClient

    import consumers.consumer
    import consumers.kafka
    from consumers.consumer import SyncConsumer
    from consumers.publisher import HealthPublisher

    caplog.set_level(logging.DEBUG)
    built: list[tuple[str, dict[str, Any]]] = []

    class FakeAdmin:
        def __init__(self, **config: Any) -> None:
            built.append(("admin", config))

        def list_topics(self) -> list[str]:
            return [settings.kafka_topic, settings.kafka_dlq_topic, settings.health_topic]

        def close(self) -> None:
            pass

    class FakeProducer:
        def __init__(self, **config: Any) -> None:
            built.append(("producer", config))

        def close(self, timeout: float = 0) -> None:
            pass

    class FakeConsumer:
        def __init__(self, **config: Any) -> None:
            built.append(("consumer", config))

        def subscribe(self, *args: Any, **kwargs: Any) -> None:
            raise _Stop

        def close(self, **kwargs: Any) -> None:
            pass

    monkeypatch.setattr(consumers.kafka, "KafkaAdminClient", FakeAdmin)
    monkeypatch.setattr(consumers.kafka, "KafkaProducer", FakeProducer)
    monkeypatch.setattr(consumers.consumer, "KafkaConsumer", FakeConsumer)
    settings = Settings(redis_url=redis_url, **KAFKA_SECURITY)
    assert settings.kafka_security() == EXPECTED_KAFKA
    client = redis.Redis.from_url(redis_url)
    with pytest.raises(_Stop):
        SyncConsumer(settings, client)._session()
    publisher = HealthPublisher(settings, client)
    publisher._stop.set()
    publisher._loop()
    client.close()
    kinds = [kind for kind, _ in built]
    assert {"admin", "consumer", "producer"} <= set(kinds), kinds
    for kind, config in built:
        assert EXPECTED_KAFKA.items() <= config.items(), (kind, config)
    # kafka-python knows every option by these names (it refuses unknown ones).
    for cls in (KafkaConsumer, KafkaProducer, KafkaAdminClient):
        assert set(EXPECTED_KAFKA) <= set(cls.DEFAULT_CONFIG), cls
    assert_clean(caplog.text, "logs", allowed=())


def test_kafka_ssl_and_sasl_reach_the_simulator_rebuild_and_publication_check(
    monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    import threading

    import kafka

    import consumers.already
    import consumers.rebuild
    from consumers.already import published_ids
    from consumers.rebuild import Rebuild
    from monitor import simulate

    built: list[tuple[str, dict[str, Any]]] = []

    def fake(kind: str) -> Any:
        def build(*args: Any, **config: Any) -> Any:
            built.append((kind, config))
            raise _Stop

        return build

    monkeypatch.setattr(kafka, "KafkaProducer", fake("simulator"))
    monkeypatch.setattr(consumers.rebuild, "KafkaConsumer", fake("rebuild"))
    monkeypatch.setattr(consumers.already, "KafkaConsumer", fake("check"))
    settings = Settings(redis_url=redis_url, **KAFKA_SECURITY)
    with pytest.raises(_Stop):
        simulate.run("b:9092", "t", 1, 1.0, 1, 1.0, 1, stop=threading.Event(),
                     security=settings.kafka_security())  # fmt: skip
    with pytest.raises(_Stop):
        Rebuild(settings, redis.Redis.from_url(redis_url), scratch_db=None)._consumer()
    with pytest.raises(_Stop):
        published_ids("b:9092", "t", 0, {"x"}, settings.kafka_security())
    assert [kind for kind, _ in built] == ["simulator", "rebuild", "check"]
    for kind, config in built:
        assert EXPECTED_KAFKA.items() <= config.items(), (kind, config)


@pytest.mark.parametrize(
    ("values", "word"),
    [
        ({"kafka_security_protocol": "SASL_SSL"}, "SYNCMON_KAFKA_SASL_MECHANISM"),
        ({"kafka_sasl_mechanism": "PLAIN", "kafka_sasl_username": "u",
          "kafka_sasl_password": "p"}, "SYNCMON_KAFKA_SECURITY_PROTOCOL"),
        ({"kafka_ssl_cafile": "/ca.pem"}, "SYNCMON_KAFKA_SECURITY_PROTOCOL"),
        ({"kafka_security_protocol": "SSL", "kafka_ssl_certfile": "/c.pem"},
         "SYNCMON_KAFKA_SSL_KEYFILE"),
        ({"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_mechanism": "MD5",
          "kafka_sasl_username": "u", "kafka_sasl_password": "p"},
         "SYNCMON_KAFKA_SASL_MECHANISM"),
    ],
)  # fmt: skip
def test_incoherent_kafka_security_stops_start_up(values: dict[str, Any], word: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(**values)
    assert word in str(info.value)


def test_plain_ssl_and_sasl_plaintext_options() -> None:
    ssl = Settings(kafka_security_protocol="SSL", kafka_ssl_cafile="/ca.pem")
    assert ssl.kafka_security() == {
        "security_protocol": "SSL",
        "ssl_cafile": "/ca.pem",
        "ssl_check_hostname": True,
    }
    sasl = Settings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username="u",
        kafka_sasl_password="p",
    )
    assert sasl.kafka_security() == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "u",
        "sasl_plain_password": "p",
    }
    assert Settings().kafka_security() == {"security_protocol": "PLAINTEXT"}
