"""`/metrics`: one collector reads a snapshot of Redis and renders every metric family.

Per-sync families follow kube-state-metrics: an `_info` series for labels, a 0/1 state set
for the health status, `_timestamp_seconds` for times, and only `sync_id` and `provider` as
labels elsewhere. They are rendered straight to text from one compact row per sync (stored
with its health), since 100,000 syncs make two million samples: building prometheus_client
sample objects for them costs seconds. Process-local metrics (histograms, lag, connectivity)
use prometheus_client in a private registry and are appended.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pydantic_core
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from redis import Redis
from redis.exceptions import RedisError

from monitor import __version__
from monitor.enums import HealthStatus
from monitor.store.base import text
from monitor.store.counters import EventCounters
from monitor.store.health import HealthViews
from monitor.store.indexes import Indexes
from monitor.store.outbox import Outbox
from monitor.store.providers import ProviderViews

CHUNK = 2_000
STATUSES = [s.value for s in HealthStatus]
UNHEALTHY = {HealthStatus.WARN.value, HealthStatus.ERROR.value}
AGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400)
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


@dataclass(frozen=True)
class Selection:
    """Which syncs get per-sync series: `all`, `unhealthy` (warn/error) or `none`."""

    per_sync: str = "all"
    providers_allow: frozenset[str] = frozenset()
    providers_deny: frozenset[str] = frozenset()
    orgs_allow: frozenset[str] = frozenset()
    orgs_deny: frozenset[str] = frozenset()

    def wants(self, status: str, provider: str, org: str) -> bool:
        if self.per_sync == "none":
            return False
        if self.per_sync == "unhealthy" and status not in UNHEALTHY:
            return False
        if (self.providers_allow and provider not in self.providers_allow) or (
            provider in self.providers_deny
        ):
            return False
        return not ((self.orgs_allow and org not in self.orgs_allow) or org in self.orgs_deny)


@dataclass
class ProcessMetrics:
    """Metrics only this process knows; updated by the consumer, scheduler and publisher."""

    registry: CollectorRegistry = field(
        default_factory=lambda: CollectorRegistry(auto_describe=False)
    )

    def __post_init__(self) -> None:
        r = self.registry
        self.event_age = Histogram(
            "syncmon_event_age_seconds", "Event time to apply, per applied event.",
            buckets=AGE_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_duration = Histogram(
            "syncmon_batch_duration_seconds", "Time to write and commit one consumed batch.",
            buckets=DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self.tick_duration = Histogram(
            "syncmon_scheduler_tick_duration_seconds", "Time of one health tick.",
            buckets=DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self.evaluations = Counter(
            "syncmon_health_evaluations", "Syncs evaluated by this process.", registry=r
        )
        self.worker_restarts = Counter(
            "syncmon_health_worker_restarts",
            "Health worker pools replaced after a worker died (that sweep ran in process).",
            registry=r,
        )
        self.lag = Gauge(
            "syncmon_consumer_lag", "Messages behind the end of each owned partition.",
            ["partition"], registry=r,
        )  # fmt: skip
        self.kafka = Gauge("syncmon_kafka_connected", "1 while Kafka answers.", registry=r)
        self.redis = Gauge("syncmon_redis_connected", "1 while Redis answers.", registry=r)
        self.in_group = Gauge(
            "syncmon_consumer_in_group", "1 while the consumer is in its group.", registry=r
        )
        info = Gauge(
            "syncmon_build_info", "Version of syncmon and Python.",
            ["version", "python_version"], registry=r,
        )  # fmt: skip
        info.labels(__version__, platform.python_version()).set(1)

    def set_lag(self, lags: dict[int, int]) -> None:
        """Replaces the lag series, so a partition this process lost leaves no series."""
        self.lag.clear()
        for partition, lag in lags.items():
            self.lag.labels(str(partition)).set(lag)


def _escape(value: Any) -> str:
    s = "" if value is None else str(value)
    if "\\" in s or '"' in s or "\n" in s:
        s = s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return s


MAX_LABEL = 256  # characters of a free-text label value (a sync's name), as ids are bounded


def _label(value: str | None) -> str | None:
    """A name is the producers' free text: cut so one sync cannot bloat every scrape."""
    if value is None or len(value) <= MAX_LABEL:
        return value
    return value[: MAX_LABEL - 1] + "…"


def _num(value: Any) -> str:
    return (
        "NaN" if value is None else repr(float(value)) if isinstance(value, float) else str(value)
    )


@dataclass
class _Family:
    name: str
    kind: str
    help: str
    lines: list[str] = field(default_factory=list)

    def text(self) -> str:
        head = f"# HELP {self.name} {self.help}\n# TYPE {self.name} {self.kind}\n"
        return head + "".join(self.lines)


