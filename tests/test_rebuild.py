"""Redis loses everything: `syncmon rebuild` replays the topic and swaps in the full view."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from consumers.decode import RawMessage
from consumers.processor import FenceBehind, Processor
from consumers.rebuild import Progress, Rebuild, RebuildError, progress_line
from monitor.app import create_app
from monitor.enums import HealthStatus
from monitor.services import RedisServer
from monitor.simulate import history
from monitor.store.epoch import Epoch
from monitor.store.indexes import Indexes
from monitor.store.switch import NOT_CAUGHT_UP, carried_patterns, swap_in
from monitor.store.syncs import SyncViews
from tests.eventlib import encode, expected_fold, lifecycle, produce_records, stored_state
from tests.faultlib import counted, record_figures, wait_counted
from tests.support import as_env, fast_settings

PREFIX = "rebuild"


@pytest.mark.parametrize(
    ("done", "total", "elapsed", "expected"),
    [
        (0, 20_000, 0.0, "  0.0%  0/20,000 events  0 ev/s  ETA --:--"),
        (10_000, 20_000, 5.0, " 50.0%  10,000/20,000 events  2,000 ev/s  ETA 0:05"),
        (20_000, 20_000, 8.0, "100.0%  20,000/20,000 events  2,500 ev/s  ETA 0:00"),
        (
            7_200_000,
            14_400_000,
            3600.0,
            " 50.0%  7,200,000/14,400,000 events  2,000 ev/s  ETA 1:00:00",
        ),
        (5, 0, 1.0, "100.0%  5/5 events  5 ev/s  ETA 0:00"),  # more done than the total known
    ],
)
def test_progress_line_shows_share_rate_and_eta(
    done: int, total: int, elapsed: float, expected: str
) -> None:
    line = progress_line(done, total, elapsed, width=10)
    assert line.endswith(expected), line
    assert line.count("#") == int(10 * done / max(total, done, 1))


def test_progress_off_a_terminal_writes_a_line_every_two_seconds() -> None:
    now = [0.0]
    out = io.StringIO()
    progress = Progress(out, clock=lambda: now[0])
    for t in (0.0, 0.5, 1.9, 2.1, 3.0, 4.2):
        now[0] = t
        progress.update(int(t * 100), 1000)
    progress.update(1000, 1000, final=True)
    lines = out.getvalue().splitlines()
    assert [line.split("%")[0][-5:] for line in lines] == ["  0.0", " 21.0", " 42.0", "100.0"]


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own: the test wipes it and swaps its databases."""
    server = RedisServer().start()
    yield server
    server.stop()


def test_rebuild_refuses_a_scratch_database_that_holds_data(
    topics: Any, own_redis: RedisServer
) -> None:
    settings = fast_settings(topics, own_redis.url, PREFIX)
    live = redis.Redis.from_url(own_redis.url)
    redis.Redis.from_url(own_redis.url.replace("/0", "/3")).set("someone-else", 1)
    with pytest.raises(RebuildError, match="scratch database 3 holds 1 keys"):
        Rebuild(settings, live, scratch_db=3).run()
    with pytest.raises(RebuildError, match="is the live one"):
        Rebuild(settings, live, scratch_db=0)


def health_members(client: redis.Redis) -> Counter[str]:
    """How many health sets each sync is in (every sync must be in exactly one)."""
    members: Counter[str] = Counter()
    for key in client.scan_iter(match=carried_patterns(PREFIX)[1]):
        members.update(m.decode() for m in client.smembers(key))
    return members


def alive_syncs(client: redis.Redis) -> set[str]:
    return {m.decode() for k in Indexes(PREFIX).all_keys for m in client.zrange(k, 0, -1)}


