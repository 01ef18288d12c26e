"""Scale-out: three `syncmon run` in one group, one killed with SIGKILL mid-stream.

Its partitions move to the other two, the view ends complete and exact, and every health
transition reaches the health topic once. The victim is killed at the worst moment for that
(frozen with SIGSTOP while its publisher holds outbox entries it has not acknowledged, maybe
already sent, then SIGKILLed): the survivor that claims them after 30 s must find the ones
already on the topic and send only the rest (consumers/already.py).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from monitor.services import ensure_topics, free_port
from monitor.simulate import history
from monitor.store.base import text
from monitor.store.health import HealthViews
from monitor.store.outbox import GROUP, Outbox
from tests.eventlib import produce_records
from tests.faultlib import (
    assert_exact,
    counted,
    log_tail,
    read_topic,
    ready,
    record_figures,
    start_monitor,
    stored_fences,
    wait_counted,
    wait_for,
)
from tests.support import Topics, as_env, fast_settings

PREFIX = "scale"
PARTITIONS = 6


def batches(port: int) -> float:
    """Batches this process consumed (`syncmon_batch_duration_seconds_count` is per process)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    found = re.search(r"^syncmon_batch_duration_seconds_count (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def assignment(log: Path) -> list[int]:
    """The partitions a process was last assigned (eager protocol: the whole assignment)."""
    found = re.findall(r"partitions assigned: \[([0-9, ]*)\]", log.read_text(errors="replace"))
    return [int(p) for p in found[-1].split(",") if p.strip()] if found else []


def stop_all(procs: list[subprocess.Popen[bytes]], timeout: float = 40) -> list[int]:
    """SIGTERM (after SIGCONT, in case one is still frozen); SIGKILL whatever outlives it."""
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGCONT)
            proc.send_signal(signal.SIGTERM)
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout=timeout))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            codes.append(proc.wait())
    return codes


def outbox_events(client: redis.Redis, first: str = "-", last: str = "+") -> list[Any]:
    """The CloudEvents queued in the outbox stream (between two entry ids)."""
    entries: Any = client.xrange(Outbox(PREFIX).key, first, last)
    return [json.loads(fields[b"event"]) for _, fields in entries]


def trickle(topics: Topics, records: list[Any], into: list[Any], chunk: int = 250) -> None:
    """Produces in chunks with short pauses: a stream of a few seconds, not one burst."""
    for start in range(0, len(records), chunk):
        into += produce_records(topics.bootstrap, topics.lifecycle, records[start : start + chunk])
        time.sleep(0.2)


def stopped(pid: int) -> bool:
    """Every thread of the process is stopped (SIGSTOP took effect)."""
    tasks = Path(f"/proc/{pid}/task")
    states = [(t / "stat").read_text().rsplit(")", 1)[1].split()[0] for t in tasks.iterdir()]
    return all(state == "T" for state in states)


