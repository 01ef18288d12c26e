"""Benchmark the processing core (decode, fold, fenced Redis batch) against a naive baseline."""

# Run from the repository root: `.venv/bin/python bench/core.py [--events N --syncs N --batch N]`.
# Messages are generated first (not timed), spread over partitions by murmur2 of the key as
# Kafka's default partitioner does, and fed in consecutive log-order batches, like a poll.

from __future__ import annotations

import argparse
import cProfile
import gc
import hashlib
import json
import os
import platform
import pstats
import re
import resource
import shlex
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import redis
from kafka.partitioner.default import murmur2

from consumers.decode import RawMessage
from consumers.processor import Processor
from monitor.cli import tune_gc
from monitor.engine import HealthEngine
from monitor.health import ThresholdBook, Thresholds
from monitor.services import RedisServer
from monitor.simulate import history
from monitor.store.codec import unpack
from monitor.store.outbox import Outbox

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"
PROFILE_OUT = ROOT / "bench" / "out" / "core_profile.txt"
START_MARK, END_MARK = "<!-- core:start -->", "<!-- core:end -->"
TOPIC, PREFIX = "sync.lifecycle", "syncmon"  # the settings' defaults
TRANSIENT = ("outbox",)  # queues a publisher drains; nothing drains them in this benchmark
RATIO_TARGET, MEMORY_TARGET = 0.35, 2048  # core/baseline throughput; bytes per stored sync
RESULTS_HEADER = """# Benchmarks

Each benchmark is a script under `bench/`, run by hand from the repository root with the
project venv. Each writes its own section below, between its `<!-- NAME:start -->` and
`<!-- NAME:end -->` markers, and leaves the other sections alone; bulky artifacts (profiles)
go to `bench/out/`, which is gitignored.

| benchmark | command | what it measures |
|---|---|---|
| core | `.venv/bin/python bench/core.py [--events 200000 --syncs 10000 --batch 1000]` \
| `Processor.prepare` + `Processor.write` (decode, fold, one fenced Redis transaction per \
batch) vs. `json.loads` + one pipelined HSET per event, on a private redis-server; Redis \
memory per sync; cProfile split in `bench/out/core_profile.txt` |

"""


@dataclass(slots=True)
class CoreRun:
    """Totals of one timed pass of the processor over the whole log."""

    seconds: float = 0.0
    events: int = 0
    dead: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    batch_seconds: list[float] = field(default_factory=list)

    def quarter_rates(self, size: int) -> list[float]:
        """Events/s over each quarter of the log's batches, to show drift as state grows."""
        q = max(1, len(self.batch_seconds) // 4)
        parts = [self.batch_seconds[i * q : (i + 1) * q] for i in range(4)]
        return [len(p) * size / sum(p) for p in parts if p and sum(p) > 0]


@dataclass(frozen=True, slots=True)
class Family:
    """One key family after the core run: key count, MEMORY USAGE and string value bytes."""

    keys: int
    memory: int
    value_bytes: int


@dataclass(frozen=True, slots=True)
class Phase:
    """One line of the profile split: a label and its (cumulative) seconds."""

    label: str
    seconds: float


@dataclass(frozen=True, slots=True)
class Split:
    """Profiled core time: additive phases, cross-cutting totals, heaviest direct callees."""

    total: float
    phases: list[Phase]
    cross: list[Phase]
    callees: list[Phase]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Command-line options; defaults are the full-size run."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--events", type=int, default=200_000, help="messages in the log")
    p.add_argument("--syncs", type=int, default=10_000, help="syncs in the simulated fleet")
    p.add_argument("--batch", type=int, default=1_000, help="messages per poll/batch")
    p.add_argument("--partitions", type=int, default=6, help="partitions of the topic")
    p.add_argument("--seed", type=int, default=1, help="simulator seed")
    p.add_argument("--step", type=float, default=1.0, help="seconds between simulated events")
    p.add_argument("--profile-events", type=int, default=20_000, help="cProfile slice size")
    p.add_argument("--no-results", action="store_true", help="do not update bench/RESULTS.md")
    args = p.parse_args(argv)
    if min(args.events, args.syncs, args.batch, args.partitions, args.profile_events) < 1:
        p.error("sizes must be >= 1")
    return args


