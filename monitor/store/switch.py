"""The rebuild's switch-over: one Lua script, so no reader or writer ever sees half of it.

The rebuilt dataset sits in a scratch database. The script checks that it holds every offset
the live one holds, copies over what only the live one knows (health last published, the
outbox still to publish), then SWAPDB: every connection on the live database sees the rebuilt
data from its next command on. Redis Cluster has no SWAPDB; syncmon's fenced MULTI batches
need a single node anyway.
"""

from __future__ import annotations

from collections.abc import Sequence

from redis import Redis

from monitor.store import health, indexes, outbox

SWITCH = """
local scratch, live, npat = ARGV[1], ARGV[2], tonumber(ARGV[3])
for i, key in ipairs(KEYS) do
  local have = tonumber(redis.call('GET', key) or '-1')
  if have > tonumber(ARGV[3 + npat + i]) then return -1 end
end
local copied = 0
for i = 1, npat do
  for _, key in ipairs(redis.call('KEYS', ARGV[3 + i])) do
    redis.call('COPY', key, key, 'DB', scratch, 'REPLACE')
    copied = copied + 1
  end
end
redis.call('SWAPDB', live, scratch)
return copied
"""

NOT_CAUGHT_UP = -1


def carried_patterns(prefix: str) -> list[str]:
    """What Kafka cannot replay: the health each sync last had, and changes not yet sent."""
    box = outbox.TEMPLATE.format(prefix=prefix)
    return [
        health.TEMPLATE.format(prefix=prefix, id="*"),
        indexes.HEALTH_TEMPLATE.format(prefix=prefix, provider="*", status="*"),
        box,
        f"{box}:published",
    ]


def swap_in(
    live: Redis,
    live_db: int,
    scratch_db: int,
    fence_keys: Sequence[str],
    rebuilt_offsets: Sequence[int],
    prefix: str,
) -> int:
    """Keys carried over, or NOT_CAUGHT_UP if the live data holds an offset the rebuild lacks."""
    patterns = carried_patterns(prefix)
    args: list[str | int] = [scratch_db, live_db, len(patterns), *patterns, *rebuilt_offsets]
    result = live.eval(SWITCH, len(fence_keys), *fence_keys, *args)
    return int(result)
