"""Benchmark the health engine: sweeping 100,000 due syncs, and an idle scheduler tick."""

# Run from the repository root: `.venv/bin/python bench/health.py [--syncs N --events N]`.
# The fleet is loaded (not timed) from the simulator's history through the real Processor,
# exactly as bench/core.py feeds it (murmur2 partitions, consecutive log-order batches), and
# evaluated once, as the scheduler would right after each batch. Then:
#   sweep, all due: every live sync is made due (ZADD score 0 in its partition's due set)
#     and HealthScheduler.tick() runs, with SYNCMON_HEALTH_WORKERS' default worker processes
#     as in `syncmon run`, until nothing is due; then the same all in this process with
#     HealthEngine.sweep(...); cProfile of the latter on a slice of the fleet goes to bench/out/.
#   idle tick: nothing due (checked with ZCOUNT), HealthScheduler.tick() timed N times.
# bench/metrics.py reuses `populate` and the RESULTS.md helpers from here.

from __future__ import annotations

import argparse
import cProfile
import gc
import math
import os
import pstats
import re
import shlex
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from io import StringIO
from pathlib import Path
from typing import Any

import core  # bench/core.py: generate, batches, machine, source_state
import pydantic_core
import redis
from kafka.partitioner.default import murmur2

from consumers.decode import RawMessage
from consumers.processor import EVALUATE_NOW, Processor
from monitor.cli import tune_gc
from monitor.engine import HealthEngine
from monitor.enums import HealthStatus, SyncStatus
from monitor.health import ThresholdBook, Thresholds
from monitor.metrics import ProcessMetrics
from monitor.scheduler import HealthScheduler
from monitor.services import RedisServer, child_pids
from monitor.settings import Settings
from monitor.store.base import text
from monitor.store.due import DueIndex
from monitor.store.health import HealthViews
from monitor.store.indexes import Indexes
from monitor.store.outbox import Outbox
from monitor.workers import SweepWorkers

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"
OUT = ROOT / "bench" / "out"
PROFILE_OUT = OUT / "health_profile.txt"
TOPIC, PREFIX = core.TOPIC, core.PREFIX
SWEEP_TARGET, TICK_TARGET_MS = 20_000, 10.0  # syncs/s; ms
DISTURBED = 0.25  # other processes' CPU (share of a core) above which a run is flagged
TABLE_ROW = (
    "| health | `.venv/bin/python bench/health.py [--syncs 100000 --events 300000]` | "
    "every one of 100,000 syncs due, swept as `syncmon run` does (`HealthScheduler.tick` with "
    "its default health workers) and all in process (`HealthEngine.sweep`) (syncs/s), and "
    "one idle `HealthScheduler.tick` (sweep + fan-out, nothing due; median/p99), on a "
    "private redis-server; cProfile in `bench/out/health_profile.txt` |"
)


# -- shared with bench/metrics.py ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Populated:
    """What `populate` loaded: message count, live syncs by partition, seconds spent."""

    events: int
    binary: int
    ids_by_partition: dict[int, list[str]]
    generate_seconds: float
    load_seconds: float
    first_eval_seconds: float
    first_evaluated: int
    first_changes: int
    types: dict[str, int]

    @property
    def syncs(self) -> int:
        return sum(len(v) for v in self.ids_by_partition.values())


def partition_of(sync_id: str, partitions: int) -> int:
    """Kafka's default partitioner, as bench/core.py and the simulator's producer use."""
    return int(murmur2(sync_id.encode()) & 0x7FFFFFFF) % partitions


_TYPE = re.compile(rb'"type":"([^"]+)"')


def event_type_of(m: RawMessage) -> str:
    """The CloudEvent type of a generated record (binary mode: the ce_type header)."""
    for k, v in m.headers:
        if k == "ce_type" and v is not None:
            return v.decode()
    found = _TYPE.search(m.value or b"")
    return found.group(1).decode() if found else "?"


def live_ids(client: redis.Redis, partitions: int) -> dict[int, list[str]]:
    """Every live sync (the `status` index sets together hold them all), by partition."""
    by_part: dict[int, list[str]] = {p: [] for p in range(partitions)}
    for key in Indexes(PREFIX).all_keys:
        for member in client.zrange(key, 0, -1):
            sync_id = text(member)
            by_part[partition_of(sync_id, partitions)].append(sync_id)
    for ids in by_part.values():
        ids.sort()
    return by_part


