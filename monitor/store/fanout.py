"""Key family `{prefix}:fanout:*`: providers whose syncs all need a new evaluation.

A hash, provider -> the token of its latest request, tokens drawn from one counter that never
repeats: a fan-out removes a provider only if its token is still the one it read, so a request
made while it ran (an incident resolved mid-way), even one another process's fan-out raced,
survives for the next tick. Served requests leave no trace: a tick reads only what waits.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from redis import Redis

from monitor.store.base import Client, text

TEMPLATE = "{prefix}:fanout:requests"
SEQUENCE_TEMPLATE = "{prefix}:fanout:seq"
LEGACY_TEMPLATE = "{prefix}:fanout"  # a set of providers, as versions before the hash wrote it
# Files a request for each provider in ARGV under one new token.
REQUEST = """
local token = redis.call('INCR', KEYS[2])
for _, name in ipairs(ARGV) do redis.call('HSET', KEYS[1], name, token) end
return token
"""
# Moves the requests left in the legacy set into the hash; answers the hash.
PENDING = """
local legacy = redis.call('SMEMBERS', KEYS[2])
if #legacy > 0 then
  local token = redis.call('INCR', KEYS[3])
  for _, name in ipairs(legacy) do redis.call('HSET', KEYS[1], name, token) end
  redis.call('DEL', KEYS[2])
end
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
        self.sequence_key = SEQUENCE_TEMPLATE.format(prefix=prefix)
        self.legacy_key = LEGACY_TEMPLATE.format(prefix=prefix)

    def request(self, pipe: Client, providers: Iterable[str]) -> None:
        names = list(providers)
        if names:
            pipe.eval(REQUEST, 2, self.key, self.sequence_key, *names)

    def pending(self, client: Redis) -> dict[str, str]:
        """Each provider waiting, with the token of its latest request."""
        raw: Any = client.eval(PENDING, 3, self.key, self.legacy_key, self.sequence_key)
        flat = [text(v) for v in raw]
        return dict(zip(flat[::2], flat[1::2], strict=True))

    def served(self, client: Redis, provider: str, token: str) -> None:
        client.eval(SERVED, 1, self.key, provider, token)
