"""What every key family shares: the prefix and the type of a client-or-pipeline."""

from __future__ import annotations

from typing import Any, TypeAlias

from redis import Redis
from redis.client import Pipeline

Client: TypeAlias = Redis | Pipeline
Conn: TypeAlias = Redis


def text(value: Any) -> str:
    """Redis answers bytes; keys and ids are UTF-8 text."""
    return value.decode() if isinstance(value, bytes) else str(value)
