"""Typed lifecycle events: the one place incoming CloudEvents become Python objects."""

from __future__ import annotations

import math
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
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    GetPydanticSchema,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    Tag,
    TypeAdapter,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

from monitor.enums import EventType, SyncStatus
from monitor.patching import merge_patch

# Bounds of what a view can hold exactly; a value outside them is bad input (dead-lettered),
# never stored altered. Views store times as float epoch seconds: microseconds survive that
# only up to about 2200, and pydantic reads numbers above 2e10 (year 2603) as milliseconds.
MIN_TIME = datetime(1970, 1, 1, tzinfo=UTC)
MAX_TIME = datetime(2200, 1, 1, tzinfo=UTC)
MAX_INT = 2**63 - 1  # counts, sequences, HTTP statuses: what Kafka, Redis and JSON readers share
FLOAT_EXACT = 2**53  # below it a float holds every integer; from it on, not all of them
MAX_ID_LENGTH = 256  # sync ids and the names the API filters on
MAX_FREQUENCY_SECONDS = 3650 * 86400  # `sync_frequency`: ten years at most


_OUT_OF_RANGE = "must be between 1970-01-01 and 2200-01-01"


def _in_utc(value: datetime) -> datetime:
    """In UTC and within the bounds; naive times are UTC. (Converting year 1 or 9999 with an
    offset overflows: a ValueError here, never an OverflowError escaping the decoder.)"""
    try:
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:
        raise ValueError(_OUT_OF_RANGE) from None
    if not MIN_TIME <= value < MAX_TIME:
        raise ValueError(_OUT_OF_RANGE)
    return value


def _as_utc(value: datetime) -> datetime:
    """Naive timestamps (the seed's "2023-12-15 01:29:29") are UTC; aware ones become UTC."""
    return _in_utc(value)


def _event_time(value: datetime) -> datetime:
    """Event times in UTC, to the millisecond: finer adds nothing to health, only bytes."""
    value = _in_utc(value)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def _finite(value: Any) -> Any:
    """Free-form JSON (metadata, credential) with NaN or an infinity could not be stored as it
    was read (JSON has no such numbers), so it is refused."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError("numbers must be finite")
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return value


def _frequency(value: str) -> str:
    """`continuous` or `<n>[smhd]` (ASCII digits) from 1s to ten years: `0m` would be a sync
    expected to succeed every instant, stale a millisecond after each success."""
    if value != "continuous":
        seconds = int(value[:-1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[value[-1]]
        if seconds > MAX_FREQUENCY_SECONDS:
            raise ValueError("must be at most 3650d")
        if seconds == 0:
            raise ValueError("must be at least 1s (or continuous)")
    return value


_RFC3339_START = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")


def _rfc3339(value: Any) -> Any:
    """`time` is an RFC 3339 string; pydantic alone would also take Unix timestamps."""
    if isinstance(value, datetime) or (isinstance(value, str) and _RFC3339_START.match(value)):
        return value
    raise ValueError("must be an RFC 3339 date-time string")


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]
EventTime = Annotated[AwareDatetime, BeforeValidator(_rfc3339), AfterValidator(_event_time)]


def _whole(ge: int, le: int) -> GetPydanticSchema:
    """The seed types counts as numbers, so `365.0` is read as 365 (365.5, bools, strings no)."""
    # All in pydantic-core: an int passes the first branch, only a float reaches the second;
    # a Python validator would cost every int field of every event on the hot path.

    def schema(source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        from_float = core_schema.chain_schema(
            [
                # from 2**53 on a float no longer holds every integer: 2**53 + 1 is read
                # as 2**53, and two sequences would collapse into one
                core_schema.float_schema(
                    strict=True, allow_inf_nan=False, gt=-FLOAT_EXACT, lt=FLOAT_EXACT
                ),
                core_schema.int_schema(),
            ]
        )
        either = core_schema.union_schema(
            [core_schema.int_schema(strict=True), from_float],
            mode="left_to_right",
            custom_error_type="int_type",  # one plain error, not one per branch
        )
        return core_schema.chain_schema([either, core_schema.int_schema(strict=True, ge=ge, le=le)])

    def json_schema(schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {"type": "integer", "minimum": ge, "maximum": le}

    return GetPydanticSchema(schema, json_schema)


NonNegInt = Annotated[int, _whole(0, MAX_INT)]
Int64 = Annotated[int, _whole(-MAX_INT - 1, MAX_INT)]
Text = Annotated[StrictStr, Field(min_length=1)]
Name = Annotated[StrictStr, Field(max_length=MAX_ID_LENGTH)]
Id = Annotated[StrictStr, Field(min_length=1, max_length=MAX_ID_LENGTH)]
FreeJson = Annotated[dict[str, Any], AfterValidator(_finite)]


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

    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)


class RateLimit(BaseModel):
    """The seed's `rate_limit` object; unknown keys are kept."""

    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)

    allowed_requests: NonNegInt | None = None
    interval: NonNegInt | None = None
    max_concurrent_requests: NonNegInt | None = None

    @model_validator(mode="after")
    def _finite_extras(self) -> RateLimit:
        _finite(self.__pydantic_extra__)
        return self


class SyncFields(_Data):
    """The sync object's own fields (seed), as `sync.created` carries them."""

    id: Id | None = None
    provider: Id
    stream_id: Name | None = None
    name: StrictStr | None = None
    status: SyncStatus = SyncStatus.ACTIVE
    org_id: Name | None = None
    collection_ids: list[StrictStr] = Field(default_factory=list)
    rate_limit: RateLimit | None = None
    credential_id: StrictStr | None = None
    credential: FreeJson | None = None
    max_age_days: NonNegInt | None = None
    sync_frequency: Annotated[
        StrictStr, Field(pattern=r"^(continuous|[0-9]{1,12}[smhd])$"), AfterValidator(_frequency)
    ] = "continuous"
    metadata: FreeJson = Field(default_factory=dict)
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
    http_status: Int64 | None = None
    retryable: StrictBool = False


class RunFailed(_Data):
    run_id: Text
    error: RunError


class CredentialFailed(_Data):
    http_status: Int64 | None = None
    message: StrictStr = ""


class RateLimited(_Data):
    # Seconds, int or float as sent (not a count: 1.0 stays 1.0).
    retry_after_seconds: (
        Annotated[StrictInt, Field(ge=0, le=MAX_INT)] | Annotated[StrictFloat, Field(ge=0)]
    ) = 0


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
    _finite(patch)
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
    subject: Id
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


_KINDS = {t.value: t for t in EventType}  # a dict lookup: `EventType(value)` is slow per event


def event_type(event: Envelope) -> EventType | None:
    """The known type of an event, or None for a type syncmon skips."""
    return None if isinstance(event, UnknownEvent) else _KINDS[event.type]


def data_of(event: Envelope) -> Any:
    """The typed payload of an event (kept untyped here so callers narrow by EventType)."""
    return getattr(event, "data", None)