def generate(args: argparse.Namespace) -> list[RawMessage]:
    """Simulated history ending now, as Kafka records with per-partition offsets."""
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=args.events * args.step)
    partition_of: dict[bytes, int] = {}
    next_offset = [0] * args.partitions
    out: list[RawMessage] = []
    for m in history(args.syncs, args.events, args.seed, start, args.step):
        part = partition_of.get(m.key)
        if part is None:
            part = partition_of[m.key] = (murmur2(m.key) & 0x7FFFFFFF) % args.partitions
        offset = next_offset[part]
        next_offset[part] = offset + 1
        headers: list[tuple[str, bytes | None]] = list(m.headers)
        out.append(RawMessage(TOPIC, part, offset, m.key, m.value, headers))
    return out


def batches(messages: Sequence[RawMessage], size: int) -> Iterator[Sequence[RawMessage]]:
    """Consecutive slices in log order, as successive polls would return them."""
    for i in range(0, len(messages), size):
        yield messages[i : i + size]


def run_core(client: redis.Redis, messages: Sequence[RawMessage], size: int) -> CoreRun:
    """One Processor over the log, prepare + write per batch, timed end to end."""
    processor = Processor(client, PREFIX, TOPIC)
    run = CoreRun()
    t0 = last = time.perf_counter()
    for batch in batches(messages, size):
        prepared = processor.prepare(batch)
        result = processor.write(prepared)
        now = time.perf_counter()
        run.batch_seconds.append(now - last)
        last = now
        run.events += len(prepared.events)
        run.dead += len(prepared.dead)
        for (_, outcome), n in result.counts.items():
            run.outcomes[outcome] += n
    run.seconds = time.perf_counter() - t0
    return run


def settle_health(client: redis.Redis, partitions: int) -> int:
    """Not timed: evaluates every synced view once (what the scheduler does right after each
    batch) and drops the health-change outbox (what the publisher does once Kafka acks), so
    the memory figure is that of a running syncmon, health included."""
    engine = HealthEngine(PREFIX, ThresholdBook(Thresholds()))
    evaluated = 0
    while done := engine.sweep(client, range(partitions), limit=5_000):
        evaluated += done
    client.delete(Outbox(PREFIX).key)
    print(f"health: evaluated {evaluated} syncs after the core run (not timed)", flush=True)
    return evaluated


def run_baseline(client: redis.Redis, messages: Sequence[RawMessage], size: int) -> float:
    """json.loads + one HSET(subject, type, raw value) per event, one pipeline per batch."""
    t0 = time.perf_counter()
    for batch in batches(messages, size):
        with client.pipeline(transaction=False) as pipe:
            for m in batch:
                value = m.value or b""
                headers = dict(m.headers)
                if "ce_specversion" in headers:  # binary mode: attributes in ce_* headers
                    json.loads(value)
                    subject = (headers.get("ce_subject") or b"").decode()
                    kind = (headers.get("ce_type") or b"").decode()
                else:
                    event = json.loads(value)
                    subject, kind = event["subject"], event["type"]
                pipe.hset(subject, kind, value)
            pipe.execute()
    return time.perf_counter() - t0


def used_memory(client: redis.Redis) -> int:
    """`INFO memory` used_memory in bytes."""
    info: dict[str, Any] = client.info("memory")
    return int(info["used_memory"])


def key_families(client: redis.Redis) -> dict[str, Family]:
    """Keys, MEMORY USAGE and STRLEN bytes per key family (`prefix:family:...`)."""
    keys = [k.decode() for k in client.scan_iter(count=5_000)]
    rows: list[Any] = []
    for i in range(0, len(keys), 2_000):
        with client.pipeline(transaction=False) as pipe:
            for k in keys[i : i + 2_000]:
                pipe.memory_usage(k, samples=0)
                pipe.type(k)
                pipe.strlen(k)
            rows.extend(pipe.execute(raise_on_error=False))
    families: dict[str, Family] = {}
    for j, key in enumerate(keys):
        size, kind, length = rows[3 * j : 3 * j + 3]
        parts = key.split(":")
        name = parts[1] if len(parts) > 1 and parts[0] == PREFIX else "(other)"
        old = families.get(name, Family(0, 0, 0))
        strlen = length if kind == b"string" and isinstance(length, int) else 0
        families[name] = Family(old.keys + 1, old.memory + (size or 0), old.value_bytes + strlen)
    return dict(sorted(families.items()))


