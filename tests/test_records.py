"""Header names that are not UTF-8 are read as the bytes they are, not as a corrupt batch."""

from __future__ import annotations

from typing import Any

import pytest
from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

from consumers.decode import DecodeError, RawMessage, decode
from consumers.records import RawName, install_raw_names, raw_name
from tests.eventlib import cloudevent, encode, recent


def batch_of(records: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]) -> bytes:
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=False,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    for offset, (key, value, headers) in enumerate(records):
        builder.append(offset, timestamp=1000 + offset, key=key, value=value, headers=headers)
    return bytes(builder.build())


def test_a_raw_name_encodes_back_to_the_bytes_it_was_read_from() -> None:
    for data in (b"\xff", b"trace-\xfe\xff", b"\xc3("):
        name = raw_name(data)
        assert type(name) is RawName and name.encode("utf-8") == data
    assert type(raw_name(b"ce_id")) is str  # a valid name stays a plain str
    assert type(raw_name("é".encode())) is str


def test_a_batch_with_such_a_name_is_read_whole_and_in_order() -> None:
    install_raw_names()
    name = RawName(b"x\xff".decode("utf-8", "surrogateescape"))
    data = batch_of(
        [
            (b"k0", b"v0", [("a", b"1")]),
            (b"k1", b"v1", [(name, b"2"), ("b", None)]),  # type: ignore[list-item]
            (None, b"v2", []),
        ]
    )
    read: list[Any] = list(DefaultRecordBatch(data))
    assert [(r.offset, r.key, r.value) for r in read] == [
        (0, b"k0", b"v0"),
        (1, b"k1", b"v1"),
        (2, None, b"v2"),
    ]
    assert [r.timestamp for r in read] == [1000, 1001, 1002]
    assert read[0].headers == [("a", b"1")] and type(read[0].headers[0][0]) is str
    (raw, first), (plain, second) = read[1].headers
    assert type(raw) is RawName and raw.encode("utf-8") == b"x\xff" and first == b"2"
    assert (plain, second) == ("b", None)


def test_the_decoder_dead_letters_a_message_with_such_a_name() -> None:
    recent(10)
    key, value, headers = encode(cloudevent("sync.created", "s1", {"provider": "stripe"}))
    name = RawName(b"\xff".decode("utf-8", "surrogateescape"))
    message = RawMessage("t", 0, 0, key, value, [*headers, (name, b"v")])
    with pytest.raises(DecodeError, match="a header name is not UTF-8"):
        decode(message)
    decode(RawMessage("t", 0, 0, key, value, [*headers, ("fine", b"v")]))  # the same, readable
