"""Settings for tests: the session broker and Redis, fast group timings, and as env vars."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from monitor.settings import Settings


@dataclass(frozen=True)
class Topics:
    """Topic names on one broker (what the `topics` fixture gives, or a test's own)."""

    bootstrap: str
    lifecycle: str
    dlq: str
    partitions: int = 3


def wait_for(fn: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Polls `fn` until it returns something true, which it returns; fails after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = fn()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met in {timeout}s; last: {result!r}")
        time.sleep(0.1)


FAST_GROUP = {
    "kafka_session_timeout_ms": 6000,  # a member joins in ~3 s on the test broker
    "kafka_max_poll_interval_ms": 10_000,
    "kafka_poll_timeout_ms": 200,
}


def fast_settings(topics: Any, redis_url: str, prefix: str, **extra: Any) -> Settings:
    """Settings on the per-test topics, with a fresh consumer group."""
    values: dict[str, Any] = {
        "kafka_bootstrap_servers": topics.bootstrap,
        "kafka_topic": topics.lifecycle,
        "kafka_dlq_topic": topics.dlq,
        "kafka_group_id": f"{prefix}-{uuid.uuid4().hex[:6]}",
        "kafka_topic_partitions": topics.partitions,
        "redis_url": redis_url,
        "redis_prefix": prefix,
        **FAST_GROUP,
    }
    values.update(extra)
    return Settings(**values)


def as_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that makes `syncmon run` in a subprocess load these settings."""
    env = dict(os.environ)
    for name in settings.model_fields_set:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, tuple):
            text = ",".join(value)
        elif isinstance(value, dict):
            text = json.dumps(value)
        elif isinstance(value, bool):
            text = "true" if value else "false"
        else:
            text = str(value)
        env[f"SYNCMON_{name.upper()}"] = text
    env.update(extra)
    return env
