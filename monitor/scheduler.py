"""APScheduler drives health on time: deadline sweeps of owned partitions and provider fan-out."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from apscheduler.schedulers.background import BackgroundScheduler
from redis import Redis
from redis.exceptions import RedisError

from monitor.engine import HealthEngine
from monitor.metrics import ProcessMetrics

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
    ) -> None:
        self.metrics = metrics
        self.engine = engine
        self.redis = redis
        self.owned = owned
        self.interval = interval
        self.ticks = 0
        self.last_tick_seconds = 0.0
        self.last_evaluated = 0
        self._scheduler = BackgroundScheduler(timezone=UTC)

    def start(self) -> None:
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

    def wake(self) -> None:
        """Run the next tick now (a provider incident changed: its syncs need evaluating)."""
        if self._scheduler.running:
            self._scheduler.modify_job(JOB_ID, next_run_time=datetime.now(UTC))

    def tick(self) -> int:
        """Evaluates what is due in owned partitions, then any requested provider fan-out."""
        started = time.perf_counter()
        try:
            done = self.engine.sweep(self.redis, self.owned()) + self.engine.fan_out(self.redis)
        except RedisError as exc:
            log.warning("health tick skipped: redis unavailable (%s)", exc)
            return 0
        self.ticks += 1
        self.last_evaluated = done
        self.last_tick_seconds = time.perf_counter() - started
        if self.metrics is not None:
            self.metrics.tick_duration.observe(self.last_tick_seconds)
            self.metrics.evaluations.inc(done)
        return done
