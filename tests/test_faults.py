"""Faults injected for real: kill -9 at scale, a frozen broker, Redis stopped and started.

Each test compares every stored view and every counter with the pure fold of the same log,
and writes what it measured (see `record_figures`) for docs/reliability.md.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from fastapi.testclient import TestClient

from monitor.app import create_app
from monitor.services import Broker, RedisServer, ensure_topics, free_port
from monitor.simulate import history
from tests.eventlib import produce_records
from tests.faultlib import (
    assert_exact,
    committed_offsets,
    counted,
    log_ends,
    log_tail,
    metric,
    record_figures,
    start_monitor,
    stored_fences,
    wait_counted,
    wait_for,
)
from tests.support import Topics, as_env, fast_settings

# -- kill -9 at scale -----------------------------------------------------------------------


@pytest.mark.slow
def test_kill_9_five_times_over_20k_events_gives_the_pure_fold(
    topics: Any, redis_url: str, tmp_path: Path
) -> None:
    """`syncmon run` SIGKILLed at 5 random counts of 20,003 events (500 syncs, 3 dead letters)
    and restarted each time: every view and every counter ends equal to the pure fold."""
    prefix = "crash20k"
    rng = random.Random(20_000)
    wire = history(
        syncs=500, events=20_000, seed=17, start=datetime(2026, 3, 1, tzinfo=UTC), step_seconds=2
    )
    records = [(m.key, m.value, m.headers) for m in wire]
    for at in sorted(rng.sample(range(len(records)), 3), reverse=True):  # dead letters count too
        records[at:at] = [(b"junk", b"\x00not an event", [])]
    started = time.monotonic()
    produced = produce_records(topics.bootstrap, topics.lifecycle, records)
    produce_seconds = time.monotonic() - started
    total = len(records)
    port = free_port()
    env = as_env(
        fast_settings(
            topics,
            redis_url,
            prefix,
            kafka_max_batch=200,
            http_port=port,
            health_topic=f"{topics.lifecycle}.health",
            # A killed member stays in the group until its session expires, and the restarted
            # process cannot get partitions before that: 3 s keeps 6 restarts well under 90 s.
            kafka_session_timeout_ms=3000,
        )
    )
    log = tmp_path / "monitor.log"
    client = redis.Redis.from_url(redis_url)
    # one random threshold in each fifth of 10%..90% of the stream: sorted, never all bunched
    span = total * 8 // 10 // 5
    thresholds = [total // 10 + i * span + rng.randrange(span) for i in range(5)]
    kills: list[dict[str, Any]] = []
    for threshold in thresholds:
        before = counted(client, prefix)
        proc = start_monitor(env, log)
        restarted = time.monotonic()
        try:
            resumed = wait_counted(client, prefix, before + 1, 60)
            wait_counted(client, prefix, threshold, 60, 0.005)
            time.sleep(rng.uniform(0, 0.1))  # anywhere in the poll/write/commit cycle
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        now = counted(client, prefix)
        assert before < now < total and threshold <= now, (before, threshold, now, total)
        kills.append(
            {
                "threshold": threshold,
                "counted_at_kill": now,
                "resumed_after_restart_s": round(resumed, 2),
                "alive_s": round(time.monotonic() - restarted, 2),
            }
        )

    before = counted(client, prefix)
    proc = start_monitor(env, log)
    restarted = time.monotonic()
    try:
        resumed = wait_counted(client, prefix, before + 1, 60)
        caught_up = wait_counted(client, prefix, total, 120, 0.05)
        caught_up_s = time.monotonic() - restarted
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=40)
    assert code == 0, log_tail(log)
    assert counted(client, prefix) == total, log_tail(log)
    assert len(kills) == 5 and len({k["counted_at_kill"] for k in kills}) == 5

    exact, _ = assert_exact(produced, redis_url, prefix)
    assert exact["views_compared"] > 500  # every sync and every provider
    record_figures(
        tmp_path,
        "kill9_20k",
        {
            "events": total,
            "produce_s": round(produce_seconds, 2),
            "kills": kills,
            "last_restart_resumed_s": round(resumed, 2),
            "last_restart_caught_up_s": round(caught_up_s, 2),
            "last_restart_drain_s": round(caught_up, 2),
            **exact,
        },
    )


# -- broker frozen -------------------------------------------------------------------------


@pytest.fixture
def own_broker() -> Iterator[Broker]:
    """A broker of this test's own, since the test freezes it."""
    server = Broker().start()
    yield server
    server.stop()


