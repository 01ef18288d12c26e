"""Benchmark end-to-end latency: an event produced to its health showing in the API, under load."""

# Run from the repository root: `.venv/bin/python bench/latency.py [--rate 1000 --probes 300]`.
# A private tansu broker and redis-server; topics created with 6 partitions; `python -m
# monitor.cli run` as a subprocess configured by SYNCMON_* (health tick at its default).
# Background load: monitor.simulate.run(rate=1000, syncs=2000) in a child process (its own
# GIL, so it neither slows nor is slowed by the prober), started with enough simulated
# history behind it that it has >= rate events/s to send for the whole run (a fleet of
# 2,000 syncs emits ~85 events/s on its own, so `warmup` is raised to 1,200 s).
# Probes: a few dedicated probe syncs (created first, health `initializing`); every ~100 ms
# one idle probe sync gets `sync.disabled` or `sync.enabled` (alternately per sync), and
# GET /v1/syncs/{probe}/health is polled until `status` shows it (`paused`, or not
# `paused`). Latency = from just before KafkaProducer.send to the end of the first response
# that shows it (an upper bound); the start of the last response that did not show it gives
# a lower bound. Polls are paced globally (default 50 GET/s) so polling does not load the
# 2-core machine more than a dashboard would.

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from health import (
    DISTURBED,
    OUT,
    RESULTS,
    ROOT,
    cpu_ticks,
    header,
    percentile,
    sources_changed,
    update_results,
)
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from monitor.services import Broker, RedisServer, ensure_topics, free_port
from monitor.settings import Settings

TOPIC = Settings.model_fields["kafka_topic"].default
DLQ = Settings.model_fields["kafka_dlq_topic"].default
HEALTH_TOPIC = Settings.model_fields["health_topic"].default
P99_TARGET = 1.0  # seconds
LOG_OUT = OUT / "latency_syncmon.log"
SIM_LOG_OUT = OUT / "latency_simulator.log"
TABLE_ROW = (
    "| latency | `.venv/bin/python bench/latency.py [--rate 1000 --probes 300]` | "
    "end to end, event produced to its health visible in GET /v1/syncs/{id}/health, with "
    "`syncmon run` as a subprocess on a private tansu broker (6 partitions) and redis-server, "
    "under ~1,000 simulated events/s; p50/p90/p99/max over ~300 probes |"
)

SIMULATOR = """
import logging, sys
from monitor import simulate
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
logging.getLogger("kafka").setLevel(logging.WARNING)
bootstrap, topic, syncs, rate, duration, warmup, seed = sys.argv[1:8]
sent = simulate.run(bootstrap, topic, int(syncs), float(rate), int(seed), float(duration), None,
                    warmup=float(warmup))
print(f"ACKED {sent}", flush=True)
"""


@dataclass(slots=True)
class ProbeSync:
    """One probe sync: its next sequence, its state, and its outstanding probe if any."""

    sync_id: str
    sequence: int = 1
    disabled: bool = False
    outstanding: Probe | None = None
    last_poll: float = 0.0


@dataclass(slots=True)
class Probe:
    sync_id: str
    kind: str
    expect_paused: bool
    sent: float  # perf_counter just before send
    acked: float | None = None
    last_miss_start: float | None = None  # request start of the last poll not showing it
    polls: int = 0
    seen: float | None = None  # end of the first response showing it
    seen_request_start: float | None = None
    status: str | None = None


@dataclass(slots=True)
class Cpu:
    """utime+stime of a process (and its children it waited for) from /proc, in seconds."""

    pid: int
    start: float = field(default=0.0)

    def read(self) -> float:
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime

    def begin(self) -> None:
        self.start = self.read()

    def used(self) -> float:
        return self.read() - self.start


