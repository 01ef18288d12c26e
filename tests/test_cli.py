"""The CLI as an operator runs it: bad settings, the simulator, and starting before Kafka."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from kafka import KafkaConsumer, TopicPartition

from monitor.services import Broker, free_port
from monitor.settings import SettingsError, load_settings

SYNCMON = [sys.executable, "-m", "monitor.cli"]


def test_bad_settings_stop_start_up_naming_the_variable() -> None:
    env = {**os.environ, "SYNCMON_HTTP_PORT": "eighty", "SYNCMON_REDIS_URL": "http://nope"}
    done = subprocess.run([*SYNCMON, "run"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "SYNCMON_HTTP_PORT" in done.stderr and "SYNCMON_REDIS_URL" in done.stderr
    assert "Traceback" not in done.stderr


def test_unparseable_settings_stop_start_up_naming_each_variable() -> None:
    """Values only the environment can give: a URL with a bad port, and JSON that is not."""
    env = {
        **os.environ,
        "SYNCMON_REDIS_URL": "redis://localhost:notaport/0",
        "SYNCMON_HEALTH_PROVIDER_OVERRIDES": "nope",
        "SYNCMON_API_TOKENS": " , ",
    }
    done = subprocess.run([*SYNCMON, "run"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    for name in ("SYNCMON_REDIS_URL", "SYNCMON_HEALTH_PROVIDER_OVERRIDES", "SYNCMON_API_TOKENS"):
        assert name in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) <= 5, done.stderr


def test_settings_objects_validate_without_the_environment() -> None:
    with pytest.raises(SettingsError, match="SYNCMON_KAFKA_MAX_BATCH"):
        load_settings(kafka_max_batch=0)
    assert load_settings(api_tokens="a, b,,").api_tokens == ("a", "b")


def test_simulate_produces_the_requested_events(topics: Any) -> None:
    done = subprocess.run(
        [*SYNCMON, "simulate", "--bootstrap", topics.bootstrap, "--topic", topics.lifecycle,
         "--syncs", "5", "--rate", "500", "--max-events", "60", "--seed", "3",
         "--no-create-topic"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "sent 60 events" in done.stdout
    consumer = KafkaConsumer(bootstrap_servers=topics.bootstrap, auto_offset_reset="earliest")
    consumer.assign([TopicPartition(topics.lifecycle, p) for p in range(topics.partitions)])
    got: list[Any] = []
    deadline = time.monotonic() + 20
    while len(got) < 60 and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=300).values():
            got.extend(batch)
    consumer.close()
    assert len(got) == 60
    types = {dict(r.headers).get("ce_type") or r.value[:400] for r in got}
    assert any(b"sync.created" in t for t in types)


def test_run_before_kafka_is_up_waits_then_consumes(redis_url: str, tmp_path: Path) -> None:
    broker_port, http_port = free_port(), free_port()
    env = {
        **os.environ,
        "SYNCMON_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{broker_port}",
        "SYNCMON_KAFKA_TOPIC_PARTITIONS": "2",
        "SYNCMON_KAFKA_SESSION_TIMEOUT_MS": "6000",
        "SYNCMON_KAFKA_MAX_POLL_INTERVAL_MS": "10000",
        "SYNCMON_REDIS_URL": redis_url,
        "SYNCMON_HTTP_PORT": str(http_port),
        "SYNCMON_RETRY_MAX_SECONDS": "1",
    }
    log = tmp_path / "run.log"
    proc = subprocess.Popen(
        [*SYNCMON, "run"], env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{http_port}"
    broker = None
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                ready = httpx.get(f"{url}/readyz", timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert ready.status_code == 503 and ready.json()["consumer_in_group"] is False
        assert httpx.get(f"{url}/healthz").status_code == 200

        broker = Broker(port=broker_port).start()
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/readyz", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.3)
        sent = subprocess.run(
            [*SYNCMON, "simulate", "--bootstrap", broker.bootstrap, "--syncs", "3",
             "--rate", "500", "--max-events", "20", "--seed", "5", "--no-create-topic"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert sent.returncode == 0, sent.stderr
        deadline = time.monotonic() + 30
        while not httpx.get(f"{url}/v1/syncs").json()["data"]:
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=40)
        if broker is not None:
            broker.stop()
    assert code == 0, log.read_text()[-2000:]


def test_kafka_reading_a_socket_it_closed_logs_no_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """kafka-python's IO loop can read a socket its close() already dropped; a SIGTERM then
    ended with an ERROR and a traceback (seen in test_workers). The run's logging drops that
    record, and only that one."""
    from kafka.net.transport import KafkaTCPTransport

    from monitor.cli import configure_logging

    touched = [logging.getLogger(n) for n in ("kafka", "apscheduler", "kafka.net.transport")]
    saved = [(logger, logger.level, list(logger.filters)) for logger in touched]
    try:
        configure_logging("INFO")
        transport = KafkaTCPTransport(None, None)  # the state close() leaves: no socket
        transport._closed = True
        with caplog.at_level(logging.INFO):
            data, error = transport._sock_recv()
            logging.getLogger("kafka.net.transport").error("a real problem", exc_info=ValueError())
    finally:  # later tests in this process capture kafka's records at their own levels
        for logger, level, filters in saved:
            logger.setLevel(level)
            logger.filters[:] = filters
    assert data == b"" and error is not None  # the client still sees the failure it handles
    assert [r.getMessage() for r in caplog.records] == ["a real problem"]