def view_fields(client: redis.Redis, sample: int = 1_000) -> tuple[float, list[tuple[str, float]]]:
    """Mean JSON bytes of a sync view (seed part + facts, before compression) and of its
    largest top-level fields (sampled)."""
    keys = []
    for k in client.scan_iter(match=f"{PREFIX}:sync:*", count=5_000):
        keys.append(k)
        if len(keys) >= sample:
            break
    facts = [k.replace(b":sync:", b":facts:") for k in keys]
    raws: list[Any] = client.mget([*keys, *facts]) if keys else []
    docs = [
        {**json.loads(unpack(seed)), **json.loads(unpack(fact or b"{}"))}
        for seed, fact in zip(raws[: len(keys)], raws[len(keys) :], strict=True)
        if seed is not None
    ]
    per_field: Counter[str] = Counter()
    for doc in docs:
        for name, value in doc.items():
            per_field[name] += len(json.dumps(value, separators=(",", ":"))) + len(name) + 4
    n = max(len(docs), 1)
    mean = sum(len(json.dumps(d, separators=(",", ":"))) for d in docs) / n
    return mean, [(name, total / n) for name, total in per_field.most_common(6)]


def profile_slice(
    client: redis.Redis, messages: Sequence[RawMessage], size: int, slice_events: int
) -> tuple[pstats.Stats, int, int]:
    """Warm a flushed DB up to the middle of the log, then cProfile the next slice."""
    slice_events = min(slice_events, len(messages))
    begin = (len(messages) - slice_events) // 2 // size * size
    client.flushdb()
    processor = Processor(client, PREFIX, TOPIC)
    for batch in batches(messages[:begin], size):
        processor.write(processor.prepare(batch))
    profiler = cProfile.Profile()
    profiler.enable()
    for batch in batches(messages[begin : begin + slice_events], size):
        processor.write(processor.prepare(batch))
    profiler.disable()
    return pstats.Stats(profiler), begin, slice_events


StatKey = tuple[str, int, str]
PROCESSOR = "consumers/processor.py"
# Direct callees of the processor, by (path suffix, function or "*"), first match wins.
BUCKETS: list[tuple[str, str, str]] = [
    ("consumers/decode.py", "*", "decode (consumers.decode)"),
    ("monitor/fold.py", "*", "fold (monitor.fold.step)"),
    ("monitor/store/syncs.py", "put_many", "serialize + compress + queue view SETs"),
    ("monitor/store/syncs.py", "*", "read + parse stored views (MGET, pydantic JSON)"),
    ("pydantic/main.py", "model_validate_json", "read + parse stored views (MGET, pydantic JSON)"),
    ("monitor/engine.py", "*", "health (monitor.engine/health: evaluate, serialize, queue)"),
    ("monitor/health.py", "*", "health (monitor.engine/health: evaluate, serialize, queue)"),
    ("monitor/store/health.py", "*", "health (monitor.engine/health: evaluate, serialize, queue)"),
    ("monitor/store/indexes.py", "*", "index diff + queue ZADD/ZREM (monitor.store.indexes)"),
    ("monitor/store/fences.py", "*", "Redis: fence MGETs + fence SETs"),
    ("monitor/store/providers.py", "*", "providers load/store (monitor.store.providers)"),
    ("monitor/store/counters.py", "*", "counters HINCRBY (monitor.store.counters)"),
    ("redis/", "*", "Redis: WATCH, view MGET, MULTI/EXEC (redis-py, direct calls)"),
]
OTHER = "other callees (event_type, Counter, Position, dataclasses...)"
OWN = "processor's own code (loops, comprehensions)"


def _path(key: StatKey) -> str:
    """The file of a pstats key with forward slashes."""
    return key[0].replace(os.sep, "/")