class SyncmonCollector:
    """Reads the snapshot (a few round trips per 2,000 syncs) and renders the exposition."""

    def __init__(
        self,
        redis: Redis,
        prefix: str,
        selection: Selection,
        process: ProcessMetrics | None = None,
        refresh: Callable[[], None] | None = None,
    ) -> None:
        self.redis = redis
        self.selection = selection
        self.process = process
        self.refresh = refresh
        self.indexes = Indexes(prefix)
        self.healths = HealthViews(prefix)
        self.counters = EventCounters(prefix)
        self.providers = ProviderViews(prefix)
        self.outbox = Outbox(prefix)

    def render(self) -> bytes:
        """The whole exposition at once (tests, benchmarks)."""
        return b"".join(self.chunks())

    def chunks(self) -> Iterator[bytes]:
        """The exposition family by family, so a large one is sent without one more copy.

        With Redis down it is this process's own metrics alone (`syncmon_redis_connected 0`):
        a failed scrape would page for a dead syncmon where Redis is what is down.
        """
        if self.refresh is not None:
            self.refresh()
        try:
            aggregates = self._aggregates()
        except RedisError:
            if self.process is None:
                raise
            self.process.redis.set(0)
            yield generate_latest(self.process.registry)
            return
        yield aggregates.encode()
        try:
            # every read happens before the first per-sync block: no family is cut short
            yield from (block.encode() for block in self._per_sync())
            connected = 1
        except RedisError:
            if self.process is None:
                raise
            connected = 0
        if self.process is not None:
            self.process.redis.set(connected)
            yield generate_latest(self.process.registry)

    def _aggregates(self) -> str:
        r = self.redis
        providers = self.indexes.values(r, "provider")
        pipe = r.pipeline(transaction=False)
        for p in providers:
            for s in STATUSES:
                pipe.scard(self.indexes.health_key(p, s))
        pipe.xlen(self.outbox.key)
        pipe.hget(self.outbox.published_key, "count")
        replies = pipe.execute()
        published = int(replies.pop() or 0)
        pending = int(replies.pop())
        counts = iter(replies)
        syncs = _Family("syncmon_syncs", "gauge", "Syncs by provider and health status.")
        for p in providers:
            for s in STATUSES:
                syncs.lines.append(
                    f'syncmon_syncs{{provider="{_escape(p)}",health="{s}"}} {next(counts)}\n'
                )
        events = _Family(
            "syncmon_events_total", "counter", "Lifecycle events consumed, by type and outcome."
        )
        dead = 0
        for (kind, outcome), n in sorted(self.counters.read(r).items()):
            events.lines.append(
                f'syncmon_events_total{{type="{_escape(kind)}",outcome="{_escape(outcome)}"}} {n}\n'
            )
            dead += n if outcome == "invalid" else 0
        dead_letters = _Family(
            "syncmon_dead_letters_total", "counter", "Messages sent to the dead-letter topic."
        )
        dead_letters.lines.append(f"syncmon_dead_letters_total {dead}\n")
        incidents = _Family(
            "syncmon_provider_incidents_open", "gauge", "Open incidents per provider."
        )
        views = self.providers.all(r)
        # Providers with syncs, and any with an open incident: `provider.*` subjects are the
        # producers' to choose, so one never seen with a sync leaves no series once resolved.
        opened = {p for p, v in views.items() if v.incidents}
        for p in sorted(set(providers) | opened):
            n = len(views[p].incidents) if p in views else 0
            incidents.lines.append(
                f'syncmon_provider_incidents_open{{provider="{_escape(p)}"}} {n}\n'
            )
        outbox = _Family("syncmon_outbox_pending", "gauge", "Health changes not yet published.")
        outbox.lines.append(f"syncmon_outbox_pending {pending}\n")
        sent = _Family(
            "syncmon_health_changes_published_total", "counter",
            "Health changes published to the health topic (all replicas).",
        )  # fmt: skip
        sent.lines.append(f"syncmon_health_changes_published_total {published}\n")
        return "".join(f.text() for f in (syncs, events, dead_letters, incidents, outbox, sent))

    def _ids(self) -> list[str]:
        pipe = self.redis.pipeline(transaction=False)
        for key in self.indexes.all_keys:
            pipe.zrange(key, 0, -1)
        return sorted(text(m) for batch in pipe.execute() for m in batch)

    def _rows(self, ids: list[str]) -> Iterable[tuple[str, dict[str, Any]]]:
        """Every sync's health and row: MGETs of 2,000 keys, all sent in one pipeline."""
        pipe = self.redis.pipeline(transaction=False)
        for start in range(0, len(ids), CHUNK):
            pipe.mget([self.healths.key(i) for i in ids[start : start + CHUNK]])
        raws: list[Any] = [raw for chunk in pipe.execute() for raw in chunk] if ids else []
        from_json = pydantic_core.from_json
        for sync_id, raw in zip(ids, raws, strict=True):
            if raw is not None:
                yield sync_id, from_json(raw)

    def _per_sync(self) -> Iterator[str]:
        if self.selection.per_sync == "none":
            return
        info, status_, since, success, event, ratio, done, fails, cred, check = (
            [] for _ in range(10)
        )  # one list of lines per family, in PER_SYNC order
        wants = self.selection.wants
        for sync_id, h in self._rows(self._ids()):
            row = h.get("m")
            if row is None:
                continue
            status = h.get("status", "")
            provider, org = row.get("p") or "", row.get("o") or ""
            if not wants(status, provider, org):
                continue
            base = f'sync_id="{_escape(sync_id)}",provider="{_escape(provider)}"'
            info.append(
                f'syncmon_sync_info{{{base},org_id="{_escape(org)}",name="{_escape(_label(row.get("n")))}"'
                f',sync_frequency="{_escape(row.get("f"))}"}} 1\n'
            )
            a, b, c, d, e = STATE_VALUES.get(status, ZEROS)
            status_.append(
                f'syncmon_sync_health_status{{{base},status="healthy"}} {a}\n'
                f'syncmon_sync_health_status{{{base},status="initializing"}} {b}\n'
                f'syncmon_sync_health_status{{{base},status="warn"}} {c}\n'
                f'syncmon_sync_health_status{{{base},status="error"}} {d}\n'
                f'syncmon_sync_health_status{{{base},status="paused"}} {e}\n'
            )
            if (t := h.get("in_status_since")) is not None:
                since.append(f"{SINCE}{{{base}}} {t / 1000}\n")
            if (t := row.get("ls")) is not None:
                success.append(f"{SUCCESS}{{{base}}} {t / 1000}\n")
            if (t := row.get("le")) is not None:
                event.append(f"{EVENT}{{{base}}} {t / 1000}\n")
            complete = row.get("bc", 0)
            if complete or row.get("br") is not None:
                ratio.append(f"{RATIO}{{{base}}} {1 if complete else row['br']}\n")
            done.append(f"{DONE}{{{base}}} {complete}\n")
            fails.append(f"{FAILS}{{{base}}} {row.get('cf', 0)}\n")
            cred.append(f"{CRED}{{{base}}} {row.get('cr', 0)}\n")
            # Only checks that are not healthy: a healthy fleet would otherwise add 7 series
            # per sync that say nothing (alerts and dashboards select on status anyway).
            for name, state in (row.get("ck") or {}).items():
                check.append(f'{CHECK}{{{base},check="{name}",status="{state}"}} 1\n')
        lines = (info, status_, since, success, event, ratio, done, fails, cred, check)
        for (name, doc), family in zip(PER_SYNC.values(), lines, strict=True):
            yield f"# HELP {name} {doc}\n# TYPE {name} gauge\n"
            yield "".join(family)
            family.clear()  # let each family go as soon as it is sent


