"""Kafka records to typed events; anything unreadable becomes a reason for the dead-letter topic."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import pydantic_core
from pydantic import ValidationError

from consumers.records import RawName
from monitor.enums import EventType
from monitor.events import EVENT_ADAPTER, KNOWN_TYPES, Envelope, SyncFields

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 1 << 20
BINARY_PREFIX = "ce_"
UNKNOWN_TYPE = "unknown"

Headers = list[tuple[str, bytes | None]]


@dataclass(frozen=True, slots=True)
class RawMessage:
    """A Kafka record as syncmon needs it, independent of the client library."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers = field(default_factory=list)


class DecodeError(Exception):
    """Why a message cannot be read; becomes the `syncmon_error` DLQ header."""

    def __init__(self, reason: str, type_label: str = UNKNOWN_TYPE) -> None:
        super().__init__(reason)
        self.reason = reason
        self.type_label = type_label


def type_label(kind: Any) -> str:
    """A bounded label value for metrics: a known type or `unknown`."""
    return kind if isinstance(kind, str) and kind in KNOWN_TYPES else UNKNOWN_TYPE


def decode(message: RawMessage) -> Envelope:
    """Structured or binary CloudEvents mode into a typed event, or DecodeError."""
    size = len(message.value or b"") + sum(len(k) + len(v or b"") for k, v in message.headers)
    if size > MAX_MESSAGE_BYTES:
        raise DecodeError(f"message is {size} bytes, over the {MAX_MESSAGE_BYTES} byte limit")
    if any(type(k) is RawName for k, _ in message.headers):
        raise DecodeError("a header name is not UTF-8")
    attributes = _binary_attributes(message.headers)
    try:
        if attributes is not None:
            if message.value:
                attributes["data"] = _json(message.value)
            event = EVENT_ADAPTER.validate_python(attributes)
        elif not message.value:
            raise DecodeError("empty message value and no ce_ headers")
        else:
            raw = _json(message.value)
            if not isinstance(raw, dict):
                raise DecodeError("event: must be a JSON object")
            event = EVENT_ADAPTER.validate_python(raw)
    except ValueError as exc:  # ValidationError and from_json's errors are ValueErrors
        label = type_label(attributes.get("type") if attributes else _peek_type(message.value))
        reason = "value is not UTF-8" if not _is_utf8(message.value) else _reason(exc)
        raise DecodeError(reason, label) from None
    except DecodeError:
        raise
    except Exception as exc:  # a reader bug must not halt the partition: dead-letter the record
        log.error("unexpected %s while reading a record; dead-lettered", type(exc).__name__)
        raise DecodeError(f"unreadable ({type(exc).__name__})") from None
    _check_identity(event)
    return event


def _json(value: bytes) -> Any:
    """Strict JSON: `NaN` and `Infinity` are not JSON (and could not be stored as read)."""
    return pydantic_core.from_json(value, allow_inf_nan=False)


def _binary_attributes(headers: Headers) -> dict[str, Any] | None:
    """CloudEvents Kafka binding: attributes in `ce_*` headers; None when not binary mode."""
    if not any(k.lower() == "ce_specversion" for k, _ in headers):
        return None
    attributes: dict[str, Any] = {}
    for key, value in headers:
        if not key.lower().startswith(BINARY_PREFIX):
            continue
        try:
            attributes[key[len(BINARY_PREFIX) :].lower()] = (value or b"").decode("utf-8")
        except UnicodeDecodeError:
            raise DecodeError(f"header {key} is not UTF-8") from None
    return attributes


def _is_utf8(value: bytes | None) -> bool:
    try:
        (value or b"").decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _peek_type(value: bytes | None) -> Any:
    """The `type` of a structured event that failed validation, for the metric label only."""
    try:
        parsed = pydantic_core.from_json(value or b"")
    except ValueError:
        return None
    return parsed.get("type") if isinstance(parsed, dict) else None


def _reason(exc: ValueError) -> str:
    """A short reason that never quotes the input (it may hold a secret)."""
    if isinstance(exc, ValidationError):
        parts = []
        for error in exc.errors(include_url=False, include_input=False, include_context=False):
            loc = ".".join(str(p) for p in error["loc"][1:]) or "event"
            parts.append(f"{loc}: {error['msg']}")
        return "; ".join(parts[:5])
    return f"not JSON: {str(exc).splitlines()[0]}"


def _check_identity(event: Envelope) -> None:
    """`sync.created`/`sync.updated` may name the sync only as its subject."""
    if event.type not in (EventType.SYNC_CREATED, EventType.SYNC_UPDATED):
        return
    data = event.data  # type: ignore[attr-defined]
    claimed = data.id if isinstance(data, SyncFields) else data.get("id")
    if claimed is not None and claimed != event.subject:
        raise DecodeError("data.id differs from subject", event.type)  # never quote input