def until_empty(run: Callable[[], int]) -> tuple[int, int]:
    """`run()` (a sweep over every partition, as a tick does) until it finds nothing.
    Returns (syncs evaluated, sweeps that found something)."""
    evaluated = sweeps = 0
    while done := run():
        evaluated += done
        sweeps += 1
    return evaluated, sweeps


def populate(
    client: redis.Redis,
    syncs: int,
    events: int,
    *,
    step: float = 1.0,
    seed: int = 1,
    partitions: int = 6,
    batch: int = 1_000,
    limit: int = 10_000,
) -> Populated:
    """Flushes the DB; simulated history through the Processor; then the first evaluation
    of every sync (what the scheduler does after each batch). The outbox of health changes
    is dropped afterwards, as a publisher would drain it."""
    client.flushdb()
    args = argparse.Namespace(
        events=events, syncs=syncs, seed=seed, step=step, partitions=partitions
    )
    t0 = time.perf_counter()
    messages = core.generate(args)
    gen = time.perf_counter() - t0
    binary = sum(any(k == "ce_specversion" for k, _ in m.headers) for m in messages)
    types = Counter(event_type_of(m) for m in messages)
    print(
        f"generated {len(messages):,} messages for {syncs:,} syncs in {gen:.1f}s",
        flush=True,
    )
    t0 = time.perf_counter()
    processor = Processor(client, PREFIX, TOPIC)
    for chunk in core.batches(messages, batch):
        processor.process(chunk)
    load = time.perf_counter() - t0
    n = len(messages)
    del messages, processor
    gc.collect()
    print(f"loaded through the Processor in {load:.1f}s ({n / load:,.0f} events/s)", flush=True)
    engine = HealthEngine(PREFIX, ThresholdBook(Thresholds()))
    outbox = Outbox(PREFIX)
    t0 = time.perf_counter()
    first, _ = until_empty(lambda: engine.sweep(client, range(partitions), limit=limit))
    first_seconds = time.perf_counter() - t0
    changes = int(client.xlen(outbox.key))
    client.delete(outbox.key)
    print(
        f"first evaluation: {first:,} syncs in {first_seconds:.1f}s "
        f"({first / first_seconds:,.0f} syncs/s, {changes:,} change events)",
        flush=True,
    )
    return Populated(
        events=n,
        binary=binary,
        ids_by_partition=live_ids(client, partitions),
        generate_seconds=gen,
        load_seconds=load,
        first_eval_seconds=first_seconds,
        first_evaluated=first,
        first_changes=changes,
        types=dict(types.most_common()),
    )


def health_mix(client: redis.Redis, ids_by_partition: dict[int, list[str]]) -> dict[str, int]:
    """Syncs per stored health status (read from the health keys themselves, so it does not
    depend on how the engine indexes health)."""
    ids = [i for part in ids_by_partition.values() for i in part]
    healths = HealthViews(PREFIX)
    found: Counter[str] = Counter()
    for start in range(0, len(ids), 5_000):
        for raw in client.mget(healths.keys(ids[start : start + 5_000])):
            found[pydantic_core.from_json(raw).get("status", "?") if raw else "(none)"] += 1
    return {s.value: found.pop(s.value, 0) for s in HealthStatus} | dict(found)


def mix(counts: dict[str, int]) -> str:
    """`name n, name n` for a section."""
    return ", ".join(f"{k} {v:,}" for k, v in counts.items())


def status_mix(client: redis.Redis) -> dict[str, int]:
    """Syncs per sync status (active / disabled)."""
    return {s.value: int(client.zcard(Indexes(PREFIX).key("status", s.value))) for s in SyncStatus}


def due_now(client: redis.Redis, partitions: int, at: float | None = None) -> int:
    """ZCOUNT of every partition's due set up to `at` (default now)."""
    at = time.time() if at is None else at
    pipe = client.pipeline(transaction=False)
    for p in range(partitions):
        pipe.zcount(DueIndex(PREFIX).key(p), "-inf", at)
    return sum(int(n) for n in pipe.execute())


def due_total(client: redis.Redis, partitions: int) -> int:
    pipe = client.pipeline(transaction=False)
    for p in range(partitions):
        pipe.zcard(DueIndex(PREFIX).key(p))
    return sum(int(n) for n in pipe.execute())