PER_SYNC = {
    "info": ("syncmon_sync_info", "Labels of each sync; always 1."),
    "status": ("syncmon_sync_health_status", "1 for the current health status, else 0."),
    "since": ("syncmon_sync_health_status_since_timestamp_seconds", "When the status began."),
    "success": ("syncmon_sync_last_success_timestamp_seconds", "Time of the last success."),
    "event": ("syncmon_sync_last_event_timestamp_seconds", "Time of the last applied event."),
    "ratio": ("syncmon_sync_backfill_progress_ratio", "Initial backfill progress, 0 to 1."),
    "done": ("syncmon_sync_backfill_completed", "1 once the initial backfill completed."),
    "fails": ("syncmon_sync_consecutive_failures", "Failed runs since the last success."),
    "cred": ("syncmon_sync_credential_failed", "1 while the credential is rejected."),
    "check": ("syncmon_sync_check_status", "1 for each check that is not healthy."),
}
SINCE, SUCCESS, EVENT, RATIO, DONE, FAILS, CRED, CHECK = (
    PER_SYNC[k][0] for k in ("since", "success", "event", "ratio", "done", "fails", "cred", "check")
)
STATE_VALUES = {s: tuple(1 if s == other else 0 for other in STATUSES) for s in STATUSES}
ZEROS = (0, 0, 0, 0, 0)
