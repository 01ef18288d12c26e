"""Key families `{prefix}:epoch` and `{prefix}:hold`: when a process's caches stop being true.

`epoch` names the dataset: a new one appears when Redis lost everything or `syncmon rebuild`
swapped a rebuilt dataset in, and a writer that sees it change drops what it cached.
`hold` is set by `syncmon rebuild` for the moment of its switch-over; writers WATCH it and
wait while it exists, and its TTL frees them should the rebuild die holding it.
"""

from __future__ import annotations

import uuid

from monitor.store.base import Client, text

EPOCH_TEMPLATE = "{prefix}:epoch"
HOLD_TEMPLATE = "{prefix}:hold"


class Epoch:
    """The dataset's identity and the switch-over hold, read with every batch."""

    def __init__(self, prefix: str) -> None:
        self.key = EPOCH_TEMPLATE.format(prefix=prefix)
        self.hold_key = HOLD_TEMPLATE.format(prefix=prefix)

    def start_new(self, client: Client) -> str:
        """Gives this dataset a new identity (a fresh rebuild target)."""
        epoch = new_epoch()
        client.set(self.key, epoch)
        return epoch

    def claim(self, pipe: Client, epoch: str) -> None:
        """Names an unnamed dataset (first start, or Redis came back empty)."""
        pipe.set(self.key, epoch, nx=True)

    def hold(self, client: Client, ttl_ms: int) -> None:
        client.set(self.hold_key, "1", px=ttl_ms)

    def release(self, client: Client) -> None:
        client.delete(self.hold_key)


def new_epoch() -> str:
    return uuid.uuid4().hex


def decode_epoch(raw: object) -> str | None:
    return None if raw is None else text(raw)


class Held(Exception):
    """A rebuild is switching datasets; the writer waits and retries."""