def make_due(client: redis.Redis, ids_by_partition: dict[int, list[str]]) -> int:
    """Every given sync due now: ZADD score 0 through DueIndex.schedule_many (what the
    Processor does for the syncs a batch touched)."""
    due = DueIndex(PREFIX)
    n = 0
    for partition, ids in ids_by_partition.items():
        for i in range(0, len(ids), 5_000):
            with client.pipeline(transaction=False) as pipe:
                due.schedule_many(pipe, partition, ids[i : i + 5_000], EVALUATE_NOW)
                pipe.execute()
        n += len(ids)
    return n


Pass = tuple[float, int, int, int, int, "Noise"]


def sweep_passes(
    client: redis.Redis,
    redis_pid: int,
    pop: Populated,
    repeat: int,
    run: Callable[[], int],
    label: str,
) -> list[Pass]:
    """`repeat` timed passes of `run()` until it finds nothing, each after making every
    sync due again: (seconds, evaluated, sweeps, status changes, due before, noise)."""
    passes: list[Pass] = []
    parts = len(pop.ids_by_partition)
    for _ in range(repeat):
        make_due(client, pop.ids_by_partition)
        due_before = due_now(client, parts)
        gc.collect()
        with Noise(redis_pid, *child_pids(os.getpid())) as noise:  # + the workers
            t0 = time.perf_counter()
            evaluated, sweeps = until_empty(run)
            seconds = time.perf_counter() - t0
        changes = int(client.xlen(Outbox(PREFIX).key))
        client.delete(Outbox(PREFIX).key)
        passes.append((seconds, evaluated, sweeps, changes, due_before, noise))
        print(
            f"sweep, all due ({label}): {evaluated:,} syncs in {seconds:.2f}s = "
            f"{evaluated / seconds:,.0f} syncs/s ({sweeps} sweeps, {changes:,} status "
            f"changes, {due_before:,} due before)",
            flush=True,
        )
    return passes


