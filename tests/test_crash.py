"""Crash safety: a monitor killed with SIGKILL mid-stream and restarted ends exactly right."""

from __future__ import annotations

import os
import signal
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import redis

from monitor.services import free_port
from monitor.simulate import history
from tests.eventlib import expected_fold, produce_records, stored_state
from tests.faultlib import counted, start_monitor
from tests.support import as_env, fast_settings

PREFIX = "crash"


def test_kill_9_mid_stream_then_restart_gives_the_pure_fold(
    topics: Any, redis_url: str, tmp_path: Path
) -> None:
    wire = history(
        syncs=60, events=3000, seed=7, start=datetime(2026, 3, 1, tzinfo=UTC), step_seconds=2
    )
    records = [(m.key, m.value, m.headers) for m in wire]
    records[100:100] = [(b"junk", b"\x00not an event", [])]  # a dead letter is counted once too
    produced = produce_records(topics.bootstrap, topics.lifecycle, records)
    port = free_port()
    env = as_env(fast_settings(topics, redis_url, PREFIX, kafka_max_batch=50, http_port=port))
    log = tmp_path / "monitor.log"
    client = redis.Redis.from_url(redis_url)
    total = len(records)
    kills = 0
    for threshold in (total // 4, total // 2):
        proc = start_monitor(env, log)
        deadline = time.monotonic() + 60
        while counted(client, PREFIX) < threshold and time.monotonic() < deadline:
            time.sleep(0.01)
        now = counted(client, PREFIX)
        assert threshold <= now < total, f"{now} of {total} counted: not mid-stream"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1

    proc = start_monitor(env, log)
    try:
        deadline = time.monotonic() + 90
        while counted(client, PREFIX) < total and time.monotonic() < deadline:
            time.sleep(0.1)
        assert counted(client, PREFIX) == total, log.read_text()[-3000:]
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0, log.read_text()[-3000:]

    expected_views, expected_counts = expected_fold(produced)
    stored_views, stored_counts = stored_state(redis_url, PREFIX, list(expected_views))
    assert kills == 2
    assert stored_counts == expected_counts
    mismatched = [k for k, v in expected_views.items() if stored_views[k] != v]
    assert not mismatched, mismatched[:5]
    assert len(expected_views) > 60  # every sync and provider was compared
