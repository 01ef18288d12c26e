"""Builders for lifecycle events in tests: structured and binary CloudEvents as Kafka records."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

# Health depends on the wall clock, so test events happen "just now": `recent()` moves T0.
T0 = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=7)


def recent(minutes_ago: float = 7) -> datetime:
    """Re-bases event times so `minute=0` is this many minutes before now."""
    global T0
    T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=minutes_ago)
    return T0


def iso(minute: float) -> str:
    """The API's rendering of T0 + minutes."""
    return (T0 + timedelta(minutes=minute)).isoformat().replace("+00:00", "Z")


_ids = itertools.count(1)


def cloudevent(
    type_: str,
    subject: str,
    data: Any = None,
    *,
    minute: float = 0,
    sequence: int | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """A structured-mode CloudEvent as a dict."""
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": event_id or f"evt-{next(_ids)}",
        "source": "//tests",
        "type": type_,
        "time": iso(minute),
        "subject": subject,
        "datacontenttype": "application/json",
        "data": {} if data is None else data,
    }
    if sequence is not None:
        event["sequence"] = sequence
    return event


def encode(event: dict[str, Any]) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """(key, value, headers) of a structured-mode record."""
    return event["subject"].encode(), json.dumps(event).encode(), []


def encode_binary(event: dict[str, Any]) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """(key, value, headers) of a binary-mode record: attributes in ce_ headers."""
    headers = [
        (f"ce_{k}", str(v).encode())
        for k, v in event.items()
        if k not in ("data", "datacontenttype")
    ]
    headers.append(("content-type", b"application/json"))
    return event["subject"].encode(), json.dumps(event["data"]).encode(), headers


def sync_created(sync_id: str, provider: str = "stripe", **fields: Any) -> dict[str, Any]:
    """The data of a `sync.created`, seed-shaped, with a raw secret the monitor must mask."""
    data: dict[str, Any] = {
        "provider": provider,
        "stream_id": f"stream-{sync_id}",
        "name": f"Choam Corp - {provider} {sync_id}",
        "status": "active",
        "org_id": fields.pop("org_id", "org-1"),
        "collection_ids": [f"{provider}:customer", f"{provider}:invoice"],
        "rate_limit": {"allowed_requests": 1000, "interval": 60, "max_concurrent_requests": 0},
        "credential_id": f"cred-{sync_id}",
        "credential": {
            "id": f"cred-{sync_id}",
            "provider": provider,
            "properties": {"kind": "stripe_key", "secret": "sk_live_PLANTED_SECRET", "test": True},
            "oauth_app_id": None,
            "metadata": {"custom_credential_property": 42},
        },
        "max_age_days": 365,
        "sync_frequency": "continuous",
        "metadata": {"custom_property": 42},
    }
    data.update(fields)
    return data


def lifecycle(sync_id: str, provider: str = "stripe", start: float = 0) -> list[dict[str, Any]]:
    """A sync's whole healthy start: created, backfilled, one run."""
    created = sync_created(sync_id, provider)
    cols = created["collection_ids"]
    events = [cloudevent("sync.created", sync_id, created, minute=start, sequence=1)]
    events.append(cloudevent("sync.backfill.started", sync_id, {}, minute=start + 1, sequence=2))
    for i, c in enumerate(cols):
        events.append(
            cloudevent(
                "sync.backfill.collection_completed",
                sync_id,
                {"collection_id": c, "records_synced": 100 * (i + 1)},
                minute=start + 2 + i,
                sequence=3 + i,
            )
        )
    seq = 3 + len(cols)
    events.append(
        cloudevent("sync.run.started", sync_id, {"run_id": "r1"}, minute=start + 5, sequence=seq)
    )
    events.append(
        cloudevent(
            "sync.run.succeeded",
            sync_id,
            {"run_id": "r1", "records_upserted": 5, "records_deleted": 0, "duration_ms": 900},
            minute=start + 6,
            sequence=seq + 1,
        )
    )
    return events


def expected_fold(
    records: list[Any], in_log_order: bool = True
) -> tuple[dict[str, Any], Counter[tuple[str, str]]]:
    """The pure fold of records (RawMessage) in log order (or as given): the truth a live run
    must equal."""
    from consumers.decode import DecodeError, decode, type_label
    from monitor.fold import Position, step

    views: dict[str, Any] = {}
    counts: Counter[tuple[str, str]] = Counter()
    ordered = sorted(records, key=lambda r: (r.partition, r.offset)) if in_log_order else records
    for r in ordered:
        try:
            event = decode(r)
        except DecodeError as exc:
            counts[(exc.type_label, "invalid")] += 1
            continue
        key = ("provider:" if event.type.startswith("provider.") else "sync:") + event.subject
        result = step(views.get(key), event, Position(r.partition, r.offset))
        views[key] = result.view
        counts[(type_label(event.type), result.outcome.value)] += 1
    return views, counts


def produce_records(
    bootstrap: str,
    topic: str,
    records: list[tuple[bytes, bytes, list[Any]]],
    max_request_size: int = 1 << 20,
) -> list[Any]:
    """Produces and returns each record as a RawMessage with the partition and offset it got."""
    from kafka import KafkaProducer

    from consumers.decode import RawMessage

    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_request_size=max_request_size
    )
    futures = [producer.send(topic, key=k, value=v, headers=h) for k, v, h in records]
    producer.flush()
    out = []
    for (k, v, h), f in zip(records, futures, strict=True):
        md = f.get(timeout=30)
        out.append(RawMessage(topic, md.partition, md.offset, k, v, list(h)))
    producer.close()
    return out


def stored_state(
    redis_url: str, prefix: str, keys: list[str]
) -> tuple[dict[str, Any], Counter[tuple[str, str]]]:
    """Views (as in expected_fold's keys) and event counters read back from Redis."""
    import redis

    from monitor.store.counters import EventCounters
    from monitor.store.providers import ProviderViews
    from monitor.store.syncs import SyncViews

    client = redis.Redis.from_url(redis_url)
    syncs, providers = SyncViews(prefix), ProviderViews(prefix)
    views: dict[str, Any] = {}
    for key in keys:
        kind, _, name = key.partition(":")
        if kind == "sync":
            views[key] = syncs.get(client, name)
        else:
            views[key] = (providers.get_many(client, [name]) or [None])[0]
    counts = Counter(EventCounters(prefix).read(client))
    client.close()
    return views, counts
