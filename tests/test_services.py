"""Integration tests for monitor.services: real redis-server and tansu processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from redis.backoff import NoBackoff
from redis.retry import Retry

from monitor import services
from monitor.services import (
    Broker,
    RedisServer,
    ServiceError,
    ensure_topics,
    free_port,
    start_broker,
    start_redis,
)

if TYPE_CHECKING:
    from conftest import Topics

# Consumer-group timings that join in ~3 s on tansu (defaults take ~23 s).
FAST_GROUP = {
    "max_poll_interval_ms": 10000,
    "session_timeout_ms": 6000,
    "heartbeat_interval_ms": 1000,
}


def _gone(pid: int, timeout: float = 5.0) -> bool:
    """True once no process (group) with this id exists any more."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def _admin(bootstrap: str, timeout_ms: int = 5000) -> KafkaAdminClient:
    return KafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=timeout_ms, bootstrap_timeout_ms=timeout_ms
    )


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_missing_redis_binary_names_the_apt_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(services.shutil, "which", lambda _name: None)
    with pytest.raises(ServiceError, match=r"apt-get install -y redis-server"):
        RedisServer()


@pytest.mark.integration
def test_redis_start_stop_leaves_nothing_behind() -> None:
    server = start_redis()
    pid, workdir = server.pid, server.workdir
    assert server.url == f"redis://127.0.0.1:{server.port}/0"
    with server.client() as conn:
        assert conn.ping()
        assert conn.config_get("save") == {"save": ""}
        assert conn.config_get("appendonly") == {"appendonly": "no"}
    server.stop()
    server.stop()  # idempotent
    assert not server.running
    assert _gone(pid)
    assert not workdir.exists()


@pytest.mark.integration
def test_redis_pause_resume() -> None:
    with start_redis() as server, server.client(timeout=0.3) as conn:
        assert conn.ping()
        server.pause()
        with pytest.raises(redis.TimeoutError):
            conn.ping()
        server.resume()
        assert conn.ping()


@pytest.mark.integration
def test_redis_stop_while_paused() -> None:
    server = start_redis()
    pid = server.pid
    server.pause()
    server.stop(timeout=2.0)
    assert _gone(pid)


@pytest.mark.integration
def test_redis_kill_and_restart_on_same_port() -> None:
    with start_redis() as server:
        port, old_pid = server.port, server.pid
        server.kill()
        assert _gone(old_pid)
        with pytest.raises(redis.ConnectionError), server.client(timeout=0.3) as conn:
            conn.ping()
        server.restart()
        assert server.port == port and server.pid != old_pid
        with server.client() as conn:
            assert conn.ping()


@pytest.mark.integration
def test_redis_password_and_workdir(tmp_path: Path) -> None:
    with start_redis(workdir=tmp_path, password="s3cret") as server:
        assert server.url == f"redis://:s3cret@127.0.0.1:{server.port}/0"
        with server.client() as conn:
            assert conn.ping()
        port = server.port
        with (
            pytest.raises(redis.AuthenticationError),
            redis.Redis(port=port, retry=Retry(NoBackoff(), 0)) as anon,
        ):
            anon.get("x")
        assert server.log_path.parent == tmp_path
    assert tmp_path.exists()  # a caller-owned workdir is not deleted


def test_explicit_port_in_use_is_an_error(redis_server: RedisServer) -> None:
    with pytest.raises(ServiceError, match="already in use"):
        start_redis(port=redis_server.port)


def test_redis_url_fixture_is_isolated(redis_url: str, redis_server: RedisServer) -> None:
    assert redis_url != redis_server.url
    with redis.Redis.from_url(redis_url) as conn:
        assert conn.dbsize() == 0
        conn.set("k", "v")


@pytest.mark.integration
def test_atexit_cleanup_kills_forgotten_servers() -> None:
    code = "from monitor.services import start_redis; print(start_redis().pid)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert _gone(int(out.stdout.strip()))


