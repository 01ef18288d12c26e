"""Key family `{prefix}:fanout:*`: providers whose syncs all need a new evaluation.

Two hashes, provider -> requests made so far and provider -> requests served, both only ever
growing: a fan-out marks served only what it read, so a request made while it ran (an incident
resolved mid-way), even one another process's fan-out raced, survives for the next tick.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from redis import Redis

from monitor.store.base import Client, text

TEMPLATE = "{prefix}:fanout:requests"
SERVED_TEMPLATE = "{prefix}:fanout:served"
LEGACY_TEMPLATE = "{prefix}:fanout"  # a set of providers, as versions before the hashes wrote it
# Moves the requests left in the legacy set into the hash; answers each provider asked for
# more often than served, with its count of requests.
PENDING = """
local legacy = redis.call('SMEMBERS', KEYS[2])
for _, name in ipairs(legacy) do redis.call('HINCRBY', KEYS[1], name, 1) end
if #legacy > 0 then redis.call('DEL', KEYS[2]) end
local asked = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #asked, 2 do
  local served = tonumber(redis.call('HGET', KEYS[3], asked[i]) or '0')
  if served < tonumber(asked[i + 1]) then
    out[#out + 1] = asked[i]
    out[#out + 1] = asked[i + 1]
  end
end
return out
"""
# Raises a provider's served count to the requests a fan-out read (never lowers it).
SERVED = """
local served = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if tonumber(ARGV[2]) > served then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 1
"""


class FanoutRequests:
    """Durable requests to re-evaluate every sync of a provider."""

    def __init__(self, prefix: str) -> None:
        self.key = TEMPLATE.format(prefix=prefix)
        self.served_key = SERVED_TEMPLATE.format(prefix=prefix)
        self.legacy_key = LEGACY_TEMPLATE.format(prefix=prefix)

    def request(self, pipe: Client, providers: Iterable[str]) -> None:
        for name in providers:
            pipe.hincrby(self.key, name, 1)

    def pending(self, client: Redis) -> dict[str, str]:
        """Each provider asked for since last served, with its count of requests so far."""
        raw: Any = client.eval(PENDING, 3, self.key, self.legacy_key, self.served_key)
        flat = [text(v) for v in raw]
        return dict(zip(flat[::2], flat[1::2], strict=True))

    def served(self, client: Redis, provider: str, count: str) -> None:
        client.eval(SERVED, 1, self.served_key, provider, count)