def _bucket(key: StatKey) -> str:
    """The phase a direct callee of the processor belongs to."""
    for suffix, name, label in BUCKETS:
        path = _path(key)
        if (path.endswith(suffix) or f"/{suffix}" in path) and name in ("*", key[2]):
            return label
    return OTHER


def phase_split(stats: pstats.Stats) -> Split:
    """Additive split by the processor's direct call sites, cross-cutting totals, callees."""
    table: dict[StatKey, Any] = stats.stats  # type: ignore[attr-defined]
    phases: Counter[str] = Counter()
    callees: Counter[str] = Counter()
    for key, (_, _, tottime, _, callers) in table.items():
        if _path(key).endswith(PROCESSOR):
            phases[OWN] += tottime
            continue
        for caller, edge in callers.items():
            if _path(caller).endswith(PROCESSOR):
                phases[_bucket(key)] += edge[3]
                callees[f"{'/'.join(Path(key[0]).parts[-2:])}:{key[1]}({key[2]})"] += edge[3]
    total = sum(phases.values())

    def cum(path: str, *names: str) -> float:
        """Cumulative time of the named functions, counting nested matches once."""

        def hit(k: StatKey) -> bool:
            return _path(k).endswith(path) and k[2] in names

        hits = (e[3] for k, v in table.items() if hit(k) for c, e in v[4].items() if not hit(c))
        return float(sum(hits))

    def own(fragment: str) -> float:
        """Own time of C functions whose name contains `fragment` (e.g. pydantic's)."""
        return float(sum(v[2] for k, v in table.items() if k[0] == "~" and fragment in k[2]))

    redis_entry = sum(
        edge[3]
        for k, v in table.items()
        if "/redis/" in _path(k)
        for caller, edge in v[4].items()
        if "/redis/" not in _path(caller)
    )
    cross = [
        Phase("pydantic JSON parsing (validate_json, C, all callers)", own("'validate_json'")),
        Phase("pydantic JSON serializing (to_json, C, all callers)", own("'to_json'")),
        Phase("pydantic model_copy (fold, engine)", cum("pydantic/main.py", "model_copy")),
        Phase("all redis-py code (queuing + round trips)", redis_entry),
        Phase(
            "  of which round trips (execute, immediate commands)",
            cum("redis/client.py", "execute", "immediate_execute_command", "_execute_command"),
        ),
        Phase("  of which packing commands", cum("redis/connection.py", "pack_commands")),
        Phase("  of which parsing replies", cum("redis/client.py", "parse_response")),
        Phase("  of which socket send/recv own time", own("_socket.socket")),
    ]
    ordered = [Phase(label, t) for label, t in phases.most_common()]
    top_callees = [Phase(name, t) for name, t in callees.most_common(25)]
    return Split(total, ordered, cross, top_callees)


def write_profile(stats: pstats.Stats, begin: int, n: int, split: Split) -> None:
    """Phase split, direct callees, top 25 by cumulative and own time, to PROFILE_OUT."""
    PROFILE_OUT.parent.mkdir(parents=True, exist_ok=True)
    buf = StringIO()
    buf.write(f"cProfile of Processor.prepare + write over messages [{begin}, {begin + n})\n")
    buf.write(f"(DB warmed with messages [0, {begin}) first); profiled {split.total:.3f} s\n\n")
    buf.write(format_phases(split) + "\n\n")
    buf.write(table("direct callee of the processor", split.callees, split.total) + "\n\n")
    for order in ("cumulative", "tottime"):
        buf.write(f"=== top 25 by {order} ===\n")
        stats.stream = buf  # type: ignore[attr-defined]
        stats.sort_stats(order).print_stats(25)
    PROFILE_OUT.write_text(re.sub(r"[ \t]+\n", "\n", buf.getvalue()))


def table(heading: str, rows: list[Phase], total: float) -> str:
    """Aligned text table: label, seconds, share of `total`."""
    width = max(len(heading), *(len(p.label) for p in rows))
    lines = [f"{heading:<{width}}  seconds  share"]
    for p in rows:
        lines.append(f"{p.label:<{width}}  {p.seconds:7.3f}  {p.seconds / total:5.1%}")
    return "\n".join(lines)