@pytest.mark.integration
def test_services_die_with_a_process_killed_outright() -> None:
    """`kill -9` of whatever started them (`syncmon dev`, a test run) runs no atexit."""
    code = (
        "import time; from monitor.services import start_broker, start_redis; "
        "print(start_redis().pid, start_broker().pid, flush=True); time.sleep(60)"
    )
    starter = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert starter.stdout is not None
        pids = [int(p) for p in starter.stdout.readline().split()]
        assert len(pids) == 2 and not any(_gone(p, timeout=0.5) for p in pids)
    finally:
        starter.kill()
        starter.wait(timeout=10)
    assert all(_gone(p) for p in pids)


def test_a_service_started_from_another_thread_outlives_that_thread() -> None:
    """The parent-death signal follows the starting thread: not armed off the main one."""
    started: list[RedisServer] = []
    thread = threading.Thread(target=lambda: started.append(start_redis()))
    thread.start()
    thread.join(timeout=30)
    server = started[0]
    try:
        assert not _gone(server.pid, timeout=0.5)
        assert redis.Redis.from_url(server.url).ping()
    finally:
        server.stop()


@pytest.mark.integration
def test_broker_start_pause_resume_stop() -> None:
    broker = start_broker()
    pid = broker.pid
    assert broker.bootstrap == f"127.0.0.1:{broker.port}"
    assert broker.log_path.exists()
    admin = _admin(broker.bootstrap)
    try:
        assert admin.list_topics() == []
    finally:
        admin.close()
    broker.pause()
    with pytest.raises(KafkaError):
        _admin(broker.bootstrap, timeout_ms=500).list_topics()
    broker.resume()
    admin = _admin(broker.bootstrap)
    try:
        admin.list_topics()
    finally:
        admin.close()
    broker.stop()
    broker.stop()
    assert _gone(pid)


def test_ensure_topics_creates_with_partition_count(broker: Broker) -> None:
    name = f"t.{uuid.uuid4().hex[:8]}"
    ensure_topics(broker.bootstrap, {name: 4, f"{name}.dlq": 1})
    ensure_topics(broker.bootstrap, {name: 4})  # idempotent
    admin = _admin(broker.bootstrap)
    try:
        described = {t["name"]: len(t["partitions"]) for t in admin.describe_topics([name])}
        assert described == {name: 4}
        assert {name, f"{name}.dlq"} <= set(admin.list_topics())
    finally:
        admin.close()


def test_produce_consume_round_trip(topics: Topics) -> None:
    assert topics.dlq == f"{topics.lifecycle}.dlq"
    producer = KafkaProducer(bootstrap_servers=topics.bootstrap)
    meta = producer.send(
        topics.lifecycle, key=b"sync-1", value=b'{"x":1}', headers=[("h", b"1")], partition=2
    ).get(timeout=10)
    producer.close()
    assert meta.partition == 2
    consumer = KafkaConsumer(bootstrap_servers=topics.bootstrap, enable_auto_commit=False)
    try:
        tp = TopicPartition(topics.lifecycle, 2)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        records = consumer.poll(timeout_ms=5000).get(tp, [])
    finally:
        consumer.close()
    assert [(r.key, r.value, r.headers) for r in records] == [
        (b"sync-1", b'{"x":1}', [("h", b"1")])
    ]


def test_consumer_group_joins_quickly(topics: Topics) -> None:
    producer = KafkaProducer(bootstrap_servers=topics.bootstrap)
    producer.send(topics.lifecycle, key=b"sync-1", value=b"v").get(timeout=10)
    producer.close()
    consumer = KafkaConsumer(
        topics.lifecycle,
        bootstrap_servers=topics.bootstrap,
        group_id=f"g-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **FAST_GROUP,
    )
    try:
        deadline = time.monotonic() + 20
        values: list[bytes] = []
        while not values and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                values += [r.value for r in batch]
    finally:
        consumer.close()
    assert values == [b"v"]
