"""`syncmon dev`: broker, Redis, simulator and syncmon on this machine with nothing configured."""

from __future__ import annotations

import logging
import threading

from consumers.kafka import ensure_topics
from monitor import simulate
from monitor.cli import configure_logging, serve, tune_gc
from monitor.services import free_port, start_broker, start_redis
from monitor.settings import load_settings

log = logging.getLogger("syncmon.dev")

BANNER = """
syncmon dev is up. Open:
  API      http://{host}:{port}/v1/syncs?limit=5
  one sync http://{host}:{port}/v1/syncs/{{id}}   (ids are in the list above)
  docs     http://{host}:{port}/docs
  metrics  http://{host}:{port}/metrics
  ready    http://{host}:{port}/readyz
Kafka-compatible broker at {bootstrap} (topic {topic}), Redis at {redis}.
Simulating {syncs} syncs at up to {rate:g} events/s. Ctrl-C stops everything.
"""


def run_dev(syncs: int, rate: float, port: int, seed: int | None) -> int:
    """Starts everything, serves until Ctrl-C, then stops all it started."""
    redis_server = start_redis()
    broker = start_broker()
    stop = threading.Event()
    try:
        settings = load_settings(
            kafka_bootstrap_servers=broker.bootstrap,
            redis_url=redis_server.url,
            http_port=port or free_port(),
            kafka_topic_partitions=3,
            kafka_session_timeout_ms=6000,
            kafka_max_poll_interval_ms=10_000,
        )
        configure_logging(settings.log_level)
        tune_gc()
        ensure_topics(
            broker.bootstrap,
            {
                settings.kafka_topic: settings.kafka_topic_partitions,
                settings.kafka_dlq_topic: settings.kafka_topic_partitions,
                settings.health_topic: settings.kafka_topic_partitions,
            },
        )
        simulator = threading.Thread(
            target=simulate.run,
            kwargs={
                "bootstrap_servers": broker.bootstrap,
                "topic": settings.kafka_topic,
                "syncs": syncs,
                "rate": rate,
                "seed": seed,
                "duration": None,
                "max_events": None,
                "binary_ratio": 0.1,
                "stop": stop,
            },
            name="syncmon-simulator",
            daemon=True,
        )
        simulator.start()
        print(
            BANNER.format(
                host=settings.http_host,
                port=settings.http_port,
                bootstrap=broker.bootstrap,
                topic=settings.kafka_topic,
                redis=redis_server.url,
                syncs=syncs,
                rate=rate,
            ),
            flush=True,
        )
        serve(settings)
    finally:
        stop.set()
        broker.stop()
        redis_server.stop()
        log.info("stopped the broker and redis-server")
    return 0
