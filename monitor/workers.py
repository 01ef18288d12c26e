"""Health evaluation in worker processes: a large sweep uses every core, not the one the GIL
shares with the consumer and the API.

Evaluation is already safe to run anywhere at once (each chunk is one WATCHed transaction,
each change is queued once), so workers only split the ids; a small sweep stays in process.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from redis import Redis

from monitor.engine import HealthEngine
from monitor.metrics import ProcessMetrics
from monitor.settings import Settings, redis_client

log = logging.getLogger(__name__)

PARALLEL_FROM = 500  # fewer due syncs than this are evaluated in process: IPC would cost more
TASK = 1_000  # ids per task: several tasks per worker keep them evenly busy
TRIP = 3  # pools broken in a row before the workers are left alone for a while
REST_SECONDS, MAX_REST_SECONDS = 30.0, 600.0  # doubling while they keep breaking

_engine: HealthEngine | None = None  # each worker process's own
_client: Redis | None = None


class SweepWorkers:
    """A pool of `processes` evaluators; `evaluate` returns None when it cannot (the pool
    broke, say a worker was killed), so the caller evaluates in process and nothing waits."""

    def __init__(
        self,
        settings: Settings,
        processes: int,
        metrics: ProcessMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.processes = processes
        self.metrics = metrics
        self.clock = clock
        self.broken_in_a_row = 0
        self.resting_until = 0.0  # `clock()` time; until then every sweep runs in process
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self._started: list[Future[int]] = []
        self.tasks = 0  # handed to the workers
        self.fallbacks = 0  # sweeps the caller ran itself because the pool broke

    def start(self) -> None:
        """Starts the processes now (spawned: the parent has threads), not at the first sweep."""
        with self._lock:
            self._pool = self._new_pool()
            self._started = [self._pool.submit(_ping) for _ in range(self.processes)]

    def wait_started(self, timeout: float = 60.0) -> None:
        """Blocks until the workers have started (imports done): for benchmarks and tests."""
        wait(self._started, timeout=timeout)

    def pids(self) -> list[int]:
        """The worker processes now running (for tests and operators)."""
        pool = self._pool
        return sorted(pool._processes or ()) if pool is not None else []

    def stop(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def evaluate(self, ids: list[str], found_in: dict[str, int]) -> int | None:
        """Evaluates `ids` across the workers; their errors (RedisError) are raised here."""
        pool = self._pool
        if pool is None or self.clock() < self.resting_until:
            return None
        futures: list[Future[int]] = []
        try:
            for i in range(0, len(ids), TASK):
                part = ids[i : i + TASK]
                found = {s: found_in[s] for s in part if s in found_in}
                futures.append(pool.submit(_evaluate, part, found))
            self.tasks += len(futures)
            done = sum(f.result() for f in futures)  # a worker's own error is raised here
        except BrokenProcessPool:
            self._broke(pool)
            return None
        except RuntimeError:
            if self._pool is pool:
                raise  # from a worker's evaluation: the caller's error, not the pool's
            return None  # submitted after `stop()`: shutting down
        self.broken_in_a_row = 0
        return done

    def _broke(self, pool: ProcessPoolExecutor) -> None:
        """A new pool takes over; workers that break every time (they cannot start, or are
        killed for memory) rest, so each sweep does not pay for spawning them again."""
        self.fallbacks += 1
        self.broken_in_a_row += 1
        if self.metrics is not None:
            self.metrics.worker_restarts.inc()
        self._replace(pool)
        if self.broken_in_a_row < TRIP:
            log.warning("a health worker died; restarting the pool, this sweep runs in process")
            return
        rest = min(MAX_REST_SECONDS, REST_SECONDS * 2 ** (self.broken_in_a_row - TRIP))
        self.resting_until = self.clock() + rest
        log.error(
            "the health workers broke %d sweeps in a row; evaluating in process for %.0f s",
            self.broken_in_a_row,
            rest,
        )

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init,
            initargs=(self.settings, os.getpid()),
        )

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is not broken:
                return  # replaced already, or stopped
            broken.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()


def _init(settings: Settings, parent: int) -> None:
    """The parent stops the workers; a signal to the whole process group (Ctrl-C) must not
    kill one mid-task, and a parent killed outright must not leave them behind."""
    from monitor.cli import configure_logging, tune_gc  # the CLI's, as `syncmon run` sets them

    global _engine, _client
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    configure_logging(settings.log_level)
    tune_gc()
    _engine = HealthEngine(settings.redis_prefix, settings.thresholds())
    _client = redis_client(settings)
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()


def _exit_with(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _ping() -> int:
    return os.getpid()


def _evaluate(ids: list[str], found_in: dict[str, int]) -> int:
    assert _engine is not None and _client is not None, "worker not initialised"
    return _engine.evaluate_ids(_client, ids, found_in)
