"""APScheduler drives health on time: deadline sweeps of owned partitions and provider fan-out."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from apscheduler.schedulers.background import BackgroundScheduler
from redis import Redis
from redis.exceptions import RedisError

from monitor.engine import HealthEngine
from monitor.metrics import ProcessMetrics
from monitor.workers import PARALLEL_FROM, SweepWorkers

log = logging.getLogger(__name__)

JOB_ID = "health-tick"


class HealthScheduler:
    """Runs `tick` every `interval` seconds and at once when `wake()` is called."""

    def __init__(
        self,
        engine: HealthEngine,
        redis: Redis,
        owned: Callable[[], frozenset[int]],
        interval: float,
        metrics: ProcessMetrics | None = None,
        workers: SweepWorkers | None = None,
    ) -> None:
        self.metrics = metrics
        self.workers = workers
        self.engine = engine
        self.redis = redis
        self.owned = owned
        self.interval = interval
        self.ticks = 0
        self.last_tick_seconds = 0.0
        self.last_evaluated = 0
        self._scheduler = BackgroundScheduler(timezone=UTC)
        self._again = threading.Event()  # a wake that came while a tick ran
        self._running = threading.Lock()

    def start(self) -> None:
        if self.workers is not None:
            self.workers.start()
        self._scheduler.add_job(
            self.tick,
            "interval",
            seconds=self.interval,
            id=JOB_ID,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
            next_run_time=datetime.now(UTC),
        )
        self._scheduler.start()

    def stop(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=True)
        if self.workers is not None:
            self.workers.stop()

    def wake(self) -> None:
        """Run a tick now (a batch touched syncs, or a provider incident changed).

        A wake during a tick is not lost: the running tick sweeps once more when it ends
        (APScheduler would drop a second instance of the job instead).
        """
        self._again.set()
        if self._scheduler.running and not self._running.locked():
            self._scheduler.modify_job(JOB_ID, next_run_time=datetime.now(UTC))

    def tick(self) -> int:
        """Sweeps until no wake arrived during the last sweep."""
        done = 0
        with self._running:
            while True:
                self._again.clear()
                swept = self._sweep()
                if swept is None or not self._again.is_set():  # Redis down: wait for the next tick
                    return done + (swept or 0)
                done += swept

    def _sweep(self) -> int | None:
        """Evaluates what is due in owned partitions, then any requested provider fan-out."""
        started = time.perf_counter()
        try:
            done = self.engine.sweep(self.redis, self.owned(), evaluate=self._evaluate)
            done += self.engine.fan_out(self.redis, evaluate=self._evaluate)
        except RedisError as exc:
            log.warning("health tick skipped: redis unavailable (%s)", exc)
            return None
        self.ticks += 1
        self.last_evaluated = done
        self.last_tick_seconds = time.perf_counter() - started
        if self.metrics is not None:
            self.metrics.tick_duration.observe(self.last_tick_seconds)
            self.metrics.evaluations.inc(done)
        return done

    def _evaluate(self, ids: list[str], found_in: dict[str, int]) -> int:
        """Many syncs go to the worker processes, if any; a few, or a broken pool, stay here."""
        if self.workers is not None and len(ids) >= PARALLEL_FROM:
            done = self.workers.evaluate(ids, found_in)
            if done is not None:
                return done
        return self.engine.evaluate_ids(self.redis, ids, found_in)
