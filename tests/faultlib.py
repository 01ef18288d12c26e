"""Helpers for the fault-injection tests: processes, offsets, fences, topics and measurements."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from monitor.services import dies_with
from monitor.store.counters import EventCounters
from monitor.store.fences import Fences
from tests.eventlib import expected_fold, stored_state


def start_monitor(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`syncmon run` in a session of its own, so killpg reaches it and nothing else."""
    return subprocess.Popen(
        [sys.executable, "-m", "monitor.cli", "run"],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=dies_with(os.getpid()),  # a killed test run leaves no syncmon behind
    )


def ready(port: int) -> bool:
    """`/readyz` of a syncmon on this port answers 200."""
    import httpx

    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def counted(client: redis.Redis, prefix: str) -> int:
    """Events counted in Redis (every outcome): moves only when a batch is committed there."""
    return sum(EventCounters(prefix).read(client).values())


def wait_for(
    predicate: Callable[[], bool], timeout: float, interval: float = 0.05, what: str = ""
) -> float:
    """Polls until `predicate()`; returns the seconds it took, fails with `what` on timeout."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what or predicate}")
        time.sleep(interval)
    return time.monotonic() - start


def wait_counted(
    client: redis.Redis, prefix: str, at_least: int, timeout: float, interval: float = 0.01
) -> float:
    """Waits until `at_least` events are counted; returns the seconds it took."""
    return wait_for(
        lambda: counted(client, prefix) >= at_least, timeout, interval, f"{at_least} counted"
    )


def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed offsets (next offset to read) per partition of `topic`."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap, client_id="faults-probe", request_timeout_ms=10_000
    )
    try:
        raw = admin.list_group_offsets(group).get(group, {})
    finally:
        admin.close()
    return {tp.partition: m.offset for tp, m in raw.items() if tp.topic == topic and m.offset >= 0}


def log_ends(produced: list[Any], partitions: int) -> dict[int, int]:
    """Log end offset (last offset + 1) per partition, from the producer's acknowledgements.

    Not from ListOffsets: the tansu broker answers it with the base offset of the last record
    batch, short of the real end when the producer batched several records.
    """
    ends = dict.fromkeys(range(partitions), 0)
    for record in produced:
        ends[record.partition] = max(ends[record.partition], record.offset + 1)
    return ends


def stored_fences(client: redis.Redis, prefix: str, topic: str, partitions: int) -> dict[int, int]:
    """Last offset applied to Redis per partition (-1 for none)."""
    return Fences(prefix).get_many(client, topic, range(partitions))


def read_topic(
    bootstrap: str, topic: str, partitions: int, settle: float = 2.0, headers: bool = False
) -> list[Any]:
    """Every record of a topic as (partition, offset, key, parsed JSON value), and its
    headers last when asked."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
    out: list[Any] = []
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < settle:
        got = [r for batch in consumer.poll(timeout_ms=200).values() for r in batch]
        if got:
            for r in got:
                record = (r.partition, r.offset, r.key, json.loads(r.value))
                out.append((*record, r.headers) if headers else record)
            quiet_since = time.monotonic()
    consumer.close()
    return out


def metric(exposition: str, name: str) -> float | None:
    """The value of an unlabelled sample in Prometheus text, None if absent."""
    found = re.search(rf"^{re.escape(name)} (\S+)$", exposition, re.MULTILINE)
    return float(found.group(1)) if found else None


def assert_exact(
    produced: list[Any], redis_url: str, prefix: str
) -> tuple[dict[str, int], dict[str, Any]]:
    """Every view and counter equals the pure fold of `produced` (RawMessages with offsets).

    Returns the figures (views compared, events lost, events double-applied) and the expected
    views keyed `sync:<id>` / `provider:<name>`.
    """
    expected_views, expected_counts = expected_fold(produced)
    stored_views, stored_counts = stored_state(redis_url, prefix, list(expected_views))
    missing = [k for k, v in expected_views.items() if v is not None and stored_views[k] is None]
    mismatched = [k for k, v in expected_views.items() if stored_views[k] != v]
    total_expected = sum(expected_counts.values())
    total_stored = sum(stored_counts.values())
    lost = sum((expected_counts - stored_counts).values())
    doubled = sum((stored_counts - expected_counts).values())
    assert stored_counts == expected_counts, (lost, doubled)
    assert not mismatched, (len(mismatched), mismatched[:5], missing[:5])
    assert total_stored == total_expected == len(produced)
    figures = {"views_compared": len(expected_views), "lost": lost, "double_applied": doubled}
    return figures, expected_views


def record_figures(tmp_path: Path, name: str, figures: dict[str, Any]) -> None:
    """Keeps a test's measured figures for docs/reliability.md.

    Written to `<tmp_path>/figures.json`, printed (see them with `-s` or `-rP`), and appended
    as a JSON line to `$SYNCMON_FAULT_FIGURES` when that is set.
    """
    line = json.dumps({"test": name, **figures}, sort_keys=True)
    (tmp_path / "figures.json").write_text(line + "\n")
    print(f"FIGURES {line}")
    target = os.environ.get("SYNCMON_FAULT_FIGURES")
    if target:
        with open(target, "a") as out:
            out.write(line + "\n")


def log_tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "<no log>"
