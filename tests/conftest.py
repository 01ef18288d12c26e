"""Shared fixtures: one real redis-server and one tansu broker per test session."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
import redis

from tests.support import Topics

if TYPE_CHECKING:  # imported lazily below: kafka warns at import, before pytest_configure
    from monitor.services import Broker, RedisServer


# Tests using any of these need real services, so they get the `integration` marker.
INTEGRATION_FIXTURES = frozenset({"redis_server", "broker", "redis_url", "topics"})
_REDIS_DBS = itertools.cycle(range(1, 16))  # DB 0 is left for ad-hoc use of redis_server.url


def pytest_configure(config: pytest.Config) -> None:
    """Hide kafka-python's import-time importlib.resources deprecation noise."""
    for message in ("read_text is deprecated", "open_text is deprecated"):
        config.addinivalue_line("filterwarnings", f"ignore:{message}:DeprecationWarning")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark tests that (even indirectly) use the service fixtures as `integration`."""
    for item in items:
        if INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A redis-server on a free port for the whole session (fails, never skips, if missing)."""
    from monitor.services import RedisServer, ServiceError

    try:
        server = RedisServer().start()
    except ServiceError as exc:
        pytest.fail(f"cannot start redis-server: {exc}", pytrace=False)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    """A tansu broker (in-memory storage) on a free port for the whole session."""
    from monitor.services import Broker, ServiceError

    try:
        server = Broker().start()
    except ServiceError as exc:
        pytest.fail(f"cannot start the tansu broker: {exc}", pytrace=False)
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A Redis URL on a DB of its own, flushed first, so tests never see each other's keys."""
    db = next(_REDIS_DBS)
    url = redis_server.url.rsplit("/", 1)[0] + f"/{db}"
    with redis.Redis.from_url(url) as conn:
        conn.flushdb()
    return url


@pytest.fixture
def topics(broker: Broker) -> Topics:
    """Fresh `sync.lifecycle.<uuid8>` and `.dlq` (3 partitions each), created on the broker."""
    from monitor.services import ensure_topics

    lifecycle = f"sync.lifecycle.{uuid.uuid4().hex[:8]}"
    result = Topics(bootstrap=broker.bootstrap, lifecycle=lifecycle, dlq=f"{lifecycle}.dlq")
    ensure_topics(
        broker.bootstrap, {result.lifecycle: result.partitions, result.dlq: result.partitions}
    )
    return result