def cloudevent(kind: str, subject: str, sequence: int, data: dict[str, Any]) -> bytes:
    now = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    event = {
        "specversion": "1.0",
        "id": f"probe-{uuid.uuid4()}",
        "source": "//bench/latency",
        "type": kind,
        "time": now,
        "subject": subject,
        "datacontenttype": "application/json",
        "sequence": sequence,
        "data": data,
    }
    return json.dumps(event, separators=(",", ":")).encode()


def created_data(sync_id: str) -> dict[str, Any]:
    return {
        "provider": "stripe",
        "stream_id": f"stream-{sync_id}",
        "name": f"latency probe {sync_id}",
        "status": "active",
        "org_id": "org-bench",
        "collection_ids": ["stripe:customer"],
        "sync_frequency": "continuous",
    }


def end_offsets(bootstrap: str, topic: str, partitions: int) -> int:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, client_id="bench-latency-offsets")
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        return sum(consumer.end_offsets(tps).values())
    finally:
        consumer.close()


def scrape(base: str) -> dict[str, float]:
    """Selected process-local series of /metrics (sums over labels)."""
    wanted = (
        "syncmon_batch_duration_seconds_sum", "syncmon_batch_duration_seconds_count",
        "syncmon_scheduler_tick_duration_seconds_sum",
        "syncmon_scheduler_tick_duration_seconds_count",
        "syncmon_health_evaluations_total", "syncmon_consumer_lag",
    )  # fmt: skip
    out: dict[str, float] = {}
    body = httpx.get(f"{base}/metrics", timeout=60).text
    for line in body.splitlines():
        if line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in wanted:
            out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--rate", type=float, default=1000.0, help="background events/s")
    p.add_argument("--syncs", type=int, default=2000, help="simulated fleet (background)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of background load")
    p.add_argument("--warmup", type=float, default=1200.0, help="simulator history, seconds")
    p.add_argument("--probes", type=int, default=300, help="probes to record")
    p.add_argument("--probe-syncs", type=int, default=8, help="probe syncs (max in flight)")
    p.add_argument("--interval", type=float, default=0.1, help="seconds between probes")
    p.add_argument("--poll-rate", type=float, default=50.0, help="GET /health per second, max")
    p.add_argument("--ramp", type=float, default=5.0, help="load seconds before the first probe")
    p.add_argument("--partitions", type=int, default=6)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--no-results", action="store_true", help="do not update bench/RESULTS.md")
    return p.parse_args(argv)