def test_rebuild_after_redis_lost_everything_equals_the_pure_fold(
    topics: Any, own_redis: RedisServer, tmp_path: Path
) -> None:
    wire = history(
        syncs=40, events=2400, seed=23, start=datetime(2026, 5, 1, tzinfo=UTC), step_seconds=5
    )
    records = [(m.key, m.value, m.headers) for m in wire]
    records[50:50] = [(b"junk", b"\xff not an event", [])]
    before, after, during = records[:1200], records[1200:1800], records[1800:]
    settings = fast_settings(
        topics, own_redis.url, PREFIX, kafka_max_batch=100, retry_max_seconds=0.5
    )
    probe = redis.Redis.from_url(own_redis.url, socket_timeout=5)

    def wait_for(count: int, timeout: float = 60) -> None:
        wait_counted(probe, PREFIX, count, timeout)
        assert counted(probe, PREFIX) == count

    with TestClient(create_app(settings)) as client:
        produced = produce_records(topics.bootstrap, topics.lifecycle, before)
        wait_for(len(before))
        own_redis.restart()  # persistence is off: Redis comes back empty
        produced += produce_records(topics.bootstrap, topics.lifecycle, after)
        wait_for(len(after))  # the live view knows only what came after the loss: syncs
        # whose creation it never saw are not `known`, so they have no health yet
        truth, _ = expected_fold(produced)
        partial, _ = stored_state(own_redis.url, PREFIX, list(truth))
        assert sum(partial[k] != v for k, v in truth.items()) > len(truth) // 2

        answers: Counter[int] = Counter()
        stop = threading.Event()

        def keep_reading() -> None:
            while not stop.is_set():
                answers[client.get("/v1/syncs", params={"limit": 100}).status_code] += 1
                answers[client.get("/v1/summary").status_code] += 1

        def keep_producing() -> None:
            for i in range(0, len(during), 50):
                produced.extend(
                    produce_records(topics.bootstrap, topics.lifecycle, during[i : i + 50])
                )
                time.sleep(0.1)

        readers = threading.Thread(target=keep_reading)
        writers = threading.Thread(target=keep_producing)
        readers.start()
        writers.start()
        started = time.monotonic()
        log = tmp_path / "rebuild.log"
        with log.open("wb") as out:
            code = subprocess.call(
                [sys.executable, "-m", "monitor.cli", "rebuild"],
                env=as_env(settings),
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=180,
            )
        rebuild_seconds = time.monotonic() - started
        writers.join()
        stop.set()
        readers.join()
        output = log.read_text()
        assert code == 0, output[-3000:]
        assert "100.0%" in output and "ev/s" in output and "ETA" in output, output[-3000:]
        assert "swapped it in as database 0" in output, output[-3000:]
        assert set(answers) == {200} and answers[200] > 10, answers

        wait_for(len(records))
        caught_up_seconds = time.monotonic() - started
        expected_views, expected_counts = expected_fold(produced)
        stored_views, stored_counts = stored_state(own_redis.url, PREFIX, list(expected_views))
        assert stored_counts == expected_counts
        assert [k for k, v in expected_views.items() if stored_views[k] != v] == []
        assert len(expected_views) > 40

        alive = alive_syncs(probe)
        deadline = time.monotonic() + 30
        while set(health_members(probe)) != alive and time.monotonic() < deadline:
            time.sleep(0.1)
        members = health_members(probe)
        assert set(members) == alive and set(members.values()) == {1}
        one = sorted(alive)[0]
        body = client.get(f"/v1/syncs/{one}").json()
        assert body["health"]["status"] in {s.value for s in HealthStatus}
        assert client.get("/readyz").status_code == 200
        record_figures(
            tmp_path,
            "redis_lost_then_rebuild",
            {
                "events": len(records),
                "views_compared": len(expected_views),
                "lost": sum((expected_counts - stored_counts).values()),
                "double_applied": sum((stored_counts - expected_counts).values()),
                "rebuild_command_s": round(rebuild_seconds, 2),
                "caught_up_s": round(caught_up_seconds, 2),
                "api_answers_during_rebuild": dict(answers),
            },
        )

    scratch = redis.Redis.from_url(own_redis.url.replace("/0", "/1"))
    deadline = time.monotonic() + 10
    while scratch.dbsize() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert scratch.dbsize() == 0  # the pre-rebuild data is gone


