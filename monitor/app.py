"""The `syncmon run` process: HTTP app whose lifespan owns the consumer thread."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from consumers.consumer import SyncConsumer
from consumers.processor import BatchResult
from consumers.publisher import HealthPublisher
from monitor import __version__
from monitor.api import Runtime, install_error_handlers, router
from monitor.engine import HealthEngine
from monitor.scheduler import HealthScheduler
from monitor.settings import Settings

log = logging.getLogger(__name__)


def redis_client(settings: Settings) -> redis.Redis:
    """Short timeouts so an unreachable Redis is noticed and retried, not waited on forever."""
    return redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=5,
        socket_connect_timeout=3,
        health_check_interval=15,
    )


def wake(result: BatchResult, scheduler: HealthScheduler | None) -> None:
    """Evaluate the syncs a batch touched (and any provider fan-out) now, not at the next tick."""
    if (result.touched or result.providers) and scheduler is not None:
        scheduler.wake()


def create_app(settings: Settings, consume: bool = True) -> FastAPI:
    """Builds the app; nothing starts until the lifespan runs (never at import)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = redis_client(settings)
        engine = HealthEngine(settings.redis_prefix, settings.thresholds())
        consumer = publisher = scheduler = None
        if consume:
            consumer = SyncConsumer(settings, client, on_batch=lambda r: wake(r, scheduler))
            scheduler = HealthScheduler(
                engine, client, consumer.owned_partitions, settings.health_tick_seconds
            )
            publisher = HealthPublisher(settings, redis_client(settings))
        app.state.runtime = Runtime(settings, client)
        app.state.consumer = consumer
        app.state.scheduler = scheduler
        app.state.publisher = publisher
        for part in (consumer, scheduler, publisher):
            if part is not None:
                part.start()
        log.info("syncmon %s serving on %s:%s", __version__, settings.http_host, settings.http_port)
        try:
            yield
        finally:
            for part in (consumer, scheduler, publisher):  # stop intake first
                if part is not None:
                    part.stop()
            client.close()

    app = FastAPI(
        title="syncmon",
        version=__version__,
        description="Health and status of data syncs, folded from their lifecycle events.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(router)

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    def readyz() -> JSONResponse:
        """200 only while Redis answers and the consumer is in its group."""
        rt: Runtime = app.state.runtime
        consumer: SyncConsumer | None = app.state.consumer
        try:
            redis_ok = bool(rt.redis.ping())
        except RedisError:
            redis_ok = False
        group_ok = consumer is None or consumer.in_group
        body = {"redis": redis_ok, "consumer_in_group": group_ok}
        return JSONResponse(body, status_code=200 if redis_ok and group_ok else 503)

    return app
