"""The `syncmon run` process: HTTP app whose lifespan owns the consumer thread."""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, NoPermissionError, RedisError, ResponseError
from redis.retry import Retry

from consumers.consumer import SyncConsumer
from consumers.processor import BatchResult
from consumers.publisher import HealthPublisher
from monitor import __version__
from monitor.api import (
    HEALTHZ_RESPONSES,
    READYZ_RESPONSES,
    Runtime,
    basic_auth_ok,
    install_api,
    metrics_responses,
    metrics_unauthorized,
)
from monitor.engine import HealthEngine
from monitor.metrics import ProcessMetrics, Selection, SyncmonCollector
from monitor.scheduler import HealthScheduler
from monitor.settings import ENV_PREFIX, Settings, redis_client, redis_location
from monitor.workers import SweepWorkers

log = logging.getLogger(__name__)


class RedisCredentialsError(RuntimeError):
    """Redis refused SYNCMON_REDIS_URL (its credentials, or a database it does not have): a
    setting to fix, not to wait out."""


def check_redis(settings: Settings) -> None:
    """Refused credentials or a database number the server does not have stop start-up with a
    message naming the setting (never the password); an unreachable or slow Redis does not
    (one quick try): the consumer and readiness wait."""
    where = redis_location(settings.redis_url)
    probe = redis.Redis.from_url(
        settings.redis_url, socket_timeout=2, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0)
    )
    try:
        probe.ping()
    except (AuthenticationError, NoPermissionError) as exc:
        message = (
            f"invalid syncmon settings: {ENV_PREFIX}REDIS_URL: Redis at {where} refused the "
            f"credentials ({type(exc).__name__}: {exc})"
        )
        log.error("%s", message)
        raise RedisCredentialsError(message) from None
    except ResponseError as exc:
        if "DB index" not in str(exc):
            log.warning("Redis at %s is not answering yet (%s); waiting for it", where, exc)
            return
        message = f"invalid syncmon settings: {ENV_PREFIX}REDIS_URL: Redis at {where}: {exc}"
        log.error("%s", message)
        raise RedisCredentialsError(message) from None
    except RedisError as exc:
        log.warning("Redis at %s is not answering yet (%s); waiting for it", where, exc)
    finally:
        probe.close()


# Seconds a scrape waits on one Redis reply: with Redis hung, /metrics still answers (process
# metrics, `syncmon_redis_connected 0`) well within Prometheus's default 10 s scrape timeout.
SCRAPE_REDIS_TIMEOUT = 2.0


def wake(result: BatchResult, scheduler: HealthScheduler | None) -> None:
    """Evaluate the syncs a batch touched (and any provider fan-out) now, not at the next tick."""
    if (result.touched or result.providers) and scheduler is not None:
        scheduler.wake()


def selection_of(settings: Settings) -> Selection:
    return Selection(
        per_sync=settings.metrics_per_sync,
        providers_allow=frozenset(settings.metrics_providers_allow),
        providers_deny=frozenset(settings.metrics_providers_deny),
        orgs_allow=frozenset(settings.metrics_orgs_allow),
        orgs_deny=frozenset(settings.metrics_orgs_deny),
    )


def refresh(process: ProcessMetrics, consumer: SyncConsumer | None) -> None:
    """Brings the process gauges up to date just before a scrape renders them (the collector
    sets `syncmon_redis_connected` from its own reads)."""
    if consumer is not None:
        process.kafka.set(1 if consumer.kafka_connected else 0)
        process.in_group.set(1 if consumer.in_group else 0)
        process.set_lag(consumer.state.lag)


def create_app(settings: Settings, consume: bool = True) -> FastAPI:
    """Builds the app; nothing starts until the lifespan runs (never at import)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        check_redis(settings)
        client = redis_client(settings)
        engine = HealthEngine(settings.redis_prefix, settings.thresholds())
        process = ProcessMetrics()
        consumer = publisher = scheduler = None
        if consume:
            consumer = SyncConsumer(
                settings, client, on_batch=lambda r: wake(r, scheduler), metrics=process
            )
            n = settings.health_workers
            workers = SweepWorkers(settings, n, process) if n > 0 else None
            scheduler = HealthScheduler(
                engine,
                client,
                consumer.owned_partitions,
                settings.health_tick_seconds,
                process,
                workers,
            )
            publisher = HealthPublisher(settings, redis_client(settings))
        scrape_client = redis_client(settings, socket_timeout=SCRAPE_REDIS_TIMEOUT)
        app.state.collector = SyncmonCollector(
            # Its own client with a short timeout: a hung Redis must cost a scrape seconds,
            # within Prometheus's 10 s, so the scrape still answers with process metrics.
            scrape_client,
            settings.redis_prefix,
            selection_of(settings),
            process,
            refresh=lambda: refresh(process, consumer),
        )
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
            scrape_client.close()

    app = FastAPI(
        title="syncmon",
        version=__version__,
        description="Health and status of data syncs, folded from their lifecycle events.",
        lifespan=lifespan,
    )
    install_api(app, settings)

    @app.get(
        "/metrics", tags=["ops"], response_class=Response, responses=metrics_responses(settings)
    )
    def metrics(request: Request) -> Response:
        """Prometheus text format; basic auth when SYNCMON_METRICS_BASIC_AUTH is set."""
        if settings.metrics_basic_auth and not basic_auth_ok(request, settings.metrics_basic_auth):
            return metrics_unauthorized()
        collector: SyncmonCollector = app.state.collector
        chunks = collector.chunks()
        first = next(chunks, b"")  # Redis is first read here, before the 200 is sent
        return StreamingResponse(itertools.chain([first], chunks), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", tags=["ops"], responses=HEALTHZ_RESPONSES)
    def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], responses=READYZ_RESPONSES)
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