@pytest.mark.slow
def test_broker_frozen_20s_then_resumed_loses_nothing(
    own_broker: Broker, redis_url: str, tmp_path: Path
) -> None:
    """SIGSTOP the broker for 20 s mid-stream: the process stays up, /readyz says 503 and
    syncmon_kafka_connected 0 until SIGCONT, then it catches up with nothing lost or doubled."""
    prefix = "frozen"
    lifecycle = f"sync.lifecycle.{uuid.uuid4().hex[:8]}"
    topics = Topics(own_broker.bootstrap, lifecycle, f"{lifecycle}.dlq")
    ensure_topics(topics.bootstrap, {topics.lifecycle: 3, topics.dlq: 3})
    wire = history(
        syncs=150, events=6000, seed=23, start=datetime(2026, 5, 1, tzinfo=UTC), step_seconds=3
    )
    records = [(m.key, m.value, m.headers) for m in wire]
    half = len(records) // 2
    settings = fast_settings(topics, redis_url, prefix, kafka_max_batch=100, retry_max_seconds=1.0)
    probe = redis.Redis.from_url(redis_url)
    freeze_seconds = 20.0
    samples: list[tuple[float, int, int, float | None]] = []

    with TestClient(create_app(settings)) as client:
        first = produce_records(topics.bootstrap, topics.lifecycle, records[:half])
        wait_for(lambda: counted(probe, prefix) >= half // 3, 60, 0.01, "consumption to start")
        own_broker.pause()
        frozen_at = time.monotonic()
        at_freeze = counted(probe, prefix)
        try:
            assert at_freeze < half, f"{at_freeze} of {half} counted: not mid-stream"
            while (elapsed := time.monotonic() - frozen_at) < freeze_seconds:
                alive = client.get("/healthz").status_code
                ready = client.get("/readyz").status_code
                kafka = metric(client.get("/metrics").text, "syncmon_kafka_connected")
                samples.append((elapsed, alive, ready, kafka))
                time.sleep(0.25)
        finally:
            own_broker.resume()
        resumed_at = time.monotonic()
        at_resume = counted(probe, prefix)

        assert all(alive == 200 for _, alive, _, _ in samples)
        not_ready = [t for t, _, ready, _ in samples if ready == 503]
        disconnected = [t for t, _, _, kafka in samples if kafka == 0]
        assert not_ready, f"/readyz never said 503 while the broker was frozen: {samples}"
        assert disconnected, f"syncmon_kafka_connected never 0 while frozen: {samples}"
        # once noticed, it holds until the broker is back: no flapping to ready
        assert all(r == 503 for t, _, r, _ in samples if t >= not_ready[0]), samples
        assert all(k == 0 for t, _, _, k in samples if t >= disconnected[0]), samples

        ready_after = wait_for(
            lambda: client.get("/readyz").status_code == 200, 60, 0.1, "/readyz back to 200"
        )
        second = produce_records(topics.bootstrap, topics.lifecycle, records[half:])
        wait_for(lambda: counted(probe, prefix) >= len(records), 90, 0.1, "catching up")
        caught_up = time.monotonic() - resumed_at
        assert client.get("/readyz").status_code == 200
        assert metric(client.get("/metrics").text, "syncmon_kafka_connected") == 1

    exact, _ = assert_exact(first + second, redis_url, prefix)
    record_figures(
        tmp_path,
        "broker_frozen",
        {
            "events": len(records),
            "freeze_seconds": freeze_seconds,
            "counted_at_freeze": at_freeze,
            "counted_at_resume": at_resume,
            "readyz_503_after_s": round(not_ready[0], 2),
            "kafka_metric_0_after_s": round(disconnected[0], 2),
            "ready_again_after_resume_s": round(ready_after, 2),
            "caught_up_after_resume_s": round(caught_up, 2),
            **exact,
        },
    )


# -- Redis stopped and started -------------------------------------------------------------


@pytest.fixture
def durable_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own with an fsync'd append-only file: it survives a stop."""
    server = RedisServer(persistent=True).start()
    yield server
    server.stop()


def persisted(server: RedisServer, copy_to: Path, prefix: str, topic: str) -> tuple[Any, int]:
    """Fences and count in the data files of the stopped server, read from a copy of them.

    The consumer writes again the moment the real server is back, so what Redis held while
    it was down is read offline: a second redis-server loads a copy of the append-only file.
    """
    shutil.copytree(server.workdir, copy_to)
    with RedisServer(workdir=copy_to, persistent=True) as twin:
        client = twin.client(timeout=5)
        fences, count = stored_fences(client, prefix, topic, 3), counted(client, prefix)
        client.close()
    return fences, count


@pytest.mark.slow
def test_redis_stopped_and_started_commits_nothing_unstored(
    topics: Any, durable_redis: RedisServer, tmp_path: Path
) -> None:
    """Redis stopped mid-stream three times (SIGTERM 6 s, SIGKILL 12 s, SIGSTOP 6 s; AOF with
    fsync always) while events keep coming: no committed offset ever passes the fences Redis
    held, nothing is lost, nothing is applied twice."""
    prefix = "redisdown"
    wire = history(
        syncs=150, events=6000, seed=31, start=datetime(2026, 6, 1, tzinfo=UTC), step_seconds=3
    )
    records = [(m.key, m.value, m.headers) for m in wire]
    settings = fast_settings(
        topics,
        durable_redis.url,
        prefix,
        kafka_max_batch=100,
        retry_max_seconds=1.0,
        health_topic=f"{topics.lifecycle}.health",
    )
    group = settings.kafka_group_id
    probe = durable_redis.client(timeout=5)
    produced: list[Any] = []
    cycles: list[dict[str, Any]] = []

    def outage(how: str, down: float, later: list[Any]) -> None:
        """Stops Redis mid-stream for `down` s, produces `later` meanwhile, checks every
        committed offset against what Redis held, and brings it back."""
        stop, back = {
            "SIGTERM": (durable_redis.shutdown, durable_redis.start),
            "SIGKILL": (durable_redis.kill, durable_redis.start),
            "SIGSTOP": (durable_redis.pause, durable_redis.resume),
        }[how]
        before_stop = len(produced)
        probe.close()
        stop()
        stopped_at = time.monotonic()
        produced.extend(produce_records(topics.bootstrap, topics.lifecycle, later))
        samples: list[dict[int, int]] = []
        statuses: set[tuple[int, int]] = set()
        while time.monotonic() - stopped_at < down:
            samples.append(committed_offsets(topics.bootstrap, group, topics.lifecycle))
            statuses.add((client.get("/healthz").status_code, client.get("/readyz").status_code))
            time.sleep(0.25)
        samples.append(committed_offsets(topics.bootstrap, group, topics.lifecycle))
        fences, stored = persisted(
            durable_redis, tmp_path / f"copy-{how}", prefix, topics.lifecycle
        )
        ends = log_ends(produced, 3)
        back()
        restarted_at = time.monotonic()
        resumed = wait_for(lambda: counted(probe, prefix) > stored, 60, 0.02, "counting to resume")
        caught_up = wait_counted(probe, prefix, len(produced), 90, 0.02)

        # alive throughout; not ready (a paused Redis may first take a ping timeout to say so)
        assert {alive for alive, _ in statuses} == {200} and (200, 503) in statuses, statuses
        assert how == "SIGSTOP" or statuses == {(200, 503)}, statuses
        assert 0 < stored < before_stop, f"{stored} of {before_stop} stored: not mid-stream"
        assert sum(ends.values()) == len(produced)
        assert sum(f + 1 for f in fences.values()) == stored  # one fence move per counted event
        assert any(samples[0].values()), "nothing was committed before the outage"
        over = [
            (p, offset, fences[p])
            for sample in samples
            for p, offset in sample.items()
            if offset > fences[p] + 1
        ]
        assert not over, f"committed past what Redis held (partition, committed, fence): {over}"
        cycles.append(
            {
                "how": how,
                "down_s": round(restarted_at - stopped_at, 2),
                "stored_at_stop": stored,
                "produced_before_stop": before_stop,
                "produced_by_restart": len(produced),
                "commit_samples": len(samples),
                "committed_max": {p: max(s.get(p, 0) for s in samples) for p in range(3)},
                "fences": fences,
                "resumed_after_restart_s": round(resumed, 2),
                "caught_up_after_restart_s": round(caught_up, 2),
            }
        )

    with TestClient(create_app(settings)) as client:
        produced.extend(produce_records(topics.bootstrap, topics.lifecycle, records[:1500]))
        wait_counted(probe, prefix, 500, 60)
        outage("SIGTERM", 6, records[1500:3000])
        wait_counted(probe, prefix, 3000, 60)
        # longer than max_poll_interval (10 s): the consumer, stuck retrying its batch, leaves
        # the group, then writes that batch, fails to commit it, rejoins and re-reads it
        produced.extend(produce_records(topics.bootstrap, topics.lifecycle, records[3000:4000]))
        wait_counted(probe, prefix, 3400, 60)
        outage("SIGKILL", 12, records[4000:4500])
        wait_counted(probe, prefix, 4500, 60)
        produced.extend(produce_records(topics.bootstrap, topics.lifecycle, records[4500:5500]))
        wait_counted(probe, prefix, 4900, 60)
        outage("SIGSTOP", 6, records[5500:])
        assert counted(probe, prefix) == len(records)
        wait_for(lambda: client.get("/readyz").status_code == 200, 60, 0.1, "ready again")
        final = committed_offsets(topics.bootstrap, group, topics.lifecycle)
        ends = log_ends(produced, 3)
        fences = stored_fences(probe, prefix, topics.lifecycle, 3)
        wait_for(
            lambda: committed_offsets(topics.bootstrap, group, topics.lifecycle) == ends,
            30, 0.2, "the last commit",
        )  # fmt: skip
        assert fences == {p: end - 1 for p, end in ends.items()}
        assert all(final[p] <= fences[p] + 1 for p in final)

    exact, _ = assert_exact(produced, durable_redis.url, prefix)
    record_figures(
        tmp_path,
        "redis_stop_start",
        {"events": len(records), "cycles": cycles, **exact},
    )
