"""Key family `{prefix}:fanout:requests`: providers whose syncs all need a new evaluation.

A hash, provider -> requests made so far, so a fan-out removes only the requests it served: one
made while it ran (an incident resolved mid-way) survives for the next tick.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from redis import Redis

from monitor.store.base import Client, text

TEMPLATE = "{prefix}:fanout:requests"
LEGACY_TEMPLATE = "{prefix}:fanout"  # a set of providers, as versions before the hash wrote it
# Moves the requests left in the legacy set into the hash; answers the hash.
PENDING = """
local legacy = redis.call('SMEMBERS', KEYS[2])
for _, name in ipairs(legacy) do redis.call('HINCRBY', KEYS[1], name, 1) end
if #legacy > 0 then redis.call('DEL', KEYS[2]) end
return redis.call('HGETALL', KEYS[1])
"""
# Removes a provider's request only if no other came since it was read.
SERVED = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
return redis.call('HDEL', KEYS[1], ARGV[1])
"""


class FanoutRequests:
    """Durable requests to re-evaluate every sync of a provider."""

    def __init__(self, prefix: str) -> None:
        self.key = TEMPLATE.format(prefix=prefix)
        self.legacy_key = LEGACY_TEMPLATE.format(prefix=prefix)

    def request(self, pipe: Client, providers: Iterable[str]) -> None:
        for name in providers:
            pipe.hincrby(self.key, name, 1)

    def pending(self, client: Redis) -> dict[str, str]:
        """Each provider asked for, with its count of requests (the token `served` checks)."""
        raw: Any = client.eval(PENDING, 2, self.key, self.legacy_key)
        flat = [text(v) for v in raw]
        return dict(zip(flat[::2], flat[1::2], strict=True))

    def served(self, client: Redis, provider: str, count: str) -> None:
        client.eval(SERVED, 1, self.key, provider, count)
