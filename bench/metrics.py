"""Benchmark `/metrics`: render time and size at 10,000 and 100,000 syncs, per cardinality mode."""

# Run from the repository root: `.venv/bin/python bench/metrics.py [--sizes 10000 100000]`.
# Each fleet is loaded (not timed) as bench/health.py does it (simulated history through the
# Processor, then every sync evaluated once), on a private redis-server. Then, for each
# SYNCMON_METRICS_PER_SYNC mode (all, unhealthy, none), SyncmonCollector(...).render() is timed
# (median of N, after one warm-up render) and one real HTTP GET /metrics is made through the
# app (create_app(consume=False) under uvicorn on a free port: adds the route, the
# process-local metrics and the transfer). The largest fleet's `all` render is profiled.

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import re
import resource
import shlex
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from io import StringIO
from typing import Any

import redis
import uvicorn
from health import (
    DISTURBED,
    OUT,
    PREFIX,
    RESULTS,
    ROOT,
    Noise,
    Populated,
    header,
    health_mix,
    own_c,
    populate,
    sources_changed,
    update_results,
)

from monitor.app import create_app
from monitor.cli import tune_gc
from monitor.metrics import Selection, SyncmonCollector
from monitor.services import RedisServer, free_port
from monitor.settings import Settings

PROFILE_OUT = OUT / "metrics_profile.txt"
MODES = ("all", "unhealthy", "none")
TARGETS = {("all", 100_000): 1.5, ("none", 100_000): 0.050}  # seconds
TABLE_ROW = (
    "| metrics | `.venv/bin/python bench/metrics.py [--sizes 10000 100000 --repeat 5]` | "
    "`SyncmonCollector.render()` time (median) and `/metrics` size with 10,000 and 100,000 "
    "syncs in each `SYNCMON_METRICS_PER_SYNC` mode (all, unhealthy, none), plus one real "
    "HTTP GET through the app; cProfile of 100k/all in `bench/out/metrics_profile.txt` |"
)


@dataclass(frozen=True, slots=True)
class Render:
    """One fleet size and mode: render times, output size, series, one HTTP GET."""

    syncs: int
    mode: str
    seconds: list[float]
    size: int
    series: int
    per_sync_syncs: int
    http_seconds: float | None
    http_size: int | None
    user: list[float]
    system: list[float]
    faults: list[int]
    other_cpu: float  # share of a core used by other processes during the timed renders

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def count_series(body: bytes) -> tuple[int, int]:
    """(sample lines, syncs with a `syncmon_sync_info` series)."""
    series = info = 0
    for line in body.split(b"\n"):
        if line and not line.startswith(b"#"):
            series += 1
            if line.startswith(b"syncmon_sync_info{"):
                info += 1
    return series, info


