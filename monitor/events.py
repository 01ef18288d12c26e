"""Typed lifecycle events: the one place incoming CloudEvents become Python objects."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    Tag,
    TypeAdapter,
)

from monitor.enums import EventType, SyncStatus
from monitor.patching import merge_patch


def _as_utc(value: datetime) -> datetime:
    """Naive timestamps (the seed's "2023-12-15 01:29:29") are UTC; aware ones become UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _event_time(value: datetime) -> datetime:
    """Event times in UTC, to the millisecond: finer adds nothing to health, only bytes."""
    value = value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


_RFC3339_START = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")


def _rfc3339(value: Any) -> Any:
    """`time` is an RFC 3339 string; pydantic alone would also take Unix timestamps."""
    if isinstance(value, datetime) or (isinstance(value, str) and _RFC3339_START.match(value)):
        return value
    raise ValueError("must be an RFC 3339 date-time string")


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]
EventTime = Annotated[AwareDatetime, BeforeValidator(_rfc3339), AfterValidator(_event_time)]
NonNegInt = Annotated[StrictInt, Field(ge=0)]
Text = Annotated[StrictStr, Field(min_length=1)]


def _sequence(value: Any) -> Any:
    """CloudEvents extensions travel as strings in binary mode; accept ASCII digit strings only.

    (`str.isdigit` alone takes "²", on which `int` raises a message that quotes the input.)
    """
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return value


Sequence = Annotated[NonNegInt, BeforeValidator(_sequence)]


class _Data(BaseModel):
    """Event payloads ignore unknown keys so producers can add fields first."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class RateLimit(BaseModel):
    """The seed's `rate_limit` object; unknown keys are kept."""

    model_config = ConfigDict(extra="allow", frozen=True)

    allowed_requests: NonNegInt | None = None
    interval: NonNegInt | None = None
    max_concurrent_requests: NonNegInt | None = None


class SyncFields(_Data):
    """The sync object's own fields (seed), as `sync.created` carries them."""

    id: Text | None = None
    provider: Text
    stream_id: StrictStr | None = None
    name: StrictStr | None = None
    status: SyncStatus = SyncStatus.ACTIVE
    org_id: StrictStr | None = None
    collection_ids: list[StrictStr] = Field(default_factory=list)
    rate_limit: RateLimit | None = None
    credential_id: StrictStr | None = None
    credential: dict[str, Any] | None = None
    max_age_days: NonNegInt | None = None
    sync_frequency: Annotated[StrictStr, Field(pattern=r"^(continuous|\d+[smhd])$")] = "continuous"
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: UtcDatetime | None = None
    updated_at: UtcDatetime | None = None


class Empty(_Data):
    """Payload of events that carry nothing (an optional reason at most)."""

    reason: StrictStr | None = None


class RunStarted(_Data):
    run_id: Text


class RunSucceeded(_Data):
    run_id: Text
    records_upserted: NonNegInt = 0
    records_deleted: NonNegInt = 0
    duration_ms: NonNegInt | None = None


class RunError(_Data):
    code: StrictStr
    message: StrictStr
    http_status: StrictInt | None = None
    retryable: StrictBool = False


class RunFailed(_Data):
    run_id: Text
    error: RunError


class CredentialFailed(_Data):
    http_status: StrictInt | None = None
    message: StrictStr = ""


class RateLimited(_Data):
    retry_after_seconds: NonNegInt | Annotated[StrictFloat, Field(ge=0)] = 0


class BackfillStarted(_Data):
    collection_ids: list[StrictStr] | None = None


class BackfillProgressed(_Data):
    collection_id: Text
    records_synced: NonNegInt
    estimated_total: NonNegInt | None = None


class CollectionCompleted(_Data):
    collection_id: Text
    records_synced: NonNegInt


class IncidentOpened(_Data):
    incident_id: Text
    notes: list[StrictStr] = Field(default_factory=list)


class IncidentResolved(_Data):
    incident_id: Text


def _valid_patch(patch: dict[str, Any]) -> dict[str, Any]:
    """A patch whose leaves have the wrong types is bad input, caught here and dead-lettered."""
    SyncFields.model_validate(merge_patch({"provider": "-"}, patch))
    return patch


MergePatch = Annotated[dict[str, Any], AfterValidator(_valid_patch)]

DATA_MODELS: dict[EventType, type[BaseModel] | None] = {
    EventType.SYNC_CREATED: SyncFields,
    EventType.SYNC_UPDATED: None,
    EventType.SYNC_DISABLED: Empty,
    EventType.SYNC_ENABLED: Empty,
    EventType.SYNC_DELETED: Empty,
    EventType.RUN_STARTED: RunStarted,
    EventType.RUN_SUCCEEDED: RunSucceeded,
    EventType.RUN_FAILED: RunFailed,
    EventType.CREDENTIAL_FAILED: CredentialFailed,
    EventType.CREDENTIAL_RECOVERED: Empty,
    EventType.RATE_LIMITED: RateLimited,
    EventType.BACKFILL_STARTED: BackfillStarted,
    EventType.BACKFILL_PROGRESSED: BackfillProgressed,
    EventType.BACKFILL_COLLECTION_COMPLETED: CollectionCompleted,
    EventType.PROVIDER_INCIDENT_OPENED: IncidentOpened,
    EventType.PROVIDER_INCIDENT_RESOLVED: IncidentResolved,
}


class Envelope(BaseModel):
    """The CloudEvents 1.0 attributes syncmon relies on; data is typed by the subclasses."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    specversion: Literal["1.0"]
    id: Text
    source: Text
    type: StrictStr
    time: EventTime
    subject: Text
    sequence: Sequence | None = None


class UnknownEvent(Envelope):
    """A type syncmon does not know yet: skipped and counted, never an error."""

    data: Any = None


def _event_model(event_type: EventType) -> type[Envelope]:
    """Builds `<Type>Event(Envelope)` with `type` pinned and `data` typed."""
    data_model = DATA_MODELS[event_type]
    data_annotation: Any = data_model if data_model is not None else MergePatch
    name = "".join(part.title() for part in event_type.value.replace("_", ".").split(".")) + "Event"
    namespace: dict[str, Any] = {
        "__annotations__": {"type": Literal[event_type.value], "data": data_annotation},
        "__module__": __name__,
        "__doc__": f"A `{event_type.value}` event.",
    }
    if data_model is Empty:
        namespace["data"] = Field(default_factory=Empty)
    model: type[Envelope] = type(name, (Envelope,), namespace)
    return model


EVENT_MODELS: dict[EventType, type[Envelope]] = {t: _event_model(t) for t in EventType}
KNOWN_TYPES = frozenset(t.value for t in EventType)


def _discriminate(value: Any) -> str:
    """Routes known types to their model and everything else to UnknownEvent."""
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return kind if isinstance(kind, str) and kind in KNOWN_TYPES else "unknown"


_CHOICES = (
    Annotated[UnknownEvent, Tag("unknown")],
    *(Annotated[model, Tag(kind.value)] for kind, model in EVENT_MODELS.items()),
)
EventUnion: Any = Annotated[Union[_CHOICES], Discriminator(_discriminate)]  # noqa: UP007

EVENT_ADAPTER: TypeAdapter[Envelope] = TypeAdapter(EventUnion)


def event_type(event: Envelope) -> EventType | None:
    """The known type of an event, or None for a type syncmon skips."""
    return None if isinstance(event, UnknownEvent) else EventType(event.type)


def data_of(event: Envelope) -> Any:
    """The typed payload of an event (kept untyped here so callers narrow by EventType)."""
    return getattr(event, "data", None)
