"""Health worker processes: a large sweep is split across them with the same results and the
same exactly-once changes; a killed worker costs one sweep in process; they never outlive
`syncmon run`, however it ends."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis

from consumers.decode import RawMessage
from consumers.processor import Processor
from monitor.engine import HealthEngine
from monitor.health import ThresholdBook, Thresholds, evaluate
from monitor.metrics import ProcessMetrics
from monitor.scheduler import HealthScheduler
from monitor.services import child_pids, ensure_topics, free_port
from monitor.settings import Settings
from monitor.store.base import text
from monitor.store.health import HealthViews
from monitor.store.outbox import Outbox
from monitor.store.syncs import SyncViews
from monitor.workers import PARALLEL_FROM, REST_SECONDS, TRIP, SweepWorkers
from tests.eventlib import cloudevent, encode, produce_records, recent, sync_created
from tests.faultlib import log_tail, read_topic, ready, start_monitor
from tests.support import Topics, as_env, fast_settings, wait_for

TOPIC = "sync.lifecycle"
SYNCS = PARALLEL_FROM + 100


def created_records(n: int, tag: str) -> list[tuple[bytes, bytes, list[tuple[str, bytes]]]]:
    recent(20)
    return [
        encode(cloudevent("sync.created", f"{tag}-{i:04d}", sync_created(f"{tag}-{i:04d}")))
        for i in range(n)
    ]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def loaded(redis_url: str) -> tuple[redis.Redis, str, list[str]]:
    """SYNCS syncs folded into a fresh prefix, none evaluated yet."""
    client = redis.Redis.from_url(redis_url)
    prefix = f"workers-{uuid.uuid4().hex[:6]}"
    messages = [
        RawMessage(TOPIC, i % 3, i // 3, k, v, h)
        for i, (k, v, h) in enumerate(created_records(SYNCS, prefix))
    ]
    Processor(client, prefix, TOPIC).process(messages)
    ids = sorted(text(k).rsplit(":", 1)[1] for k in client.keys(f"{prefix}:sync:*"))
    return client, prefix, ids


def test_a_large_sweep_runs_in_the_workers_with_the_results_of_one_process(
    redis_url: str, loaded: tuple[redis.Redis, str, list[str]]
) -> None:
    client, prefix, ids = loaded
    engine = HealthEngine(prefix, ThresholdBook(Thresholds()))
    workers = SweepWorkers(Settings(redis_url=redis_url, redis_prefix=prefix), 2)
    scheduler = HealthScheduler(engine, client, lambda: frozenset(range(3)), 1.0, workers=workers)
    workers.start()
    try:
        assert len(ids) == SYNCS
        assert scheduler.tick() == SYNCS
        assert workers.tasks >= 1 and workers.fallbacks == 0  # not evaluated here
        assert scheduler.tick() == 0  # nothing left due
    finally:
        workers.stop()
    stored = HealthViews(prefix).get_many(client, ids)
    views = SyncViews(prefix).get_many(client, ids)
    for view, health in zip(views, stored, strict=True):
        assert view is not None and health is not None
        assert health.status is evaluate(view, health.evaluated_at).status
    changes = client.xrange(Outbox(prefix).key)
    assert sorted(json.loads(fields[b"event"])["subject"] for _, fields in changes) == ids


def test_a_killed_worker_costs_one_sweep_in_process(
    redis_url: str, loaded: tuple[redis.Redis, str, list[str]]
) -> None:
    client, prefix, ids = loaded
    metrics = ProcessMetrics()
    workers = SweepWorkers(Settings(redis_url=redis_url, redis_prefix=prefix), 2, metrics)
    engine = HealthEngine(prefix, ThresholdBook(Thresholds()))
    scheduler = HealthScheduler(engine, client, lambda: frozenset(range(3)), 1.0, metrics, workers)
    workers.start()
    try:
        pids = wait_for(lambda: len(workers.pids()) == 2 and workers.pids(), what="2 workers")
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not any(alive(p) for p in pids), what="workers killed")
        assert scheduler.tick() == SYNCS  # the broken pool's sweep, run here instead
        assert workers.fallbacks == 1
        assert metrics.registry.get_sample_value("syncmon_health_worker_restarts_total") == 1
        assert HealthViews(prefix).get_many(client, ids).count(None) == 0
        assert workers.evaluate(ids, dict.fromkeys(ids, 0)) == SYNCS  # a new pool took over
        assert set(workers.pids()).isdisjoint(pids)
    finally:
        workers.stop()
    assert not any(alive(p) for p in pids)


class DyingWorkers(SweepWorkers):
    """Workers that die as they start, every time (as if killed for memory at once)."""

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=os._exit,
            initargs=(3,),
        )


def test_workers_that_keep_breaking_rest_and_the_sweeps_run_in_process(
    redis_url: str, loaded: tuple[redis.Redis, str, list[str]]
) -> None:
    client, prefix, ids = loaded
    now = [1_000.0]
    metrics = ProcessMetrics()
    settings = Settings(redis_url=redis_url, redis_prefix=prefix)
    workers = DyingWorkers(settings, 2, metrics, clock=lambda: now[0])
    engine = HealthEngine(prefix, ThresholdBook(Thresholds()))
    scheduler = HealthScheduler(engine, client, lambda: frozenset(range(3)), 1.0, metrics, workers)
    workers.start()
    try:
        assert scheduler.tick() == SYNCS  # evaluated in process after the pool broke
        for _ in range(TRIP - 1):
            assert workers.evaluate(ids, {}) is None
        assert workers.fallbacks == TRIP and workers.broken_in_a_row == TRIP
        assert workers.resting_until == now[0] + REST_SECONDS
        tasks = workers.tasks
        assert workers.evaluate(ids, {}) is None  # resting: not even tried
        assert workers.tasks == tasks and workers.fallbacks == TRIP
        now[0] += REST_SECONDS
        assert workers.evaluate(ids, {}) is None  # tried again after the rest, broke again
        assert workers.tasks > tasks and workers.fallbacks == TRIP + 1
        assert workers.resting_until == now[0] + 2 * REST_SECONDS  # and rests twice as long
        restarts = metrics.registry.get_sample_value("syncmon_health_worker_restarts_total")
        assert restarts == TRIP + 1
    finally:
        workers.stop()
    assert HealthViews(prefix).get_many(client, ids).count(None) == 0


def test_a_sweep_that_works_ends_the_run_of_breakages(
    redis_url: str, loaded: tuple[redis.Redis, str, list[str]]
) -> None:
    _, prefix, ids = loaded
    workers = SweepWorkers(Settings(redis_url=redis_url, redis_prefix=prefix), 2)
    workers.broken_in_a_row = TRIP - 1
    workers.start()
    try:
        assert workers.evaluate(ids, {}) == SYNCS
        assert workers.broken_in_a_row == 0 and workers.resting_until == 0.0
    finally:
        workers.stop()


@pytest.mark.parametrize("ending", ["SIGTERM", "SIGKILL"])
def test_syncmon_run_evaluates_in_its_workers_and_leaves_none_behind(
    topics: Topics, redis_url: str, tmp_path: Path, ending: str
) -> None:
    """A real `syncmon run` with two workers: SYNCS new syncs (one large sweep) each get
    health and one published change; SIGTERM or SIGKILL of it ends its workers too."""
    prefix = f"workers-{uuid.uuid4().hex[:6]}"
    health_topic = f"{topics.lifecycle}.health"
    ensure_topics(topics.bootstrap, {health_topic: topics.partitions})
    port = free_port()
    settings = fast_settings(
        topics, redis_url, prefix, http_port=port, health_topic=health_topic, health_workers=2
    )
    log = tmp_path / "syncmon.log"
    proc = start_monitor(as_env(settings), log)
    try:
        workers = wait_for(lambda: len(child_pids(proc.pid)) >= 2 and child_pids(proc.pid), 30)
        wait_for(lambda: ready(port), 30, what="ready")
        produce_records(topics.bootstrap, topics.lifecycle, created_records(SYNCS, prefix))
        client = redis.Redis.from_url(redis_url)
        wait_for(
            lambda: len(client.keys(f"{prefix}:health:*")) == SYNCS, 60, what="every sync evaluated"
        )
        events = wait_for(
            lambda: (
                (e := read_topic(topics.bootstrap, health_topic, topics.partitions, 1.0))
                and len(e) >= SYNCS
                and e
            ),
            60,
            what="every change published",
        )
        subjects = [value["subject"] for _, _, _, value in events]
        assert len(subjects) == len(set(subjects)) == SYNCS, "each change published once"
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        assert "syncmon_sync_health_status" in metrics
    except BaseException:
        print(log_tail(log))
        raise
    finally:
        if ending == "SIGTERM":  # to the whole group, as a terminal's Ctrl-C or a supervisor
            os.killpg(proc.pid, signal.SIGTERM)
        else:  # to syncmon alone: its orphaned workers must notice and end
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    wait_for(lambda: not any(alive(p) for p in workers), 10, what="workers ended with syncmon")
    if ending == "SIGTERM":
        assert proc.returncode == 0, log_tail(log)
        assert "Traceback" not in log.read_text(), log_tail(log)


def test_no_workers_when_set_to_zero(topics: Topics, redis_url: str, tmp_path: Path) -> None:
    settings = fast_settings(topics, redis_url, "w0", http_port=free_port(), health_workers=0)
    log = tmp_path / "syncmon.log"
    proc = start_monitor(as_env(settings), log)
    try:
        wait_for(lambda: ready(settings.http_port), 30, what="ready")
        assert child_pids(proc.pid) == []
    except AssertionError:
        print(log_tail(log))
        raise
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