class AppServer:
    """The real app (no consumer) under uvicorn in a thread, on a free port."""

    def __init__(self, redis_url: str, mode: str) -> None:
        self.port = free_port()
        settings = Settings(
            redis_url=redis_url,
            redis_prefix=PREFIX,
            metrics_per_sync=mode,
            http_port=self.port,
            log_level="WARNING",
        )
        config = uvicorn.Config(
            create_app(settings, consume=False),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            access_log=False,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> AppServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def get(self) -> tuple[float, int]:
        """One GET /metrics from `curl`, a separate process as Prometheus is: (seconds to the
        whole body, bytes). A client in this process would share its CPU and GIL."""
        out = subprocess.run(
            ["curl", "-sf", "-o", "/dev/null", "-w", "%{time_total} %{size_download}",
             f"http://127.0.0.1:{self.port}/metrics"],
            capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
        seconds, size = out.stdout.split()
        return float(seconds), int(size)


def measure(
    client: redis.Redis, url: str, syncs: int, mode: str, repeat: int, http: bool, redis_pid: int
) -> Render:
    collector = SyncmonCollector(client, PREFIX, Selection(per_sync=mode), process=None)
    body = collector.render()  # warm-up: connections, imports, caches
    times, user, system, faults = [], [], [], []
    noise = Noise(redis_pid)
    with noise:
        for _ in range(repeat):
            del body
            r0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            body = collector.render()
            times.append(time.perf_counter() - t0)
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            user.append(r1.ru_utime - r0.ru_utime)
            system.append(r1.ru_stime - r0.ru_stime)
            faults.append(r1.ru_minflt - r0.ru_minflt)
    series, info = count_series(body)
    http_seconds = http_size = None
    if http:
        with AppServer(url, mode) as app:
            app.get()  # warm-up
            http_seconds, http_size = app.get()
    result = Render(
        syncs, mode, times, len(body), series, info, http_seconds, http_size, user, system,
        faults, noise.other / noise.wall,
    )  # fmt: skip
    print(
        f"{syncs:,} syncs, {mode}: median {result.median * 1000:,.1f} ms "
        f"(min {min(times) * 1000:,.1f}, max {max(times) * 1000:,.1f}), "
        f"{len(body) / 1e6:,.2f} MB, {series:,} series"
        + (f"; HTTP GET {http_seconds * 1000:,.0f} ms" if http_seconds is not None else ""),
        flush=True,
    )
    return result


# (path suffix, function, label); cumulative, nested.
FUNCTIONS = [
    ("monitor/metrics.py", "render", "SyncmonCollector.render (everything)"),
    ("monitor/metrics.py", "chunks", "  chunks (if the code streams: everything below)"),
    ("monitor/metrics.py", "_aggregates", "  _aggregates (counts by provider/status, counters)"),
    ("monitor/metrics.py", "_per_sync", "  _per_sync (per-sync families)"),
    ("monitor/metrics.py", "_ids", "    _ids (ZRANGE of every status set + sort)"),
    ("monitor/metrics.py", "_rows", "    _rows (MGET health keys + from_json; generator)"),
    ("monitor/metrics.py", "wants", "    Selection.wants"),
    ("monitor/metrics.py", "_escape", "    _escape"),
    ("monitor/metrics.py", "_num", "    _num (if used)"),
    ("monitor/metrics.py", "_seconds", "    _seconds (if used)"),
    ("monitor/metrics.py", "text", "    _Family.text (join lines; if used)"),
]


def cumulative(stats: pstats.Stats, suffix: str, name: str) -> float:
    table: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    return float(
        sum(
            v[3]
            for (path, _, func), v in table.items()
            if func == name and path.replace("\\", "/").endswith(suffix)
        )
    )


def called(stats: pstats.Stats, suffix: str, name: str) -> bool:
    """Whether the profiled code called this function at all (the code may have changed)."""
    table: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    return any(func == name and path.replace("\\", "/").endswith(suffix) for path, _, func in table)


def own(stats: pstats.Stats, suffix: str, name: str) -> float:
    table: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    return float(
        sum(
            v[2]
            for (path, _, func), v in table.items()
            if func == name and path.replace("\\", "/").endswith(suffix)
        )
    )


def commandstats(client: redis.Redis) -> list[tuple[str, int, int]]:
    """(command, calls, server-side microseconds) from INFO commandstats, busiest first."""
    info: dict[str, Any] = client.info("commandstats")
    rows = [
        (name.removeprefix("cmdstat_"), int(v["calls"]), int(v["usec"]))
        for name, v in info.items()
        if name not in ("cmdstat_config", "cmdstat_info")
    ]
    return sorted(rows, key=lambda r: -r[2])


def profile_render(client: redis.Redis, mode: str, buf: StringIO) -> tuple[str, float]:
    """cProfile of one render (after a warm-up), plus Redis's own time per command."""
    collector = SyncmonCollector(client, PREFIX, Selection(per_sync=mode), process=None)
    collector.render()
    client.config_resetstat()
    profiler = cProfile.Profile()
    t0 = time.perf_counter()
    profiler.enable()
    collector.render()
    profiler.disable()
    seconds = time.perf_counter() - t0
    redis_rows = commandstats(client)
    stats = pstats.Stats(profiler)
    rows = [(label, cumulative(stats, s, f)) for s, f, label in FUNCTIONS if called(stats, s, f)]
    rows += [
        ("_per_sync own time (loop, f-strings, dict.get, list.append)",
         own(stats, "monitor/metrics.py", "_per_sync")),
        ("_rows own time (generator loop)", own(stats, "monitor/metrics.py", "_rows")),
        ("pydantic_core.from_json (C, own time)", own_c(stats, "from_json")),
        ("list.append (C, own time)", own_c(stats, "'append'")),
        ("dict.get (C, own time)", own_c(stats, "'get' of 'dict'")),
        ("str/bytes.join (C, own time)", own_c(stats, "'join'")),
        ("socket recv (C, own time)", own_c(stats, "recv")),
        ("bytes.decode (C, own time)", own_c(stats, "'decode'")),
        ("str.encode (C, own time)", own_c(stats, "'encode'")),
        ("sorted (C, own time)", own_c(stats, "sorted")),
    ]  # fmt: skip
    if mode == "none":  # no per-sync part: only the aggregates are worth listing
        rows = [r for r in rows if "_aggregates" in r[0] or "render" in r[0]]
        rows.append(("socket recv (C, own time)", own_c(stats, "recv")))
    total = rows[0][1] or 1.0
    width = max(len(label) for label, _ in rows)
    heading = "function (cumulative unless own; nested, shares overlap)"
    width = max(width, len(heading))
    lines = [f"{heading:<{width}}  seconds  share"]
    lines += [f"{label:<{width}}  {s:7.3f}  {s / total:5.1%}" for label, s in rows]
    redis_total = sum(us for _, _, us in redis_rows)
    lines.append("")
    lines.append(
        f"redis-server's own time for the render (INFO commandstats): {redis_total / 1000:,.1f} ms"
    )
    lines += [
        f"  {name:<12} {calls:>7,} calls  {us / 1000:8.1f} ms" for name, calls, us in redis_rows[:6]
    ]
    table = "\n".join(lines)
    buf.write(
        f"##### cProfile of one SyncmonCollector.render() with per_sync={mode}; {seconds:.3f} s "
        f"under the profiler\n\n{table}\n\n"
    )
    for order in ("cumulative", "tottime"):
        buf.write(f"=== top 30 by {order} ===\n")
        stats.stream = buf  # type: ignore[attr-defined]
        stats.sort_stats(order).print_stats(30)
    return table, seconds


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000], help="fleet sizes")
    p.add_argument("--events-per-sync", type=int, default=3, help="history length per sync")
    p.add_argument("--step", type=float, default=1.0, help="seconds between simulated events")
    p.add_argument("--seed", type=int, default=1, help="simulator seed")
    p.add_argument("--repeat", type=int, default=5, help="timed renders per case (median)")
    p.add_argument("--no-http", action="store_true", help="skip the HTTP GET through the app")
    p.add_argument("--no-results", action="store_true", help="do not update bench/RESULTS.md")
    args = p.parse_args(argv)
    if min([*args.sizes, args.events_per_sync, args.repeat]) < 1:
        p.error("sizes must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    command = shlex.join([".venv/bin/python", "bench/metrics.py", *argv])
    date, machine, code = header(command)
    gc.collect()
    tune_gc()  # as `syncmon run` does at start-up
    results: list[Render] = []
    fleets: dict[int, tuple[Populated, dict[str, int]]] = {}
    largest = max(args.sizes)
    profiles: dict[str, tuple[str, float]] = {}
    buf = StringIO()
    server = RedisServer().start()
    try:
        client = redis.Redis.from_url(server.url)
        for size in sorted(args.sizes):
            pop = populate(
                client, size, size * args.events_per_sync, step=args.step, seed=args.seed
            )
            gc.collect()
            fleets[size] = (pop, health_mix(client, pop.ids_by_partition))
            for mode in MODES:
                results.append(
                    measure(
                        client, server.url, size, mode, args.repeat, not args.no_http, server.pid
                    )
                )
                gc.collect()
            if size == largest:
                for mode in ("all", "none"):
                    profiles[mode] = profile_render(client, mode, buf)
        OUT.mkdir(parents=True, exist_ok=True)
        PROFILE_OUT.write_text(re.sub(r"[ \t]+\n", "\n", buf.getvalue()))
    finally:
        server.stop()

    changed = sources_changed(code)
    disturbed = [r for r in results if sum(r.seconds) >= 1 and r.other_cpu > DISTURBED]
    warning = (
        "\n**Disturbed run:** other processes used CPU during the renders of "
        + ", ".join(f"{r.syncs:,}/{r.mode} ({r.other_cpu:.0%} of a core)" for r in disturbed)
        + "; re-run on a quiet machine.\n"
        if disturbed
        else ""
    )
    ok = {True: "met", False: "NOT met"}
    rows = []
    for r in results:
        target = TARGETS.get((r.mode, r.syncs))
        verdict = f"< {target * 1000:,.0f} ms ({ok[r.median < target]})" if target else ""
        http = (
            f"{r.http_seconds * 1000:,.0f} ms, {r.http_size / 1e6:,.2f} MB"
            if r.http_seconds is not None and r.http_size is not None
            else "-"
        )
        rows.append(
            f"| {r.syncs:,} | {r.mode} | {r.median * 1000:,.1f} ms "
            f"({min(r.seconds) * 1000:,.1f} / {max(r.seconds) * 1000:,.1f}) | "
            f"{statistics.median(r.user) * 1000:,.0f} / {statistics.median(r.system) * 1000:,.0f} "
            f"ms, {statistics.median(r.faults):,.0f} | "
            f"{r.size / 1e6:,.2f} MB ({r.size:,} B) | {r.series:,} | {r.per_sync_syncs:,} | "
            f"{http} | {f'{r.other_cpu:.0%}' if sum(r.seconds) >= 1 else '-'} | {verdict} |"
        )
    fleet_lines = "\n".join(
        f"- {size:,} syncs: {pop.events:,} events loaded in {pop.load_seconds:.0f} s, "
        f"{pop.syncs:,} live syncs; health " + ", ".join(f"{k} {v:,}" for k, v in mix.items())
        for size, (pop, mix) in sorted(fleets.items())
    )
    section = f"""## metrics: `/metrics` render time and size

Command: `{command}` (run from the repository root)
Date: {date}
Machine: {machine} (private instance, persistence off, loopback TCP)
Code: {code}{changed}
{warning}
Fleets (not timed), each loaded as in bench/health.py: `history(syncs=N, \
events={args.events_per_sync}*N, seed={args.seed}, step_seconds={args.step:g})` through \
`Processor.process` in batches of 1,000 over 6 murmur2 partitions, then every sync \
evaluated once by `HealthEngine.sweep`:
{fleet_lines}

Render: `SyncmonCollector(redis, prefix, Selection(per_sync=mode), process=None).render()`, \
one warm-up then the median (min / max) of {args.repeat}, in this process with `tune_gc()`. \
HTTP: one GET /metrics (after a warm-up GET) through `create_app(settings, consume=False)` \
under uvicorn in a thread of the same process, fetched by `curl` (a separate process, \
as Prometheus is), time to the whole body; it \
adds the route, the process-local metrics and the transfer. \
"syncs with series" counts `syncmon_sync_info` lines. "Other processes' CPU" is what the \
rest of the machine used during the timed renders, in /proc/stat ticks (shown only when the \
renders took >= 1 s in all).

| syncs | per-sync mode | render, median (min / max) | CPU user / system, minor page \
faults (medians per render) | body size | series | syncs with series | HTTP GET /metrics \
| other processes' CPU during the renders | target |
|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Profiles of one render at {largest:,} syncs (cProfile, which inflates Python-heavy parts; \
Redis's own time from INFO commandstats, reset before the render; top 30 by cumulative and \
own time in `bench/out/metrics_profile.txt`).

`all` ({profiles["all"][1]:.2f} s under the profiler):

```
{profiles["all"][0]}
```

`none` ({profiles["none"][1] * 1000:.0f} ms under the profiler):

```
{profiles["none"][0]}
```
"""
    print()
    print(section)
    print(f"profile: {PROFILE_OUT.relative_to(ROOT)}")
    if not args.no_results:
        update_results("metrics", section, TABLE_ROW)
        print(f"results: {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
