"""`syncmon run | dev | simulate | rebuild`: the operator's entry points."""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import sys
from types import FrameType

import uvicorn

from monitor.settings import Settings, load_settings


def tune_gc() -> None:
    """Fewer collections: the fold allocates many short-lived objects beside a large view cache.

    With the defaults a full collection runs every few batches and scans every cached view;
    measured in bench/core.py this setting alone takes the core from 6,600 to 9,100 events/s.
    """
    gc.freeze()  # what start-up allocated (modules, settings) is never garbage
    gc.set_threshold(100_000, 50, 1000)


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    quiet = max(logging.WARNING, logging.getLevelName(level))
    for noisy in ("kafka", "apscheduler"):  # a line per fetch or per tick says nothing useful
        logging.getLogger(noisy).setLevel(quiet)
    transport = logging.getLogger("kafka.net.transport")
    if not any(isinstance(f, ClosedSocketRead) for f in transport.filters):
        transport.addFilter(ClosedSocketRead())


class ClosedSocketRead(logging.Filter):
    """Drops kafka-python 3.0's traceback when its IO loop reads a socket that `close()` has
    already dropped (`'NoneType' object has no attribute 'recv'`): a race inside the client
    while it shuts down, harmless, that would otherwise end a clean SIGTERM with an ERROR."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (isinstance(error, AttributeError) and "'recv'" in str(error))


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def serve(settings: Settings) -> None:
    """Runs consumer, scheduler and HTTP in this process until SIGTERM or Ctrl-C."""
    from monitor.app import create_app

    # uvicorn shuts down gracefully, then re-raises the signal: that re-raise lands here,
    # so a clean shutdown exits 0 instead of dying by the signal.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_cleanly)

    uvicorn.run(
        create_app(settings),
        host=settings.http_host,
        port=settings.http_port,
        log_level=settings.log_level.lower(),
        access_log=False,
        timeout_graceful_shutdown=30,
    )


def cmd_run(args: argparse.Namespace) -> int:
    from monitor.app import RedisCredentialsError, check_redis

    settings = load_settings()
    configure_logging(settings.log_level)
    try:
        check_redis(settings)  # here, so refused credentials end in one line, not a traceback
    except RedisCredentialsError:
        return 2  # check_redis logged why
    tune_gc()
    serve(settings)
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from consumers.kafka import ensure_topics
    from monitor import simulate

    settings = load_settings()
    configure_logging(settings.log_level)
    bootstrap = args.bootstrap or settings.kafka_bootstrap_servers
    topic = args.topic or settings.kafka_topic
    if args.create_topic:
        ensure_topics(
            bootstrap, {topic: settings.kafka_topic_partitions}, settings.kafka_security()
        )
    sent = simulate.run(
        bootstrap_servers=bootstrap,
        topic=topic,
        syncs=args.syncs,
        rate=args.rate,
        seed=args.seed,
        duration=args.duration,
        max_events=args.max_events,
        binary_ratio=args.binary_ratio,
        stop=None,
        security=settings.kafka_security(),
    )
    print(f"sent {sent} events to {topic} on {bootstrap}")
    return 0


def cmd_rebuild(args: argparse.Namespace) -> int:
    from consumers.rebuild import Rebuild, RebuildError
    from monitor.settings import redis_client

    settings = load_settings()
    configure_logging(settings.log_level)
    tune_gc()
    try:
        report = Rebuild(settings, redis_client(settings), args.scratch_db).run()
    except RebuildError as exc:
        print(f"syncmon rebuild: {exc}", file=sys.stderr)
        return 1
    print(
        f"rebuilt {report.events:,} events in {report.seconds:.1f}s into database "
        f"{report.scratch_db}; swapped it in as database {report.live_db} "
        f"({report.carried} health and outbox keys carried over)",
        file=sys.stderr,
    )
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from monitor.dev import run_dev

    return run_dev(syncs=args.syncs, rate=args.rate, port=args.port, seed=args.seed)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="syncmon", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="consume, evaluate and serve (settings from SYNCMON_*)")
    run.set_defaults(func=cmd_run)

    sim = sub.add_parser("simulate", help="produce realistic lifecycle events to a broker")
    sim.add_argument("--bootstrap", help="default: SYNCMON_KAFKA_BOOTSTRAP_SERVERS")
    sim.add_argument("--topic", help="default: SYNCMON_KAFKA_TOPIC")
    sim.add_argument("--syncs", type=int, default=50, help="number of simulated syncs")
    sim.add_argument("--rate", type=float, default=20.0, help="events per second at most")
    sim.add_argument("--seed", type=int, default=None, help="for a reproducible fleet")
    sim.add_argument("--duration", type=float, default=None, help="seconds, default: forever")
    sim.add_argument("--max-events", type=int, default=None)
    sim.add_argument("--binary-ratio", type=float, default=0.1, help="share in binary mode")
    sim.add_argument(
        "--no-create-topic", dest="create_topic", action="store_false", help="topic exists"
    )
    sim.set_defaults(func=cmd_simulate)

    rebuild = sub.add_parser(
        "rebuild",
        help="replay the topic from its first offset into a scratch database, then swap it in",
    )
    rebuild.add_argument(
        "--scratch-db",
        type=int,
        default=None,
        help="an empty Redis database to build in (default: the live one + 1)",
    )
    rebuild.set_defaults(func=cmd_rebuild)

    dev = sub.add_parser("dev", help="everything local: broker, Redis, simulator, syncmon")
    dev.add_argument("--syncs", type=int, default=40)
    dev.add_argument("--rate", type=float, default=30.0)
    dev.add_argument("--port", type=int, default=8000, help="HTTP port (0: any free port)")
    dev.add_argument("--seed", type=int, default=None)
    dev.set_defaults(func=cmd_dev)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
