"""Kafka records to typed events, and every kind of unreadable record to a DecodeError."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from consumers.decode import MAX_MESSAGE_BYTES, DecodeError, Headers, RawMessage, decode
from monitor.enums import EventType
from monitor.events import (
    EVENT_MODELS,
    KNOWN_TYPES,
    BackfillProgressed,
    Empty,
    Envelope,
    RateLimited,
    SyncFields,
    UnknownEvent,
)

SECRET = "sk_live_PLANTED_9f3c2a"
REQUIRED = ("specversion", "id", "source", "type", "time", "subject")
LABELS = KNOWN_TYPES | {"unknown"}


def cloudevent(kind: str = "sync.run.started", data: Any = None, **attrs: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "specversion": "1.0",
        "id": "evt-1",
        "source": "//tests/decode",
        "type": kind,
        "time": "2024-01-01T12:00:00Z",
        "subject": "sync-1",
        "datacontenttype": "application/json",
        "data": {"run_id": "r1"} if data is None else data,
    }
    raw.update(attrs)
    return raw


def record(value: bytes | None, headers: Headers | None = None) -> RawMessage:
    return RawMessage("sync.lifecycle", 0, 42, b"sync-1", value, headers or [])


def structured(raw: Any) -> RawMessage:
    return record(json.dumps(raw).encode())


def binary(raw: dict[str, Any], *, drop: tuple[str, ...] = ()) -> RawMessage:
    """Attributes as `ce_*` headers (strings), the value is `data` alone."""
    headers: Headers = [
        (f"ce_{k}", str(v).encode())
        for k, v in raw.items()
        if k not in ("data", "datacontenttype", *drop)
    ]
    headers.append(("content-type", b"application/json"))
    value = json.dumps(raw["data"]).encode() if "data" in raw else b""
    return record(value, headers)


def without(raw: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in raw.items() if k != key}


def fails(message: RawMessage) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        decode(message)
    error = info.value
    assert error.reason and error.reason == str(error)
    assert len(error.reason) < 1000
    assert error.type_label in LABELS
    return error


# -- readable input ----------------------------------------------------------------------


def test_structured_mode() -> None:
    event = decode(structured(cloudevent(sequence=3)))
    assert isinstance(event, EVENT_MODELS[EventType.RUN_STARTED])
    assert event.id == "evt-1"
    assert event.subject == "sync-1"
    assert event.time == datetime(2024, 1, 1, 12, tzinfo=UTC)
    assert event.sequence == 3
    assert event.data.run_id == "r1"  # type: ignore[attr-defined]


def test_structured_time_offset_becomes_utc() -> None:
    event = decode(structured(cloudevent(time="2024-01-01T14:00:00.5+02:00")))
    assert event.time == datetime(2024, 1, 1, 12, 0, 0, 500000, tzinfo=UTC)
    assert event.time.tzinfo is UTC


def test_binary_mode() -> None:
    raw = cloudevent(
        "sync.backfill.progressed",
        {"collection_id": "c1", "records_synced": 7, "estimated_total": 70},
        sequence=12,
    )
    message = binary(raw)
    assert ("ce_sequence", b"12") in message.headers
    event = decode(message)
    assert event.type == "sync.backfill.progressed"
    assert event.sequence == 12
    assert event.time == datetime(2024, 1, 1, 12, tzinfo=UTC)
    assert event.data == BackfillProgressed(  # type: ignore[attr-defined]
        collection_id="c1", records_synced=7, estimated_total=70
    )


def test_binary_and_structured_agree() -> None:
    raw = cloudevent("sync.created", {"provider": "stripe", "collection_ids": ["a"]}, sequence=1)
    assert decode(binary(raw)) == decode(structured(raw))


def test_binary_mode_empty_value_for_empty_data() -> None:
    event = decode(binary(without(cloudevent("sync.deleted"), "data")))
    assert event.type == "sync.deleted"
    assert event.data == Empty()  # type: ignore[attr-defined]


def test_structured_mode_data_defaults_for_empty_types() -> None:
    event = decode(structured(without(cloudevent("sync.credential.recovered"), "data")))
    assert event.data == Empty()  # type: ignore[attr-defined]


def test_created_with_matching_id() -> None:
    event = decode(structured(cloudevent("sync.created", {"id": "sync-1", "provider": "p"})))
    assert isinstance(event.data, SyncFields)  # type: ignore[attr-defined]


def test_valid_merge_patch() -> None:
    patch = {"name": "x", "metadata": {"a": None}, "rate_limit": None, "collection_ids": ["c"]}
    event = decode(structured(cloudevent("sync.updated", patch)))
    assert event.data == patch  # type: ignore[attr-defined]


def test_rate_limited_accepts_int_and_float() -> None:
    for value in (30, 1.5):
        event = decode(structured(cloudevent("sync.rate_limited", {"retry_after_seconds": value})))
        assert event.data == RateLimited(retry_after_seconds=value)  # type: ignore[attr-defined]


def test_unknown_data_keys_are_ignored() -> None:
    event = decode(structured(cloudevent(data={"run_id": "r1", "new_field": [1]})))
    assert event.data.run_id == "r1"  # type: ignore[attr-defined]


@pytest.mark.parametrize("mode", [structured, binary])
def test_unknown_type_decodes_to_unknown_event(mode: Callable[[Any], RawMessage]) -> None:
    event = decode(mode(cloudevent("sync.teleported", {"to": "mars"})))
    assert isinstance(event, UnknownEvent)
    assert event.type == "sync.teleported"


def test_every_known_type_has_a_model() -> None:
    assert {t.value for t in EventType} == set(KNOWN_TYPES) == {t.value for t in EVENT_MODELS}


# -- unreadable input --------------------------------------------------------------------

BAD: list[tuple[str, RawMessage, str, str]] = [
    # (name, message, a word the reason must contain, type_label)
    ("not_utf8", record(b'{"specversion": "1.0", "id": "\xff\xfe"}'), "UTF-8", "unknown"),
    (
        "not_utf8_latin1",
        record('{"type": "sync.created", "x": "é"}'.encode("latin-1")),
        "UTF-8",
        "unknown",
    ),
    ("not_json", record(b"{this is not json"), "JSON", "unknown"),
    ("truncated_json", record(json.dumps(cloudevent())[:-5].encode()), "JSON", "unknown"),
    ("json_array", structured([cloudevent()]), "object", "unknown"),
    ("json_string", structured("sync.created"), "object", "unknown"),
    ("json_number", record(b"42"), "object", "unknown"),
    ("json_null", record(b"null"), "object", "unknown"),
    *(
        (
            f"missing_{attr}",
            structured(without(cloudevent(), attr)),
            attr,
            "unknown" if attr == "type" else "sync.run.started",
        )
        for attr in REQUIRED
    ),
    *(
        (
            f"binary_missing_{attr}",
            binary(cloudevent(), drop=(attr,)),
            attr,
            "unknown" if attr == "type" else "sync.run.started",
        )
        for attr in REQUIRED
        if attr != "specversion"
    ),
    (
        "specversion_0_3",
        structured(cloudevent(specversion="0.3")),
        "specversion",
        "sync.run.started",
    ),
    (
        "specversion_number",
        structured(cloudevent(specversion=1.0)),
        "specversion",
        "sync.run.started",
    ),
    (
        "binary_specversion_0_3",
        binary(cloudevent(specversion="0.3")),
        "specversion",
        "sync.run.started",
    ),
    ("time_naive", structured(cloudevent(time="2024-01-01T12:00:00")), "time", "sync.run.started"),
    ("time_not_a_time", structured(cloudevent(time="yesterday")), "time", "sync.run.started"),
    ("time_number", structured(cloudevent(time=1704110400)), "time", "sync.run.started"),
    ("time_digits", structured(cloudevent(time="1704110400")), "time", "sync.run.started"),
    (
        "binary_time_naive",
        binary(cloudevent(time="2024-01-01T12:00:00")),
        "time",
        "sync.run.started",
    ),
    ("id_empty", structured(cloudevent(id="")), "id", "sync.run.started"),
    ("id_number", structured(cloudevent(id=7)), "id", "sync.run.started"),
    ("subject_null", structured(cloudevent(subject=None)), "subject", "sync.run.started"),
    ("sequence_negative", structured(cloudevent(sequence=-1)), "sequence", "sync.run.started"),
    ("sequence_text", structured(cloudevent(sequence="abc")), "sequence", "sync.run.started"),
    ("sequence_bool", structured(cloudevent(sequence=True)), "sequence", "sync.run.started"),
    ("binary_sequence_text", binary(cloudevent(sequence="1e3")), "sequence", "sync.run.started"),
    (
        "sequence_unicode_digits",
        structured(cloudevent(sequence="١٢")),
        "sequence",
        "sync.run.started",
    ),
    ("sequence_superscript", structured(cloudevent(sequence="²³")), "sequence", "sync.run.started"),
    (
        "records_synced_string",
        structured(
            cloudevent("sync.backfill.progressed", {"collection_id": "c", "records_synced": "5"})
        ),
        "data.records_synced",
        "sync.backfill.progressed",
    ),
    (
        "records_synced_negative",
        structured(
            cloudevent(
                "sync.backfill.collection_completed", {"collection_id": "c", "records_synced": -1}
            )
        ),
        "data.records_synced",
        "sync.backfill.collection_completed",
    ),
    (
        "retry_after_bool",
        structured(cloudevent("sync.rate_limited", {"retry_after_seconds": True})),
        "data.retry_after_seconds",
        "sync.rate_limited",
    ),
    (
        "run_failed_without_error",
        structured(cloudevent("sync.run.failed", {"run_id": "r"})),
        "data.error",
        "sync.run.failed",
    ),
    (
        "run_failed_retryable_string",
        structured(
            cloudevent(
                "sync.run.failed",
                {"run_id": "r", "error": {"code": "c", "message": "m", "retryable": "yes"}},
            )
        ),
        "data.error.retryable",
        "sync.run.failed",
    ),
    (
        "run_started_without_run_id",
        structured(cloudevent("sync.run.started", {})),
        "data.run_id",
        "sync.run.started",
    ),
    (
        "incident_notes_not_list",
        structured(
            cloudevent(
                "provider.incident.opened", {"incident_id": "i", "notes": "x"}, subject="stripe"
            )
        ),
        "data.notes",
        "provider.incident.opened",
    ),
    (
        "created_without_provider",
        structured(cloudevent("sync.created", {"name": "n"})),
        "data.provider",
        "sync.created",
    ),
    (
        "created_bad_status",
        structured(cloudevent("sync.created", {"provider": "p", "status": "paused"})),
        "data.status",
        "sync.created",
    ),
    (
        "created_bad_sync_frequency",
        structured(cloudevent("sync.created", {"provider": "p", "sync_frequency": "often"})),
        "data.sync_frequency",
        "sync.created",
    ),
    (
        "created_data_not_object",
        structured(cloudevent("sync.created", ["provider"])),
        "data",
        "sync.created",
    ),
    (
        "created_id_differs_from_subject",
        structured(cloudevent("sync.created", {"id": "sync-2", "provider": "p"})),
        "data.id",
        "sync.created",
    ),
    (
        "patch_id_differs_from_subject",
        structured(cloudevent("sync.updated", {"id": "sync-2"})),
        "data.id",
        "sync.updated",
    ),
    (
        "patch_name_number",
        structured(cloudevent("sync.updated", {"name": 5})),
        "data.name",
        "sync.updated",
    ),
    (
        "patch_removes_provider",
        structured(cloudevent("sync.updated", {"provider": None})),
        "data.provider",
        "sync.updated",
    ),
    (
        "patch_bad_nested_type",
        structured(cloudevent("sync.updated", {"rate_limit": {"allowed_requests": "many"}})),
        "data.rate_limit.allowed_requests",
        "sync.updated",
    ),
    (
        "patch_not_object",
        structured(cloudevent("sync.updated", [{"name": "x"}])),
        "data",
        "sync.updated",
    ),
    (
        "patch_missing",
        structured(without(cloudevent("sync.updated"), "data")),
        "data",
        "sync.updated",
    ),
    (
        "too_big",
        structured(cloudevent(data={"run_id": "r", "pad": "x" * MAX_MESSAGE_BYTES})),
        "limit",
        "unknown",
    ),
    (
        "too_big_headers",
        record(b"{}", [("ce_pad", b"x" * MAX_MESSAGE_BYTES)]),
        "limit",
        "unknown",
    ),
    ("empty_value", record(b""), "empty", "unknown"),
    ("null_value", record(None), "empty", "unknown"),
    ("empty_value_other_headers", record(b"", [("content-type", b"x")]), "empty", "unknown"),
    (
        "binary_header_not_utf8",
        record(b'{"run_id": "r"}', [("ce_specversion", b"1.0"), ("ce_id", b"\xff\xfe")]),
        "ce_id",
        "unknown",
    ),
    (
        "binary_data_not_json",
        record(b"{nope", binary(cloudevent()).headers),
        "JSON",
        "sync.run.started",
    ),
    (
        "binary_data_not_utf8",
        record(b'{"run_id": "\xff"}', binary(cloudevent()).headers),
        "UTF-8",
        "sync.run.started",
    ),
    (
        "binary_missing_data",
        record(b"", binary(cloudevent()).headers),
        "data",
        "sync.run.started",
    ),
]


@pytest.mark.parametrize(
    ("message", "word", "label"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_unreadable_input_is_a_decode_error(message: RawMessage, word: str, label: str) -> None:
    error = fails(message)
    assert word in error.reason
    assert error.type_label == label


def test_bad_names_unique() -> None:
    assert len({b[0] for b in BAD}) == len(BAD)


def test_integral_floats_are_read_as_ints() -> None:
    """The seed types these fields as numbers: `365.0` is 365, stored as an int."""
    limits = {"allowed_requests": 100.0, "interval": 60.0, "max_concurrent_requests": 2}
    created = {"provider": "p", "max_age_days": 365.0, "rate_limit": limits}
    event = decode(structured(cloudevent("sync.created", created, sequence=3.0)))
    fields: SyncFields = event.data  # type: ignore[attr-defined]
    assert fields.max_age_days == 365 and type(fields.max_age_days) is int
    assert event.sequence == 3 and type(event.sequence) is int
    assert fields.rate_limit is not None
    read = fields.rate_limit.model_dump()
    assert read == {"allowed_requests": 100, "interval": 60, "max_concurrent_requests": 2}
    assert {type(v) for v in read.values()} == {int}

    run = {"run_id": "r", "records_upserted": 5.0, "records_deleted": 0.0, "duration_ms": 1e3}
    done = decode(structured(cloudevent("sync.run.succeeded", run))).data  # type: ignore[attr-defined]
    assert done.model_dump() == {**run, "records_upserted": 5, "duration_ms": 1000}
    assert {type(v) for k, v in done.model_dump().items() if k != "run_id"} == {int}

    failure = {"code": "c", "message": "m", "http_status": 503.0}
    failed = decode(structured(cloudevent("sync.run.failed", {"run_id": "r", "error": failure})))
    status = failed.data.error.http_status  # type: ignore[attr-defined]
    assert status == 503 and type(status) is int
    decode(structured(cloudevent("sync.updated", {"max_age_days": 30.0})))
    largest = decode(
        structured(cloudevent("sync.created", {**created, "max_age_days": 2.0**53 - 1}))
    )
    assert largest.data.max_age_days == 2**53 - 1  # type: ignore[attr-defined]
    exact = decode(structured(cloudevent("sync.created", {**created, "max_age_days": 2**53 + 1})))
    assert exact.data.max_age_days == 2**53 + 1  # type: ignore[attr-defined]  # an int is exact


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (365.5, "a valid integer"),
        (True, "a valid integer"),
        ("365", "a valid integer"),
        (1e300, "a valid integer"),
        (2.0**53, "a valid integer"),  # from here on a float does not hold every integer
        (-(2.0**53), "a valid integer"),
        ([365], "a valid integer"),
        (-1.0, "greater than or equal to 0"),
    ],
)
def test_other_numbers_are_still_dead_lettered(value: Any, why: str) -> None:
    created = {"provider": "p", "max_age_days": value}
    error = fails(structured(cloudevent("sync.created", created)))
    assert error.reason == f"data.max_age_days: Input should be {why}"
    assert error.type_label == "sync.created"
    patch = fails(structured(cloudevent("sync.updated", {"max_age_days": value})))
    assert patch.reason == error.reason


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 365.5, True, "365"])
def test_non_finite_or_fractional_ints_are_refused_in_python_input(value: Any) -> None:
    """JSON has no NaN (the reader refuses it first); objects built in Python can."""
    with pytest.raises(ValidationError, match="valid integer"):
        SyncFields(provider="p", max_age_days=value)


def test_a_binary_sequence_is_still_ascii_digits_only() -> None:
    assert decode(binary(cloudevent(sequence="12"))).sequence == 12
    assert "sequence" in fails(binary(cloudevent(sequence="12.0"))).reason


# -- reasons never quote the input -------------------------------------------------------

LEAKY: list[tuple[str, RawMessage]] = [
    ("not_json", record(f"{{ {SECRET}".encode())),
    ("not_json_after_valid_prefix", record(f'{{"id": "x", {SECRET}}}'.encode())),
    ("not_utf8", record(f'{{"password": "{SECRET}\xff"}}'.encode("latin-1"))),
    ("time", structured(cloudevent(time=SECRET))),
    ("specversion", structured(cloudevent(specversion=SECRET))),
    ("sequence", structured(cloudevent(sequence=SECRET))),
    ("id_type", structured(cloudevent(id={"secret": SECRET}))),
    ("type_not_string", structured(cloudevent(type=[SECRET]))),
    (
        "records_synced",
        structured(
            cloudevent("sync.backfill.progressed", {"collection_id": "c", "records_synced": SECRET})
        ),
    ),
    (
        "created_id",
        structured(cloudevent("sync.created", {"id": SECRET, "provider": "p"})),
    ),
    ("patch_id", structured(cloudevent("sync.updated", {"id": SECRET}))),
    (
        "credential_not_object",
        structured(cloudevent("sync.updated", {"credential": SECRET})),
    ),
    (
        "credential_with_bad_sibling",
        structured(
            cloudevent("sync.created", {"provider": 5, "credential": {"client_secret": SECRET}})
        ),
    ),
    (
        "status_enum",
        structured(cloudevent("sync.created", {"provider": "p", "status": SECRET})),
    ),
    (
        "sync_frequency_pattern",
        structured(cloudevent("sync.created", {"provider": "p", "sync_frequency": SECRET})),
    ),
    (
        "collection_ids",
        structured(cloudevent("sync.created", {"provider": "p", "collection_ids": SECRET})),
    ),
    ("sequence_superscript", structured(cloudevent(sequence="²³" + "³" * 5))),
    ("binary_time", binary(cloudevent(time=SECRET))),
    ("binary_sequence", binary(cloudevent(sequence=SECRET))),
    ("binary_data", record(f"[{SECRET}".encode(), binary(cloudevent()).headers)),
    (
        "binary_header_not_utf8",
        record(b"{}", [("ce_specversion", b"1.0"), ("ce_id", SECRET.encode() + b"\xff")]),
    ),
    ("type_unknown_bad_attrs", structured(cloudevent(type=SECRET, time="nope"))),
]


@pytest.mark.parametrize("message", [m for _, m in LEAKY], ids=[n for n, _ in LEAKY])
def test_reason_never_contains_input_values(message: RawMessage) -> None:
    error = fails(message)
    for text in (error.reason, str(error), repr(error.args), error.type_label):
        assert SECRET not in text
        assert "PLANTED" not in text
        assert "²³" not in text


# -- properties --------------------------------------------------------------------------

_ATTR_NAMES = st.sampled_from(
    [f"ce_{a}" for a in (*REQUIRED, "sequence", "data")] + ["content-type", "CE_TYPE", "ce_"]
)
_HEADER_VALUES = (
    st.none()
    | st.binary(max_size=40)
    | st.sampled_from(
        [b"1.0", b"sync.created", b"sync.updated", b"2024-01-01T00:00:00Z", b"7", b"s", b""]
    )
)
_HEADERS = st.lists(st.tuples(_ATTR_NAMES | st.text(max_size=12), _HEADER_VALUES), max_size=8)

_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
_JSONISH = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "provider",
                    "id",
                    "run_id",
                    "name",
                    "credential",
                    "collection_ids",
                    "records_synced",
                    "error",
                    "a",
                ]
            )
            | st.text(max_size=5),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@st.composite
def _mutated_events(draw: st.DrawFn) -> bytes:
    """Near-valid structured events: every attribute and data shape perturbed."""
    raw = cloudevent(draw(st.sampled_from([*sorted(KNOWN_TYPES), "x.y"])), draw(_JSONISH))
    for key in draw(st.lists(st.sampled_from([*REQUIRED, "sequence", "data"]), max_size=3)):
        if draw(st.booleans()):
            raw.pop(key, None)
        else:
            raw[key] = draw(_JSONISH)
    text = json.dumps(raw)
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(text)))
        text = text[:cut]
    return text.encode()


_VALUES = st.none() | st.binary(max_size=200) | _mutated_events()


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=_VALUES, headers=_HEADERS)
def test_decode_returns_an_envelope_or_raises_decode_error(
    value: bytes | None, headers: Headers
) -> None:
    try:
        event = decode(record(value, headers))
    except DecodeError as error:
        assert isinstance(error.reason, str) and error.reason
        assert error.type_label in LABELS
    else:
        assert isinstance(event, Envelope)
