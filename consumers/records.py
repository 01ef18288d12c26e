"""Records whose header names are not UTF-8, which kafka-python cannot read at all.

kafka-python decodes each header name as UTF-8 while it parses a fetched batch, and a name
that is not (a Go or C producer may send any bytes) fails the whole fetch as corrupt, again
on every poll: the partition never moves past it. `install_raw_names` makes the parser read
such a name as a `RawName`, a str that encodes back to the very bytes received, so the
decoder can send the record to the dead-letter topic unchanged and the stream goes on. Valid
records take kafka-python's own path; only a record that fails it is parsed again here.
"""

from __future__ import annotations

from typing import Any

from kafka.errors import CorruptRecordError
from kafka.record.default_records import ControlRecord, DefaultRecord, DefaultRecordBatch
from kafka.record.util import decode_varint

_INSTALLED = "_syncmon_raw_names"


class RawName(str):
    """A header name that is not UTF-8: its bytes, surrogate-escaped, encode back unchanged."""

    __slots__ = ()

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return str.encode(self, "utf-8", "surrogateescape")


def raw_name(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return RawName(data.decode("utf-8", "surrogateescape"))


def install_raw_names() -> None:
    """Idempotent; called before a consumer is made (a module import changes nothing)."""
    if getattr(DefaultRecordBatch, _INSTALLED, False):
        return
    strict = DefaultRecordBatch._read_msg

    def read_msg(batch: Any, decode_varint: Any = decode_varint) -> Any:
        start = batch._pos
        try:
            return strict(batch, decode_varint)
        except UnicodeDecodeError:
            batch._pos = start
            return _read_lenient(batch)

    DefaultRecordBatch._read_msg = read_msg
    setattr(DefaultRecordBatch, _INSTALLED, True)


def _bytes(buffer: Any, pos: int) -> tuple[bytes | None, int]:
    size, pos = decode_varint(buffer, pos)
    if size < 0:
        return None, pos
    return bytes(buffer[pos : pos + size]), pos + size


def _read_lenient(batch: Any) -> Any:
    """kafka-python 3.0's `DefaultRecordBatch._read_msg`, header names read by `raw_name`."""
    buffer, pos = batch._buffer, batch._pos
    length, pos = decode_varint(buffer, pos)
    start = pos
    _, pos = decode_varint(buffer, pos)  # attributes: unused
    ts_delta, pos = decode_varint(buffer, pos)
    if batch.timestamp_type == batch.LOG_APPEND_TIME:
        timestamp = batch.max_timestamp
    else:
        timestamp = batch.first_timestamp + ts_delta
    offset_delta, pos = decode_varint(buffer, pos)
    key, pos = _bytes(buffer, pos)
    value, pos = _bytes(buffer, pos)
    count, pos = decode_varint(buffer, pos)
    if count < 0:
        raise CorruptRecordError(f"Found invalid number of record headers {count}")
    headers = []
    for _ in range(count):
        name, pos = _bytes(buffer, pos)
        if name is None:
            raise CorruptRecordError("Invalid negative header key size")
        header_value, pos = _bytes(buffer, pos)
        headers.append((raw_name(name), header_value))
    if pos - start != length:
        raise CorruptRecordError(
            f"Invalid record size: expected {length} bytes in the record, read {pos - start}"
        )
    batch._pos = pos
    kind = ControlRecord if batch.is_control_batch else DefaultRecord
    offset = batch.base_offset + offset_delta
    return kind(length, offset, timestamp, batch.timestamp_type, key, value, headers)
