"""Key family `{prefix}:counters:events`: exact event counts, written with the views they count."""

from __future__ import annotations

from collections.abc import Mapping

from monitor.store.base import Client, text

TEMPLATE = "{prefix}:counters:events"
SEP = "|"


class EventCounters:
    """`syncmon_events_total` lives in Redis so it survives restarts and sums over replicas."""

    def __init__(self, prefix: str) -> None:
        self.key = TEMPLATE.format(prefix=prefix)

    def add(self, pipe: Client, counts: Mapping[tuple[str, str], int]) -> None:
        for (kind, outcome), n in counts.items():
            if n:
                pipe.hincrby(self.key, f"{kind}{SEP}{outcome}", n)

    def read(self, client: Client) -> dict[tuple[str, str], int]:
        raw = client.hgetall(self.key)
        out: dict[tuple[str, str], int] = {}
        for field, value in raw.items():
            kind, _, outcome = text(field).partition(SEP)
            out[(kind, outcome)] = int(value)
        return out
