"""A partition handed over while its old owner stalled: the old owner's cached views must not
overwrite what the new owner wrote (against real Redis, the processors as the consumer runs
them)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import redis

from consumers.decode import RawMessage, decode
from consumers.processor import FenceBehind, Processor
from monitor.fold import Position, step
from monitor.store.syncs import SyncViews
from monitor.views import SyncView
from tests.eventlib import cloudevent, encode, recent, sync_created

TOPIC = "sync.lifecycle"


def log_of(sync_id: str, runs: int) -> list[RawMessage]:
    recent(10)
    events = [cloudevent("sync.created", sync_id, sync_created(sync_id))] + [
        cloudevent(
            "sync.run.succeeded",
            sync_id,
            {"run_id": f"r{i}", "records_upserted": 1, "records_deleted": 0, "duration_ms": 1},
            minute=i + 1,
        )
        for i in range(runs)
    ]
    out = []
    for n, event in enumerate(events):
        key, value, headers = encode(event)
        out.append(RawMessage(TOPIC, 0, n, key, value, [*headers]))
    return out


def test_a_stalled_owner_back_after_a_handover_does_not_undo_the_new_owners_writes(
    redis_url: str,
) -> None:
    client = redis.Redis.from_url(redis_url)
    prefix = f"handover-{uuid.uuid4().hex[:6]}"
    log = log_of("x", 5)  # offsets 0..5 on partition 0
    old, new = Processor(client, prefix, TOPIC), Processor(client, prefix, TOPIC)
    old.process(log[0:2])  # the first owner writes 0-1 and caches the view
    assert len(old.cache) == 1
    new.process(log[2:4])  # it stalls past max.poll.interval; the next owner writes 2-3
    old.process(log[2:6])  # the first owner, back, writes the batch it had polled: 2-5
    stored = SyncViews(prefix).get(client, "x")
    folded = None
    for m in log:
        folded = step(folded, decode(m), Position(0, m.offset)).view
    assert isinstance(stored, SyncView) and isinstance(folded, SyncView)
    assert stored.runs_succeeded == 5
    assert stored == folded  # every event once: the pure fold of the log


def test_a_sole_owner_keeps_its_cache_from_batch_to_batch(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    prefix = f"handover-{uuid.uuid4().hex[:6]}"
    log = log_of("y", 4)
    processor = Processor(client, prefix, TOPIC)
    reads: list[list[str]] = []
    get_many = processor.syncs.get_many

    def counted(pipe: Any, ids: list[str]) -> list[SyncView | None]:
        reads.append(ids)
        return get_many(pipe, ids)

    processor.syncs.get_many = counted  # type: ignore[method-assign,assignment]
    processor.process(log[0:2])
    processor.process(log[2:4])
    processor.process(log[4:])
    assert reads == [["y"]]  # read from Redis once; then folded on the cached view
    stored = SyncViews(prefix).get(client, "y")
    assert stored is not None and stored.runs_succeeded == 4


def test_a_fence_behind_this_processs_own_writes_stops_the_batch_until_it_is_replayed(
    redis_url: str,
) -> None:
    """Redis lost writes this process made (a failover): folding the next batch on top would
    bury the lost events under a newer fence, so nothing is written until they are replayed."""
    client = redis.Redis.from_url(redis_url)
    prefix = f"handover-{uuid.uuid4().hex[:6]}"
    log = log_of("z", 5)  # offsets 0..5 on partition 0
    processor = Processor(client, prefix, TOPIC)
    processor.process(log[0:2])
    snapshot = {key: client.dump(key) for key in client.keys(f"{prefix}:*")}
    processor.process(log[2:4])
    with client.pipeline(transaction=True) as pipe:  # Redis as it was after offset 1
        for key in client.keys(f"{prefix}:*"):
            pipe.delete(key)
        for key, dumped in snapshot.items():
            pipe.restore(key, 0, dumped)
        pipe.execute()
    with pytest.raises(FenceBehind) as raised:
        processor.process(log[4:6])
    assert raised.value.fences == {0: 1}
    stored = SyncViews(prefix).get(client, "z")
    assert stored is not None and stored.runs_succeeded == 1  # the batch wrote nothing
    processor.process(log[2:6])  # what the consumer reads after seeking back to the fence
    stored = SyncViews(prefix).get(client, "z")
    assert stored is not None and stored.runs_succeeded == 5


def test_a_partition_redis_lost_entirely_is_reported_once_and_then_written_on(
    redis_url: str,
) -> None:
    client = redis.Redis.from_url(redis_url)
    prefix = f"handover-{uuid.uuid4().hex[:6]}"
    log = log_of("w", 3)
    processor = Processor(client, prefix, TOPIC)
    processor.process(log[0:2])
    client.delete(*client.keys(f"{prefix}:*"))
    with pytest.raises(FenceBehind) as raised:
        processor.process(log[2:4])
    assert raised.value.fences == {0: -1}
    processor.process(log[2:4])  # left to `syncmon rebuild`: the batch is written on retry
    stored = SyncViews(prefix).get(client, "w")
    assert stored is not None and stored.runs_succeeded == 2