def test_rebuild_cli_fails_with_a_clear_message(topics: Any, own_redis: RedisServer) -> None:
    settings = fast_settings(topics, own_redis.url, PREFIX)
    redis.Redis.from_url(own_redis.url.replace("/0", "/1")).set("k", 1)
    done = subprocess.run(
        [sys.executable, "-m", "monitor.cli", "rebuild"],
        env=as_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "syncmon rebuild: scratch database 1 holds 1 keys" in done.stderr


def test_switch_checks_offsets_then_carries_health_and_outbox_and_swaps(
    own_redis: RedisServer,
) -> None:
    live, scratch = (redis.Redis.from_url(own_redis.url.replace("/0", f"/{d}")) for d in (0, 1))
    fences = [f"{PREFIX}:fence:t:0", f"{PREFIX}:fence:t:1"]
    live.mset(
        {fences[0]: 10, fences[1]: 4, f"{PREFIX}:health:s1": "h1", f"{PREFIX}:sync:s1": "old"}
    )
    live.sadd(f"{PREFIX}:idx:health:stripe:warn", "s1")
    outbox = f"{PREFIX}:outbox"
    live.xgroup_create(outbox, "publishers", id="0", mkstream=True)
    live.xadd(outbox, {"sync_id": "s1", "event": "{}"})
    live.xreadgroup("publishers", "p1", {outbox: ">"}, count=1)  # taken, not yet acknowledged
    live.set(f"{PREFIX}:hold", 1)
    scratch.mset({fences[0]: 10, fences[1]: 3, f"{PREFIX}:sync:s1": "rebuilt"})

    assert swap_in(live, 0, 1, fences, [10, 3], PREFIX) == NOT_CAUGHT_UP
    assert live.get(f"{PREFIX}:sync:s1") == b"old" and scratch.get(fences[1]) == b"3"

    scratch.set(fences[1], 4)
    assert swap_in(live, 0, 1, fences, [10, 4], PREFIX) == 3  # health, its index, the outbox
    assert live.get(f"{PREFIX}:sync:s1") == b"rebuilt"
    assert live.get(f"{PREFIX}:health:s1") == b"h1"
    assert live.smembers(f"{PREFIX}:idx:health:stripe:warn") == {b"s1"}
    assert live.xpending(outbox, "publishers")["pending"] == 1  # the publisher can still ack
    assert live.get(f"{PREFIX}:hold") is None  # the hold stayed with the old data
    assert scratch.get(f"{PREFIX}:sync:s1") == b"old"


def raw(offset: int, record: tuple[bytes, bytes, list[tuple[str, bytes]]]) -> RawMessage:
    key, value, headers = record
    return RawMessage("t", 0, offset, key, value, headers)


def test_a_writer_waits_out_the_hold_and_drops_its_cache_when_the_dataset_changes(
    redis_url: str,
) -> None:
    client = redis.Redis.from_url(redis_url)
    processor = Processor(client, PREFIX, "t")
    events = lifecycle("sync-a")
    processor.process([raw(0, encode(events[0]))])
    assert len(processor.cache) == 1

    Epoch(PREFIX).hold(client, ttl_ms=5000)
    done = threading.Event()
    writer = threading.Thread(
        target=lambda: (processor.process([raw(1, encode(events[1]))]), done.set())
    )
    writer.start()
    time.sleep(0.5)
    assert not done.is_set()  # held: nothing written
    assert client.get(f"{PREFIX}:fence:t:0") == b"0"
    Epoch(PREFIX).release(client)
    writer.join(5)
    assert done.is_set() and client.get(f"{PREFIX}:fence:t:0") == b"1"

    Epoch(PREFIX).start_new(client)  # what a rebuild's swap looks like to this writer
    processor.process([raw(2, encode(events[2]))])
    assert len(processor.cache) == 1  # dropped, then refilled from Redis with the new write

    client.flushdb()  # Redis lost everything: the cached view must not be written back
    with pytest.raises(FenceBehind):  # the consumer reports the loss and reads the batch again
        processor.process([raw(3, encode(events[3]))])
    processor.process([raw(3, encode(events[3]))])
    view = SyncViews(PREFIX).get_many(client, ["sync-a"])[0]
    assert view is not None and not view.known  # folded onto nothing, not onto the cache