def freeze_holding(client: redis.Redis, key: str, name: str, pid: int, timeout: float) -> list[str]:
    """SIGSTOPs the process the moment its publisher holds unacknowledged outbox entries.

    Returns those entries' ids, read while it is stopped (so the list is exactly what it held).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.xpending_range(key, GROUP, "-", "+", 1, name):
            os.killpg(pid, signal.SIGSTOP)
            wait_for(lambda: stopped(pid), 5, 0.001, "SIGSTOP")
            held = client.xpending_range(key, GROUP, "-", "+", 10_000, name)
            if held:
                return [text(e["message_id"]) for e in held]
            os.killpg(pid, signal.SIGCONT)
    consumers = client.xinfo_consumers(key, GROUP)
    raise AssertionError(f"{name} never held an outbox entry in {timeout:.0f}s: {consumers}")


@pytest.mark.slow
def test_three_processes_one_killed_view_exact_and_each_transition_published_once(
    broker: Any, redis_url: str, tmp_path: Path
) -> None:
    lifecycle = f"sync.lifecycle.{uuid.uuid4().hex[:8]}"
    topics = Topics(broker.bootstrap, lifecycle, f"{lifecycle}.dlq", PARTITIONS)
    health_topic = f"{lifecycle}.health"
    ensure_topics(
        topics.bootstrap, {lifecycle: PARTITIONS, topics.dlq: PARTITIONS, health_topic: PARTITIONS}
    )
    # Events up to about now, so health moves both with the events and with the clock.
    events, step = 9000, 0.4
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=events * step)
    wire = history(syncs=200, events=events, seed=41, start=start, step_seconds=step)
    records = [(m.key, m.value, m.headers) for m in wire]
    half = len(records) // 2

    base = as_env(
        fast_settings(
            topics,
            redis_url,
            PREFIX,
            kafka_group_id=f"scale-{uuid.uuid4().hex[:6]}",
            health_topic=health_topic,
            kafka_max_batch=200,
        )
    )
    ports = [free_port() for _ in range(3)]
    logs = [tmp_path / f"run{i}.log" for i in range(3)]
    procs = [
        start_monitor({**base, "SYNCMON_HTTP_PORT": str(port)}, log)
        for port, log in zip(ports, logs, strict=True)
    ]
    client = redis.Redis.from_url(redis_url)
    outbox = Outbox(PREFIX)
    victim = 1
    survivors = [i for i in range(3) if i != victim]
    try:
        wait_for(lambda: all(ready(p) for p in ports), 60, 0.2, "all three ready")
        # the group settles: each process owns partitions before the stream starts
        wait_for(lambda: all(assignment(log) for log in logs), 30, 0.2, "three assignments")
        # The first half trickles in (about 5 s), so health keeps changing while we watch.
        produced: list[Any] = []
        feeder = threading.Thread(
            target=trickle, args=(topics, records[:half], produced), daemon=True
        )
        feeder.start()
        wait_for(lambda: batches(ports[victim]) > 0, 30, 0.02, "the victim to consume")
        wait_counted(client, PREFIX, half // 4, 60)
        # The worst moment: its publisher holds outbox entries it has not acknowledged.
        name = f"{socket.gethostname()}-{procs[victim].pid}"
        held = freeze_holding(client, outbox.key, name, procs[victim].pid, 30)
        owned = assignment(logs[victim])
        fences_at_kill = stored_fences(client, PREFIX, lifecycle, PARTITIONS)
        os.killpg(procs[victim].pid, signal.SIGKILL)
        procs[victim].wait()
        killed_at = time.monotonic()
        at_kill = counted(client, PREFIX)
        in_doubt = {
            e["id"]: e for entry_id in held for e in outbox_events(client, entry_id, entry_id)
        }
        assert len(in_doubt) == len(held) > 0
        sent_at_kill = {
            v["id"] for *_, v in read_topic(broker.bootstrap, health_topic, 6, settle=1.0)
        } & set(in_doubt)
        feeder.join(60)
        assert len(produced) == half
        assert owned and 0 < at_kill < half, (owned, at_kill, half)

        produced += produce_records(topics.bootstrap, topics.lifecycle, records[half:])
        moved = wait_for(
            lambda: all(
                f > fences_at_kill[p]
                for p, f in stored_fences(client, PREFIX, lifecycle, PARTITIONS).items()
                if p in owned
            ),
            60, 0.05, "the victim's partitions to move",
        )  # fmt: skip
        caught_up = wait_counted(client, PREFIX, len(records), 120, 0.05) + moved
        # the outbox drains: entries the victim held are claimed again after 30 s idle
        wait_for(lambda: outbox.pending(client) == 0, 90, 0.2, "outbox to drain")
        drained_at = time.monotonic()
        taken_over = sorted(p for i in survivors for p in assignment(logs[i]))
        assert taken_over == list(range(PARTITIONS)), (taken_over, owned)
        assert all(ready(ports[i]) for i in survivors)
    finally:
        codes = stop_all(procs)
    assert [codes[i] for i in survivors] == [0, 0], [log_tail(log) for log in logs]

    exact, expected_views = assert_exact(produced, redis_url, PREFIX)

    # Every transition is on the topic or (stopped just after a change) still in the outbox.
    published = [value for _, _, _, value in read_topic(broker.bootstrap, health_topic, 6)]
    queued = outbox_events(client)
    ids = Counter(e["id"] for e in published)
    repeats = {i: n for i, n in ids.items() if n > 1}
    # The survivor that claims the victim's entries reads the topic for them first, so even
    # those in doubt at the kill (sent, maybe, but never acknowledged) go out once.
    assert not repeats, f"published more than once: {repeats}"
    assert not set(ids) & {e["id"] for e in queued}, "both published and still queued"
    assert all(i in ids for i in in_doubt), "an entry the victim held was never published"
    keys = Counter(
        (e["data"]["sync_id"], e["data"]["from"], e["data"]["to"], e["data"]["changed_at"])
        for e in {e["id"]: e for e in published}.values()
    )
    assert max(keys.values()) == 1, [k for k, n in keys.items() if n > 1][:5]

    # ... and the distinct transitions of each sync are its whole history, in order.
    chains: dict[str, list[Any]] = defaultdict(list)
    for event in {e["id"]: e for e in published + queued}.values():
        chains[event["subject"]].append(event)
    sync_ids = sorted(k.partition(":")[2] for k in expected_views if k.startswith("sync:"))
    stored = dict(zip(sync_ids, HealthViews(PREFIX).get_many(client, sync_ids), strict=True))
    for sync_id, chain in chains.items():
        chain.sort(key=lambda e: e["sequence"])
        assert [e["sequence"] for e in chain] == list(range(1, len(chain) + 1)), sync_id
        assert chain[0]["data"]["from"] is None, sync_id
        for before, after in itertools.pairwise(chain):
            assert after["data"]["from"] == before["data"]["to"], sync_id
        health = stored.get(sync_id)
        if health is not None:  # a deleted sync keeps no health
            assert health.transitions == len(chain), sync_id
            assert health.status.value == chain[-1]["data"]["to"], sync_id
    with_health = {s for s, h in stored.items() if h is not None}
    assert with_health <= set(chains), with_health - set(chains)

    record_figures(
        tmp_path,
        "scaleout_kill",
        {
            "events": len(records),
            "counted_at_kill": at_kill,
            "victim_partitions": owned,
            "partitions_moved_after_kill_s": round(moved, 2),
            "caught_up_after_kill_s": round(caught_up, 2),
            "outbox_drained_after_kill_s": round(drained_at - killed_at, 2),
            "transitions_published": len(ids),
            "transitions_queued_at_stop": len(queued),
            "in_doubt_at_kill": len(in_doubt),
            "in_doubt_already_on_topic_at_kill": sorted(i for i in in_doubt if i in sent_at_kill),
            "in_doubt_published_once": sorted(i for i in in_doubt if ids[i] == 1),
            "syncs_with_transitions": len(chains),
            **exact,
        },
    )