def format_phases(split: Split) -> str:
    """The additive split (sums to the total) and the cross-cutting totals (overlapping)."""
    total_row = [Phase("total (Processor.prepare + write)", split.total)]
    return (
        table(
            "phase (by the processor's direct calls; adds up)",
            split.phases + total_row,
            split.total,
        )
        + "\n\n"
        + table("cross-cutting (overlaps the phases above)", split.cross, split.total)
    )


def source_state() -> tuple[str, str]:
    """Git HEAD plus locally modified files, and a hash of the core's Python sources."""

    def git(*cmd: str) -> str:
        done = subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.rstrip("\n")

    status = git("status", "--porcelain", "--", "consumers", "monitor")
    dirty = [line[3:] for line in status.splitlines() if line.strip()]
    head = git("rev-parse", "--short", "HEAD").strip() or "?"
    label = f"git {head}" + (f" + uncommitted changes in {', '.join(dirty)}" if dirty else "")
    digest = hashlib.sha256()
    for path in sorted([*ROOT.glob("consumers/**/*.py"), *ROOT.glob("monitor/**/*.py")]):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return label, digest.hexdigest()[:12]


def machine() -> dict[str, str]:
    """nproc, memory, CPU model, Python and redis-server versions."""
    mem_kb = 0
    cpu = platform.processor() or "unknown"
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    redis_version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout.split()
    return {
        "nproc": str(os.cpu_count()),
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "cpu": cpu,
        "python": platform.python_version(),
        "redis-server": next((w[2:] for w in redis_version if w.startswith("v=")), "?"),
        "kernel": platform.release(),
    }


def update_results(section: str) -> None:
    """Replace the core section of bench/RESULTS.md (creating the file) and keep the rest."""
    block = f"{START_MARK}\n{section.rstrip()}\n{END_MARK}"
    text = RESULTS.read_text() if RESULTS.exists() else RESULTS_HEADER
    if START_MARK in text and END_MARK in text:
        head, rest = text.split(START_MARK, 1)
        tail = rest.split(END_MARK, 1)[1]
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text)


def main(argv: Sequence[str] | None = None) -> int:
    """Generate, run core and baseline, profile, report, and update RESULTS.md."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    command = shlex.join(
        [".venv/bin/python", "bench/core.py", *(sys.argv[1:] if argv is None else argv)]
    )
    code, code_hash = source_state()
    t0 = time.perf_counter()
    messages = generate(args)
    gc.collect()
    tune_gc()  # as `syncmon run` does at start-up
    gen_seconds = time.perf_counter() - t0
    n = len(messages)
    binary = sum(any(k == "ce_specversion" for k, _ in m.headers) for m in messages)
    polls = [len({m.key for m in b}) for b in batches(messages, args.batch)]
    distinct = sum(polls) / len(polls)
    print(
        f"generated {n} messages ({binary} binary mode) for {args.syncs} syncs over "
        f"{args.partitions} partitions in {gen_seconds:.1f}s (not timed)",
        flush=True,
    )

    server = RedisServer().start()
    try:
        client = redis.Redis.from_url(server.url)
        client.flushdb()
        empty = used_memory(client)

        core = run_core(client, messages, args.batch)
        settle_health(client, args.partitions)
        after = used_memory(client)
        stored = sum(1 for _ in client.scan_iter(match=f"{PREFIX}:sync:*", count=5_000))
        families = key_families(client)
        view_mean, view_top = view_fields(client)
        core_rate = n / core.seconds
        print(f"core: {n} messages in {core.seconds:.2f}s = {core_rate:,.0f} events/s", flush=True)

        client.flushdb()
        base_empty = used_memory(client)
        base_seconds = run_baseline(client, messages, args.batch)
        base_after = used_memory(client)
        base_keys = int(client.dbsize())
        base_rate = n / base_seconds
        print(f"baseline: {base_seconds:.2f}s = {base_rate:,.0f} events/s", flush=True)

        stats, begin, slice_n = profile_slice(client, messages, args.batch, args.profile_events)
        split = phase_split(stats)
        write_profile(stats, begin, slice_n, split)
    finally:
        server.stop()

    changed = source_state()[1] != code_hash
    if changed:
        print(
            f"WARNING: sources changed on disk during the run; the numbers are for {code_hash}"
            " (loaded at start)",
            file=sys.stderr,
        )
    ratio = core_rate / base_rate
    note = " (changed on disk during the run; numbers are for this hash)" if changed else ""
    per_sync = (after - empty) / stored if stored else float("nan")
    backlog = sum(f.memory for name, f in families.items() if name in TRANSIENT)
    steady = (after - empty - backlog) / stored if stored else float("nan")
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    info = machine()
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    ok = {True: "met", False: "NOT met"}
    fam_rows = "\n".join(
        f"| `{PREFIX}:{name}` | {f.keys:,} | {f.memory / 1024 / 1024:.2f} MiB | "
        f"{f.memory / max(stored, 1):,.0f} B | "
        + (f"{f.value_bytes / f.keys:,.0f} B |" if f.value_bytes else "- |")
        for name, f in families.items()
    )
    view_parts = ", ".join(f"`{name}` {size:,.0f} B" for name, size in view_top)
    quarters = " / ".join(f"{r:,.0f}" for r in core.quarter_rates(args.batch))
    outcomes = ", ".join(f"{k} {v:,}" for k, v in sorted(core.outcomes.items()))
    section = f"""## core: processing core vs. naive baseline

