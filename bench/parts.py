"""Where one event's time goes in the core, part by part and without Redis, against the budget
the core/baseline target leaves: shows which parts alone already exceed it.

Run from the repository root: `.venv/bin/python bench/parts.py [--events 200000 --syncs 10000]`.
Same log as bench/core.py (same simulator, seed and partitioning). Each part is timed over
every event of the log, in log order, in this one process:

- decode: `consumers.decode.decode` of each message (structured and binary mode);
- fold: `monitor.fold.step` of each decoded event onto the view it left (a dict of views);
- facts JSON: the facts part of the view after each event, as `SyncViews.put_many` dumps it;
- compress: `codec.pack` of that JSON, as `put_many` stores it;
- seed JSON + compress: only for events that changed the seed part (as `put_many` does);
- index entries: `indexes.entries` of the view before and after (the filter-index diff).

The baseline (`json.loads` + one pipelined HSET per event) runs on a private redis-server,
as in bench/core.py, and sets the budget: at a ratio of 0.35 the core has 1 / (0.35 x
baseline rate) seconds per event for everything, Redis included.
"""

from __future__ import annotations

import argparse
import gc
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import core  # bench/core.py: generate, run_baseline, machine, source_state
import health  # bench/health.py: update_results
import redis

from consumers.decode import RawMessage, decode
from monitor.cli import tune_gc
from monitor.events import Envelope
from monitor.fold import Position, View, step
from monitor.services import RedisServer
from monitor.store.codec import FACTS, SEED, pack
from monitor.store.indexes import entries
from monitor.store.syncs import FACTS_PART, STORED_SEED, _seed_changed
from monitor.views import SyncView

NAME = "parts"
TABLE_ROW = (
    "| parts | `.venv/bin/python bench/parts.py [--events 200000 --syncs 10000]` | the core's "
    "per-event cost part by part (decode, fold, facts JSON, compress, index entries) without "
    "Redis, on bench/core.py's log, against the per-event budget a core/baseline ratio of "
    "0.35 leaves (baseline timed on a private redis-server) |"
)
PARTS = (
    "decode",
    "fold",
    "facts JSON",
    "compress (facts)",
    "seed JSON + compress",
    "index entries",
)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--events", type=int, default=200_000, help="messages in the log")
    p.add_argument("--syncs", type=int, default=10_000, help="syncs in the simulated fleet")
    p.add_argument("--repeat", type=int, default=3, help="timed passes (median reported)")
    p.add_argument("--no-results", action="store_true", help="do not update bench/RESULTS.md")
    args = p.parse_args(argv)
    # what bench/core.py's generate reads, at its defaults
    args.partitions, args.seed, args.step, args.batch = 6, 1, 1.0, 1_000
    return args


def decode_all(messages: Sequence[RawMessage]) -> tuple[float, list[tuple[RawMessage, Envelope]]]:
    t0 = time.perf_counter()
    out = [(m, decode(m)) for m in messages]  # the simulator writes no unreadable message
    return time.perf_counter() - t0, out


def fold_all(events: Sequence[tuple[RawMessage, Envelope]]) -> float:
    views: dict[str, View | None] = {}
    t0 = time.perf_counter()
    for m, e in events:
        views[e.subject] = step(views.get(e.subject), e, Position(m.partition, m.offset)).view
    return time.perf_counter() - t0


def writes_all(events: Sequence[tuple[RawMessage, Envelope]]) -> dict[str, float]:
    """Folds again (untimed) and times what `put_many` and the index diff do per new view."""
    views: dict[str, View | None] = {}
    spent = dict.fromkeys(PARTS[2:], 0.0)
    clock = time.perf_counter
    for m, e in events:
        old = views.get(e.subject)
        new = step(old, e, Position(m.partition, m.offset)).view
        views[e.subject] = new
        if new is old or not isinstance(new, SyncView):
            continue
        before = old if isinstance(old, SyncView) else None
        t0 = clock()
        facts = new.model_dump_json(include=FACTS_PART, exclude_defaults=True)
        t1 = clock()
        pack(FACTS, facts)
        t2 = clock()
        if before is None or before.deleted != new.deleted or _seed_changed(new, before):
            pack(SEED, new.model_dump_json(include=STORED_SEED, exclude_defaults=True))
        t3 = clock()
        entries(before)
        entries(new)
        t4 = clock()
        spent["facts JSON"] += t1 - t0
        spent["compress (facts)"] += t2 - t1
        spent["seed JSON + compress"] += t3 - t2
        spent["index entries"] += t4 - t3
    return spent


def main(argv: Sequence[str] | None = None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(given)
    command = shlex.join([".venv/bin/python", "bench/parts.py", *given])
    code, code_hash = core.source_state()
    messages = core.generate(args)
    n = len(messages)
    gc.collect()
    tune_gc()  # as `syncmon run` does at start-up
    runs: dict[str, list[float]] = {p: [] for p in PARTS}
    events: list[tuple[RawMessage, Envelope]] = []
    for i in range(args.repeat):
        events = []  # the last pass's events are garbage before this one decodes
        gc.collect()
        seconds, events = decode_all(messages)
        runs["decode"].append(seconds)
        gc.collect()
        runs["fold"].append(fold_all(events))
        gc.collect()
        for part, spent in writes_all(events).items():
            runs[part].append(spent)
        print(f"pass {i + 1}: " + ", ".join(f"{p} {runs[p][-1]:.2f}s" for p in PARTS), flush=True)
    server = RedisServer().start()
    try:
        client = redis.Redis.from_url(server.url)
        baselines = []
        for _ in range(args.repeat):
            client.flushdb()
            baselines.append(core.run_baseline(client, messages, args.batch))
    finally:
        server.stop()
    base_rate = n / statistics.median(baselines)
    budget_us = 1e6 / (core.RATIO_TARGET * base_rate)
    per_event = {p: statistics.median(runs[p]) / n * 1e6 for p in PARTS}
    total = sum(per_event.values())
    rows = "\n".join(
        f"| {p} | {per_event[p]:.1f} µs | {per_event[p] / budget_us:.0%} |" for p in PARTS
    )
    m = core.machine()
    section = f"""## parts: the core's cost per event, part by part, against the 0.35 budget

Command: `{command}` (run from the repository root)
Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC
Machine: nproc {m["nproc"]}, memory {m["memory"]}, CPU {m["cpu"]}, Linux {m["kernel"]}; \
Python {m["python"]}; redis-server {m["redis-server"]} (private instance, for the baseline only)
Code: {code}; sources sha256 {code_hash}

Log: bench/core.py's, {n:,} messages for {args.syncs:,} syncs ({len(events):,} decoded). Each \
part timed over every event in log order, {args.repeat} passes, median per event. Without \
Redis: no round trip, no transaction, no fence or due-index or counter write.

| part (no Redis) | per event | share of the budget |
|---|---|---|
{rows}
| **sum of these parts** | **{total:.1f} µs** | **{total / budget_us:.0%}** |

Baseline (`json.loads` + pipelined HSET, as bench/core.py): {base_rate:,.0f} events/s = \
{1e6 / base_rate:.1f} µs per event (median of {args.repeat}). At the target ratio of \
{core.RATIO_TARGET} the core may spend **{budget_us:.1f} µs per event**, Redis included; \
these parts alone take {total / budget_us:.0%} of that, so the best ratio they allow, with \
Redis free, is {1e6 / total / base_rate:.3f}.
"""
    print(section)
    if not args.no_results:
        health.update_results(NAME, section, TABLE_ROW)
        print(f"results: {core.RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