def median_pass(passes: list[Pass]) -> Pass:
    return sorted(passes, key=lambda x: x[1] / x[0])[len(passes) // 2]


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[k]


def update_results(name: str, section: str, table_row: str) -> None:
    """Replaces this benchmark's section of bench/RESULTS.md (appending it the first time)
    and adds its row to the table at the top if missing; leaves everything else alone."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{section.rstrip()}\n{end}"
    text_ = RESULTS.read_text() if RESULTS.exists() else core.RESULTS_HEADER
    if start in text_ and end in text_:
        head, rest = text_.split(start, 1)
        text_ = head + block + rest.split(end, 1)[1]
    else:
        text_ = text_.rstrip() + "\n\n" + block + "\n"
    lead = f"| {name} |"
    if not any(line.startswith(lead) for line in text_.splitlines()):
        lines = text_.splitlines(keepends=True)
        last_row = max(i for i, line in enumerate(lines) if line.startswith("| ") and i < 20)
        lines.insert(last_row + 1, table_row + "\n")
        text_ = "".join(lines)
    RESULTS.write_text(text_)


def header(command: str) -> tuple[str, str, str]:
    """(date, machine line, code line) as bench/core.py prints them."""
    code, code_hash = core.source_state()
    info = core.machine()
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = (
        f"nproc {info['nproc']}, memory {info['memory']}, CPU {info['cpu']}, "
        f"Linux {info['kernel']}; Python {info['python']}; redis-server {info['redis-server']}"
    )
    return date, machine, f"{code}; sources sha256 {code_hash}"


def sources_changed(code_line: str) -> str:
    """A note (and a warning on stderr) when consumers/ or monitor/ changed during the run:
    the modules were imported at the start, so the numbers are for the hash in `code_line`."""
    now = core.source_state()[1]
    if now in code_line:
        return ""
    print(
        "WARNING: sources changed on disk during the run; the numbers are for the hash "
        "loaded at start",
        file=sys.stderr,
    )
    return " (sources changed on disk during the run; the numbers are for this hash)"


def cpu_ticks() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq) / hz, steal / hz


def proc_cpu(pid: int) -> float:
    """utime + stime of a process, seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Noise:
    """CPU the rest of the machine used while a timed part ran: what else competed with it.
    Counts everything except this process and the given pids (e.g. our redis-server)."""

    def __init__(self, *pids: int) -> None:
        self.pids = pids

    def __enter__(self) -> Noise:
        self.t0 = time.perf_counter()
        self.busy0, self.steal0 = cpu_ticks()
        self.own0 = time.process_time() + sum(proc_cpu(p) for p in self.pids)
        return self

    def __exit__(self, *exc: Any) -> None:
        busy, steal = cpu_ticks()
        own = time.process_time() + sum(proc_cpu(p) for p in self.pids)
        self.wall = time.perf_counter() - self.t0
        self.own = own - self.own0
        self.other = max(0.0, busy - self.busy0 - self.own)
        self.steal = steal - self.steal0

    @property
    def disturbed(self) -> bool:
        """Too much else ran (only judged over >= 1 s: /proc/stat counts 10 ms ticks)."""
        return self.wall >= 1 and self.other / self.wall > DISTURBED

    def line(self) -> str:
        if self.wall < 1:
            return f"not measurable ({self.wall * 1000:,.0f} ms is too short for 10 ms ticks)"
        return (
            f"this process + redis-server {self.own / self.wall:.0%} of a core, everything "
            f"else {self.other / self.wall:.0%}, steal {self.steal / self.wall:.0%}"
        )


# -- profile ---------------------------------------------------------------------------------

# (path suffix, function, label): cumulative time of each, as a share of the whole sweep.
# They nest (e.g. evaluate inside stage inside _stage_chunk), so the shares do not add up.
FUNCTIONS: list[tuple[str, str, str]] = [
    ("monitor/engine.py", "sweep", "HealthEngine.sweep (everything)"),
    ("monitor/engine.py", "_stage_chunk", "  _stage_chunk (one WATCHed transaction per chunk)"),
    ("monitor/store/syncs.py", "parse_many", "    parse views (SyncViews.parse_many)"),
    ("monitor/store/syncs.py", "parse_fields", "    parse views (SyncViews.parse_fields)"),
    ("monitor/store/codec.py", "unpack", "      of which inflating (codec.unpack)"),
    ("monitor/store/health.py", "parse", "    parse stored health (HealthViews.parse)"),
    ("monitor/store/health.py", "parse_last", "    parse stored health (HealthViews.parse_last)"),
    ("monitor/store/providers.py", "all", "    ProviderViews.all (per chunk)"),
    ("monitor/engine.py", "stage", "    stage (per sync: evaluate + store + schedule)"),
    ("monitor/engine.py", "_stage", "    _stage (per sync: assess + store + schedule)"),
    ("monitor/health.py", "evaluate", "      health.evaluate"),
    ("monitor/health.py", "assess", "      health.assess"),
    ("monitor/health.py", "checks", "        of which checks (7 rules)"),
    ("monitor/rules.py", "rule_verdicts", "        of which verdicts (7 rules, no messages)"),
    ("monitor/health.py", "next_deadline", "      health.next_deadline"),
    ("monitor/engine.py", "row_of", "      row_of (metrics row)"),
    ("monitor/store/health.py", "put", "      HealthViews.put (serialize + queue SET)"),
    ("monitor/store/health.py", "dump", "      HealthViews.dump (serialize)"),
    ("monitor/engine.py", "change_event", "      change_event (status changes only)"),
    ("monitor/store/indexes.py", "update", "      Indexes.update (status changes only)"),
    ("monitor/store/indexes.py", "move_health", "      Indexes.move_health"),
    ("monitor/store/due.py", "schedule", "      DueIndex.schedule (queue ZADD/ZREM)"),
    ("monitor/engine.py", "queue", "    Writes.queue (a chunk's writes, grouped by key)"),
    ("redis/client.py", "execute", "  redis-py Pipeline.execute (round trips, all)"),
]


def cumulative(stats: pstats.Stats, suffix: str, name: str) -> float:
    """Cumulative seconds of every function matching (file suffix, name)."""
    table: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = 0.0
    for (path, _, func), (_, _, _, ct, _) in table.items():
        if func == name and path.replace("\\", "/").endswith(suffix):
            total += ct
    return total


def own_c(stats: pstats.Stats, fragment: str) -> float:
    """Own time of C functions whose name contains `fragment`."""
    table: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    return float(sum(v[2] for k, v in table.items() if k[0] == "~" and fragment in k[2]))


def profile_sweep(
    client: redis.Redis, ids_by_partition: dict[int, list[str]], n: int, limit: int
) -> tuple[pstats.Stats, int, float]:
    """Makes an evenly spread slice of `n` syncs due and cProfiles sweeping it."""
    total = sum(len(v) for v in ids_by_partition.values())
    every = max(1, total // n)
    sliced = {p: ids[::every] for p, ids in ids_by_partition.items()}
    make_due(client, sliced)
    engine = HealthEngine(PREFIX, ThresholdBook(Thresholds()))
    parts = range(len(ids_by_partition))
    profiler = cProfile.Profile()
    t0 = time.perf_counter()
    profiler.enable()
    evaluated, _ = until_empty(lambda: engine.sweep(client, parts, limit=limit))
    profiler.disable()
    return pstats.Stats(profiler), evaluated, time.perf_counter() - t0


def called(stats: pstats.Stats, suffix: str, name: str) -> bool:
    """Whether the profiled code called this function at all (the code may have changed)."""
    table: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    return any(func == name and path.replace("\\", "/").endswith(suffix) for path, _, func in table)


def profile_rows(stats: pstats.Stats) -> list[tuple[str, float]]:
    rows = [(label, cumulative(stats, s, f)) for s, f, label in FUNCTIONS if called(stats, s, f)]
    rows += [
        ("pydantic validate (C, own time: view + health parsing)", own_c(stats, "validate_")),
        ("pydantic to_json / model_dump_json (C, own time)", own_c(stats, "to_json")),
        ("pydantic_core.from_json (C, own time)", own_c(stats, "from_json")),
        ("zstd/zlib decompress of stored views (C, own time)", own_c(stats, "decompress")),
        ("socket recv/send (C, own time)", own_c(stats, "recv") + own_c(stats, "send")),
    ]
    return rows


def write_profile(stats: pstats.Stats, evaluated: int, seconds: float) -> str:
    rows = profile_rows(stats)
    total = rows[0][1] or 1.0
    width = max(len(label) for label, _ in rows)
    lines = [f"{'function (cumulative; nested, so shares overlap)':<{width}}  seconds  share"]
    lines += [f"{label:<{width}}  {s:7.3f}  {s / total:5.1%}" for label, s in rows]
    table = "\n".join(lines)
    buf = StringIO()
    buf.write(
        f"cProfile of HealthEngine.sweep over all partitions until empty, {evaluated:,} syncs "
        f"due (an even slice of the fleet); {seconds:.3f} s under the profiler "
        f"({evaluated / seconds:,.0f} syncs/s)\n\n{table}\n\n"
    )
    for order in ("cumulative", "tottime"):
        buf.write(f"=== top 30 by {order} ===\n")
        stats.stream = buf  # type: ignore[attr-defined]
        stats.sort_stats(order).print_stats(30)
    OUT.mkdir(parents=True, exist_ok=True)
    PROFILE_OUT.write_text(re.sub(r"[ \t]+\n", "\n", buf.getvalue()))
    return table


# -- main ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--syncs", type=int, default=100_000, help="syncs in the simulated fleet")
    p.add_argument("--events", type=int, default=300_000, help="messages in the history")
    p.add_argument("--step", type=float, default=1.0, help="seconds between simulated events")
    p.add_argument("--seed", type=int, default=1, help="simulator seed")
    p.add_argument("--batch", type=int, default=1_000, help="messages per Processor batch")
    p.add_argument("--partitions", type=int, default=6, help="partitions of the topic")
    p.add_argument(
        "--limit", type=int, default=10_000, help="sweep limit per partition (the tick's default)"
    )
    p.add_argument("--profile-syncs", type=int, default=10_000, help="cProfile slice size")
    p.add_argument("--ticks", type=int, default=200, help="idle ticks to time")
    p.add_argument(
        "--workers", type=int, default=Settings().health_workers,
        help="health worker processes (SYNCMON_HEALTH_WORKERS; default: its default)",
    )  # fmt: skip
    p.add_argument("--repeat", type=int, default=3, help="all-due sweeps (median reported)")
    p.add_argument("--no-results", action="store_true", help="do not update bench/RESULTS.md")
    args = p.parse_args(argv)
    sizes = (args.syncs, args.events, args.batch, args.partitions, args.limit, args.ticks)
    if min(*sizes, args.repeat) < 1:
        p.error("sizes must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    command = shlex.join([".venv/bin/python", "bench/health.py", *argv])
    date, machine, code = header(command)
    gc.collect()
    tune_gc()  # as `syncmon run` does at start-up
    parts = args.partitions
    server = RedisServer().start()
    try:
        client = redis.Redis.from_url(server.url)
        pop = populate(
            client, args.syncs, args.events, step=args.step, seed=args.seed,
            partitions=parts, batch=args.batch, limit=args.limit,
        )  # fmt: skip
        gc.collect()
        mix_before = health_mix(client, pop.ids_by_partition)
        statuses = status_mix(client)
        with_deadline = due_total(client, parts)

        # -- sweep, all due (repeated: the figure varies by +-15% from run to run) ------
        # As `syncmon run` does it: the scheduler's tick, with its worker processes.
        engine = HealthEngine(PREFIX, ThresholdBook(Thresholds()))
        settings = Settings(redis_url=server.url, redis_prefix=PREFIX)
        workers = SweepWorkers(settings, args.workers) if args.workers > 0 else None
        runner = HealthScheduler(
            engine, client, lambda: frozenset(range(parts)), 1.0, workers=workers
        )
        if workers is not None:
            workers.start()
            workers.wait_started()
        try:
            passes = sweep_passes(client, server.pid, pop, args.repeat, runner.tick, "scheduler")
            inline = sweep_passes(
                client, server.pid, pop, args.repeat,
                lambda: engine.sweep(client, range(parts), args.limit), "in process",
            )  # fmt: skip
        finally:
            if workers is not None:
                workers.stop()
        rates = [e / sec for sec, e, *_ in passes]
        sweep_seconds, evaluated, sweeps, changes, due_before, sweep_noise = median_pass(passes)
        sweep_rate = evaluated / sweep_seconds
        inline_rates = [e / sec for sec, e, *_ in inline]
        inline_seconds, inline_evaluated, *_ = median_pass(inline)
        made_due = pop.syncs
        left = due_now(client, parts)
        mix_after = health_mix(client, pop.ids_by_partition)

        # -- idle tick -------------------------------------------------------------------
        gc.collect()
        scheduler = HealthScheduler(
            HealthEngine(PREFIX, ThresholdBook(Thresholds())),
            client,
            lambda: frozenset(range(parts)),
            interval=1.0,
            metrics=ProcessMetrics(),
        )
        idle_due = due_now(client, parts)
        idle_scheduled = due_total(client, parts)
        firsts: list[Any] = [
            client.zrange(DueIndex(PREFIX).key(p), 0, 0, withscores=True) for p in range(parts)
        ]
        soonest: float | None = min((float(s) for rows in firsts for _, s in rows), default=None)
        tick_ms: list[float] = []
        tick_evaluated = Counter[int]()
        with Noise(server.pid) as tick_noise:
            for _ in range(args.ticks):
                t0 = time.perf_counter()
                done = scheduler.tick()
                tick_ms.append((time.perf_counter() - t0) * 1000)
                tick_evaluated[done] += 1
        ticks_ended = time.time()
        idle_due_after = due_now(client, parts, ticks_ended)
        tick_median = statistics.median(tick_ms)
        tick_p99 = percentile(tick_ms, 99)
        print(
            f"idle tick: median {tick_median:.3f} ms, p99 {tick_p99:.3f} ms, max "
            f"{max(tick_ms):.3f} ms over {args.ticks} ticks ({idle_due} due before)",
            flush=True,
        )

        # -- profile -------------------------------------------------------------------
        stats, prof_n, prof_seconds = profile_sweep(
            client, pop.ids_by_partition, args.profile_syncs, args.limit
        )
        client.delete(Outbox(PREFIX).key)
        profile_table = write_profile(stats, prof_n, prof_seconds)
        used = int(client.info("memory")["used_memory"])
    finally:
        server.stop()

    changed = sources_changed(code)
    noises = [(f"sweep {i + 1}", p[5]) for i, p in enumerate(passes + inline)]
    noises.append(("ticks", tick_noise))
    disturbed = [f"{what} ({n.other / n.wall:.0%} of a core)" for what, n in noises if n.disturbed]
    warning = (
        f"\n**Disturbed run:** other processes used CPU during {' and '.join(disturbed)}; "
        "re-run on a quiet machine.\n"
        if disturbed
        else ""
    )
    ok = {True: "met", False: "NOT met"}
    soon = f"{soonest - ticks_ended:+,.1f} s from the last tick" if soonest is not None else "none"
    evaluated_ticks = ", ".join(
        f"{n} evaluated: {c} ticks" for n, c in sorted(tick_evaluated.items())
    )
    section = f"""## health: sweep with every sync due, and an idle tick

Command: `{command}` (run from the repository root)
Date: {date}
Machine: {machine} (private instance, persistence off, loopback TCP)
Code: {code}{changed}
{warning}
Load (not timed): `history(syncs={args.syncs:,}, events={args.events:,}, seed={args.seed}, \
step_seconds={args.step:g})` ending at the run time ({pop.binary:,} binary mode), \
{parts} partitions by murmur2(key), through `Processor.process` in batches of \
{args.batch:,} ({pop.generate_seconds:.0f} s to generate, {pop.load_seconds:.0f} s to load = \
{pop.events / pop.load_seconds:,.0f} events/s). Then every sync evaluated once (its first \
evaluation: {pop.first_evaluated:,} syncs in {pop.first_eval_seconds:.1f} s = \
{pop.first_evaluated / pop.first_eval_seconds:,.0f} syncs/s, each a status change with its \
outbox event; outbox dropped after). {pop.syncs:,} live syncs ({mix(statuses)}); health: \
{mix(mix_before)}; {with_deadline:,} had a future deadline. Event types: \
{mix(pop.types)}. Benchmark process: `tune_gc()` as `syncmon run`.

| metric | value | target |
|---|---|---|
| sweep, all due, as `syncmon run` does it: `HealthScheduler.tick()` (sweep of the owned \
partitions, {args.workers} worker processes as `SYNCMON_HEALTH_WORKERS` by default) repeated \
until it finds nothing; {args.repeat} passes, each after making every sync due again \
| {sweep_rate:,.0f} syncs/s, the median pass (all passes: \
{" / ".join(f"{r:,.0f}" for r in rates)}); median pass: {evaluated:,} evaluations in \
{sweep_seconds:.2f} s, {sweeps} sweeps; {made_due:,} made due = {due_before:,} ZCOUNT due; \
{evaluated - made_due:+,} evaluations vs. syncs made due: re-evaluated when a next deadline \
fell due between sweeps) \
| >= {SWEEP_TARGET:,} syncs/s ({ok[sweep_rate >= SWEEP_TARGET]}) |
| same, all in this process (`SYNCMON_HEALTH_WORKERS=0`): \
`HealthEngine.sweep(client, range({parts}), limit={args.limit:,})` until it finds nothing \
| {inline_evaluated / inline_seconds:,.0f} syncs/s, the median pass (all passes: \
{" / ".join(f"{r:,.0f}" for r in inline_rates)}) | |
| idle tick: `HealthScheduler.tick()` = `sweep(owned)` + `fan_out`, nothing due, \
{args.ticks} ticks back to back | median {tick_median:.3f} ms, p99 {tick_p99:.3f} ms, max \
{max(tick_ms):.3f} ms | < {TICK_TARGET_MS:g} ms ({ok[tick_p99 < TICK_TARGET_MS]}) |

After the all-due sweep: {changes:,} status changes (time passed since the first \
evaluation), {left} syncs still due; health {mix(mix_after)}. Idle tick: ZCOUNT due up to \
now = {idle_due} before and {idle_due_after} after the ticks, {idle_scheduled:,} syncs \
scheduled in the future (soonest {soon}); evaluations per tick: {evaluated_ticks}. \
Redis used_memory at the end: {used / 1024 / 1024:,.0f} MiB. CPU during the median \
sweep pass: {sweep_noise.line()}; during the ticks: {tick_noise.line()}.

Sweep profile (cProfile, {prof_n:,} syncs due, an even slice of the fleet; \
{prof_n / prof_seconds:,.0f} syncs/s under the profiler, which inflates Python-heavy parts; \
top 30 by cumulative and own time in `bench/out/health_profile.txt`):

```
{profile_table}
```
"""
    print()
    print(section)
    print(f"profile: {PROFILE_OUT.relative_to(ROOT)}")
    if not args.no_results:
        update_results("health", section, TABLE_ROW)
        print(f"results: {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