Command: `{command}` (run from the repository root)
Date: {date}
Machine: nproc {info["nproc"]}, memory {info["memory"]}, CPU {info["cpu"]}, \
Linux {info["kernel"]}; Python {info["python"]}; redis-server {info["redis-server"]} \
(private instance, persistence off, loopback TCP)
Code: {code}; sources sha256 {code_hash}\
{note}

Workload: {n:,} simulated messages ({binary:,} binary mode) for {args.syncs:,} syncs, \
seed {args.seed}, {args.step:g}s apart ending at the run time; {args.partitions} partitions \
by murmur2(key); batches of {args.batch:,} consecutive messages (on average \
{distinct:,.0f} distinct subjects per batch); processor clock = wall clock.
Core outcomes: {outcomes}; {core.dead:,} dead letters; {core.events:,} events decoded.

| metric | value | target |
|---|---|---|
| core (`Processor.prepare` + `write`) | {core_rate:,.0f} events/s ({core.seconds:.2f} s) | |
| core by quarter of the log | {quarters} events/s | |
| baseline (`json.loads` + pipelined HSET) | {base_rate:,.0f} events/s ({base_seconds:.2f} s) \
| |
| ratio core / baseline | {ratio:.3f} | >= {RATIO_TARGET} ({ok[ratio >= RATIO_TARGET]}) |
| Redis memory per stored sync | {per_sync:,.0f} B ({(after - empty) / 1024 / 1024:.1f} MiB \
/ {stored:,} sync views) | <= {MEMORY_TARGET} B ({ok[per_sync <= MEMORY_TARGET]}) |
| same, without {"/".join(TRANSIENT)} (undrained: no publisher runs here) | \
{steady:,.0f} B ({backlog / 1024 / 1024:.1f} MiB excluded) | \
<= {MEMORY_TARGET} B ({ok[steady <= MEMORY_TARGET]}) |
| baseline Redis memory per subject | {(base_after - base_empty) / max(base_keys, 1):,.0f} B \
({base_keys:,} hashes) | |
| peak RSS of the benchmark process | {rss_mib:,.0f} MiB (holds all {n:,} messages) | |

Redis keys after the core run (`MEMORY USAGE key SAMPLES 0`):

| key family | keys | memory | memory per stored sync | mean value (strings) |
|---|---|---|---|---|
{fam_rows}

A stored sync view is {view_mean:,.0f} B of JSON on average; largest top-level fields: \
{view_parts}.

Core phase split (cProfile, messages [{begin:,}, {begin + slice_n:,}) after warming the \
DB with the ones before; {slice_n / split.total:,.0f} events/s under the profiler, which \
inflates Python-heavy parts; top 25 by cumulative and by own time in \
`bench/out/core_profile.txt`):

```
{format_phases(split)}
```
"""
    print()
    print(section)
    print(f"profile: {PROFILE_OUT.relative_to(ROOT)}")
    if not args.no_results:
        update_results(section)
        print(f"results: {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