def wait_http(url: str, timeout: float, ok: Any = lambda r: r.status_code == 200) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if ok(httpx.get(url, timeout=2)):
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} not ready within {timeout:.0f}s")
        time.sleep(0.2)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    command = shlex.join([".venv/bin/python", "bench/latency.py", *argv])
    date, machine, code = header(command)
    OUT.mkdir(parents=True, exist_ok=True)
    redis_server = RedisServer().start()
    broker = Broker().start()
    syncmon: subprocess.Popen[bytes] | None = None
    simulator: subprocess.Popen[bytes] | None = None
    probes: list[Probe] = []
    skipped = 0
    try:
        ensure_topics(
            broker.bootstrap,
            {TOPIC: args.partitions, DLQ: args.partitions, HEALTH_TOPIC: args.partitions},
        )
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "SYNCMON_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
            "SYNCMON_REDIS_URL": redis_server.url,
            "SYNCMON_HTTP_PORT": str(port),
            "SYNCMON_KAFKA_TOPIC_PARTITIONS": str(args.partitions),
            "SYNCMON_KAFKA_GROUP_ID": f"syncmon-bench-{uuid.uuid4().hex[:6]}",
        }
        env.pop("SYNCMON_HEALTH_TICK_SECONDS", None)  # the default
        env.pop("SYNCMON_API_TOKENS", None)
        with LOG_OUT.open("wb") as log:
            syncmon = subprocess.Popen(
                [sys.executable, "-m", "monitor.cli", "run"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        wait_http(f"{base}/readyz", 60)
        print(f"syncmon ready on {base} (pid {syncmon.pid})", flush=True)

        producer = KafkaProducer(
            bootstrap_servers=broker.bootstrap, acks="all", linger_ms=0, client_id="bench-probe"
        )
        http = httpx.Client(base_url=base, timeout=10)
        syncs = [ProbeSync(f"bench-probe-{i}") for i in range(args.probe_syncs)]
        for s in syncs:
            value = cloudevent("sync.created", s.sync_id, s.sequence, created_data(s.sync_id))
            producer.send(TOPIC, key=s.sync_id.encode(), value=value)
        producer.flush()

        def visible(s: ProbeSync) -> bool:
            r = http.get(f"/v1/syncs/{s.sync_id}/health")
            return r.status_code == 200 and r.json()["status"] != "paused"

        deadline = time.monotonic() + 30
        while not all(visible(s) for s in syncs):
            if time.monotonic() > deadline:
                raise RuntimeError("probe syncs not visible after 30 s")
            time.sleep(0.1)
        initial = http.get(f"/v1/syncs/{syncs[0].sync_id}/health").json()["status"]
        print(f"{len(syncs)} probe syncs visible ({initial})", flush=True)

        offsets_before = end_offsets(broker.bootstrap, TOPIC, args.partitions)
        cpus = {
            "syncmon": Cpu(syncmon.pid),
            "broker (tansu)": Cpu(broker.pid),
            "redis-server": Cpu(redis_server.pid),
            "benchmark (prober)": Cpu(os.getpid()),
        }
        with SIM_LOG_OUT.open("wb") as log:
            simulator = subprocess.Popen(
                [
                    sys.executable, "-c", SIMULATOR, broker.bootstrap, TOPIC, str(args.syncs),
                    str(args.rate), str(args.duration), str(args.warmup), str(args.seed),
                ],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        cpus["simulator"] = Cpu(simulator.pid)
        for cpu in cpus.values():
            cpu.begin()
        busy0 = cpu_ticks()[0]
        load_start = time.monotonic()
        time.sleep(args.ramp)
        window_start_offsets = end_offsets(broker.bootstrap, TOPIC, args.partitions)
        window_start = time.monotonic()

        acked_lock = threading.Lock()
        poll_gap = 1.0 / args.poll_rate
        next_probe = time.perf_counter()
        next_poll = time.perf_counter()
        turn = 0
        load_end = load_start + args.duration - 1.0
        while len([p for p in probes if p.seen is not None]) < args.probes:
            if time.monotonic() >= load_end:
                print("background load ended before all probes; stopping", flush=True)
                break
            now = time.perf_counter()
            if now >= next_probe:
                idle = [s for s in syncs if s.outstanding is None]
                if idle:
                    s = idle[turn % len(idle)]
                    turn += 1
                    s.sequence += 1
                    kind = "sync.enabled" if s.disabled else "sync.disabled"
                    data = {} if s.disabled else {"reason": "latency probe"}
                    value = cloudevent(kind, s.sync_id, s.sequence, data)
                    probe = Probe(s.sync_id, kind, expect_paused=not s.disabled, sent=0.0)
                    probe.sent = time.perf_counter()
                    future = producer.send(TOPIC, key=s.sync_id.encode(), value=value)

                    def on_ack(_: Any, p: Probe = probe) -> None:
                        with acked_lock:
                            p.acked = time.perf_counter()

                    future.add_callback(on_ack)
                    s.disabled = not s.disabled
                    s.outstanding = probe
                    probes.append(probe)
                else:
                    skipped += 1
                next_probe = max(next_probe + args.interval, now)
            if now >= next_poll:
                waiting = [s for s in syncs if s.outstanding is not None]
                if waiting:
                    s = min(waiting, key=lambda x: x.last_poll)
                    p = s.outstanding
                    assert p is not None
                    start = time.perf_counter()
                    r = http.get(f"/v1/syncs/{s.sync_id}/health")
                    end = time.perf_counter()
                    s.last_poll = end
                    p.polls += 1
                    status = r.json().get("status") if r.status_code == 200 else None
                    if status is not None and (status == "paused") == p.expect_paused:
                        p.seen, p.seen_request_start, p.status = end, start, status
                        s.outstanding = None
                    else:
                        p.last_miss_start = start
                    next_poll = max(next_poll + poll_gap, end)
                else:
                    next_poll = now + poll_gap
            time.sleep(max(0.0, min(next_probe, next_poll) - time.perf_counter()))
        window_seconds = time.monotonic() - window_start
        window_end_offsets = end_offsets(broker.bootstrap, TOPIC, args.partitions)
        cpu_seconds = {name: cpu.used() for name, cpu in cpus.items()}
        cpu_seconds["everything else"] = max(
            0.0, cpu_ticks()[0] - busy0 - sum(cpu_seconds.values())
        )
        cpu_wall = time.monotonic() - load_start
        server_metrics = scrape(base)
        http.close()
        producer.close(timeout=5)

        simulator.wait(timeout=args.duration + 60)
        acked = 0
        for line in SIM_LOG_OUT.read_text(errors="replace").splitlines():
            if line.startswith("ACKED "):
                acked = int(line.split()[1])
        offsets_after = end_offsets(broker.bootstrap, TOPIC, args.partitions)
        lag_deadline = time.monotonic() + 60
        while True:  # how long the consumer needs to catch up once the load stops
            lag = scrape(base).get("syncmon_consumer_lag", 0.0)
            if lag == 0 or time.monotonic() > lag_deadline:
                break
            time.sleep(0.5)
        final_lag = lag
    finally:
        for proc in (simulator, syncmon):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        broker.stop()
        redis_server.stop()

    log_text = LOG_OUT.read_text(errors="replace")
    skipped_wakes = log_text.count("skipped: maximum number of running instances reached")
    log_warnings = sum(
        1 for line in log_text.splitlines() if " WARNING " in line or " ERROR " in line
    )
    seen = [p for p in probes if p.seen is not None]
    upper = [p.seen - p.sent for p in seen if p.seen is not None]
    lower = [
        (p.last_miss_start if p.last_miss_start is not None else p.sent) - p.sent for p in seen
    ]
    acks = [p.acked - p.sent for p in seen if p.acked is not None]
    polls = statistics.mean(p.polls for p in seen) if seen else 0.0
    statuses = Counter(p.status for p in seen)

    def q(values: list[float], pct: float) -> str:
        return f"{percentile(values, pct) * 1000:,.0f} ms" if values else "-"

    window_rate = (window_end_offsets - window_start_offsets) / window_seconds
    changed = sources_changed(code)
    other = cpu_seconds["everything else"] / cpu_wall
    warning = (
        f"\n**Disturbed run:** other processes used {other:.0%} of a core during the load; "
        "re-run on a quiet machine.\n"
        if other > DISTURBED
        else ""
    )
    ok = {True: "met", False: "NOT met"}
    p99 = percentile(upper, 99) if upper else float("inf")
    bg_rate = acked / args.duration
    batch_n = server_metrics.get("syncmon_batch_duration_seconds_count", 0.0)
    batch_mean = server_metrics.get("syncmon_batch_duration_seconds_sum", 0.0) / max(batch_n, 1)
    tick_n = server_metrics.get("syncmon_scheduler_tick_duration_seconds_count", 0.0)
    tick_mean = server_metrics.get("syncmon_scheduler_tick_duration_seconds_sum", 0.0) / max(
        tick_n, 1
    )
    cpu_line = ", ".join(f"{name} {sec / cpu_wall:.0%}" for name, sec in cpu_seconds.items())
    print(
        f"probes: {len(seen)} seen, {len(probes) - len(seen)} unfinished, {skipped} slots skipped; "
        f"p50 {q(upper, 50)}, p90 {q(upper, 90)}, p99 {q(upper, 99)}, max "
        f"{max(upper) * 1000 if upper else 0:,.0f} ms",
        flush=True,
    )
    section = f"""## latency: event produced to health visible in the API

Command: `{command}` (run from the repository root)
Date: {date}
Machine: {machine}; everything below on this one machine
Code: {code}{changed}
{warning}
Setup: private tansu broker (in-memory) and redis-server; topics `{TOPIC}`, `{DLQ}`, \
`{HEALTH_TOPIC}` with {args.partitions} partitions; `python -m monitor.cli run` as a \
subprocess with SYNCMON_KAFKA_BOOTSTRAP_SERVERS, SYNCMON_REDIS_URL, SYNCMON_HTTP_PORT, \
SYNCMON_KAFKA_TOPIC_PARTITIONS={args.partitions}, a fresh SYNCMON_KAFKA_GROUP_ID and every \
other setting at its default (health tick 1 s, max batch 1,000, poll timeout 500 ms). \
Background: `monitor.simulate.run(rate={args.rate:g}, syncs={args.syncs:,}, \
duration={args.duration:g}, warmup={args.warmup:g})` in a child process (warmup raised so \
the fleet has >= {args.rate:g} events/s to send throughout; 2,000 syncs emit ~85/s live). \
Probes: {args.probe_syncs} probe syncs created first (health `{initial}`); from {args.ramp:g} s \
into the load, every {args.interval * 1000:g} ms one idle probe sync gets `sync.disabled` or \
`sync.enabled` (alternating per sync; a slot is skipped when all are in flight) from a \
KafkaProducer (acks=all, linger 0), and GET /v1/syncs/{{probe}}/health is polled (paced to \
<= {args.poll_rate:g} GET/s overall, the least recently polled probe first) until `status` is \
`paused` / not `paused`. Latency = just before `send` to the end of the first response \
showing the change (upper bound); the lower bound is the start of the last response that \
did not show it.

Background load: {acked:,} events acknowledged in {args.duration:g} s = {bg_rate:,.0f} \
events/s; {window_rate:,.0f} events/s appended to the topic while probing \
({window_seconds:.0f} s); {offsets_after - offsets_before:,} records added in total. \
Consumer lag at the end of the load: {final_lag:,.0f} after catching up. syncmon during the \
load: {batch_n:,.0f} batches, mean batch write {batch_mean * 1000:,.1f} ms; {tick_n:,.0f} \
health ticks, mean {tick_mean * 1000:,.1f} ms; \
{server_metrics.get("syncmon_health_evaluations_total", 0):,.0f} evaluations. syncmon log: \
{log_warnings} WARNING/ERROR lines, of which {skipped_wakes} are APScheduler's "skipped: \
maximum number of running instances reached" (a tick requested, by `wake()` or the interval, \
while one was running, and dropped). CPU from the start of the load to the last probe \
(share of one core): {cpu_line}.

| metric | value | target |
|---|---|---|
| probes | {len(seen)} seen ({dict(statuses)}), {len(probes) - len(seen)} unfinished, \
{skipped} slots skipped (all probe syncs in flight) | ~300 |
| produce -> visible (upper bound) | p50 {q(upper, 50)}, p90 {q(upper, 90)}, p99 \
{q(upper, 99)}, max {q(upper, 100)} | p99 < {P99_TARGET:g} s ({ok[p99 < P99_TARGET]}) |
| produce -> visible (lower bound) | p50 {q(lower, 50)}, p90 {q(lower, 90)}, p99 \
{q(lower, 99)}, max {q(lower, 100)} | |
| produce -> broker ack | p50 {q(acks, 50)}, p99 {q(acks, 99)} | |
| polls per probe | {polls:.1f} on average | |

Logs: `bench/out/latency_syncmon.log`, `bench/out/latency_simulator.log`.
"""
    print()
    print(section)
    if not args.no_results:
        update_results("latency", section, TABLE_ROW)
        print(f"results: {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
