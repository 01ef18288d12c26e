"""Compression of stored JSON: every event rewrites a sync's facts, so this is on the hot path.

A stored value starts with `{` (plain JSON) or with a one-byte tag naming how it was packed,
so values stay readable whatever an earlier version wrote. Tags 1-3 are raw deflate with a
hand-written dictionary (read only); tags 4-5 are zstd with a dictionary trained on simulated
views (`scripts/zstd_dictionaries.py`). Over bench/core.py's log that is 13.6 us per facts
write where deflate took 40.3 us whatever its level (its per-call set-up dominates), and
309 B per value where deflate stored 388 B (bench/parts.py and bench/core.py, 2026-11-28).
"""

from __future__ import annotations

import threading
import zlib
from pathlib import Path

import zstandard

_WBITS = -12  # the deflate window the read-only tags were written with

_FACTS_2 = (  # the facts' strings; each dictionary is fixed once values use it
    b'"succeeded":false,"error":{"code":"rate_limited","message":"http_status":429,'
    b'"retryable":true},"credential_status":"failed","retry_after_seconds":'
    b'"initial_backfill_completed_at":"last_event_at":"first_activity_at":"last_run":'
    b'{"run_id":"started_at":"finished_at":"succeeded":true,"records_upserted":'
    b'"records_deleted":"duration_ms":"last_success_at":"last_failure_at":'
    b'"runs_succeeded":"runs_failed":"backfill_started_at":"last_backfill_event_at":'
    b'"backfill":{"records_synced":"estimated_total":"completed_at":"applied":'
    b'{"sequence":"event_ids":["offsets":{"partition":"credential_status":"failed",'
    b'"credential_failed_at":"credential_problem":{"http_status":"message":'
    b'"last_rate_limited_at":"retry_after_seconds":"consecutive_failures":'
    b'"error":{"code":"retryable":'
)
DEFLATE_DICTIONARIES: dict[bytes, bytes] = {
    b"\x01": (
        b"stripe:hubspot:salesforce:github:shopify:intercom:zendesk:jira:linear:airtable:"
        b"customer:contact:company:account:invoice:subscription:ticket:issue:order:user:"
        b'"access_token":"***********","refresh_token":"***********","client_secret":'
        b'"api_key":"***********","client_id":"instance_url":"https://","expires_at":'
        b'"scopes":["test":true,"workspace_id":"owner":"team":"environment":"production",'
        b"Production Staging - "
        b'{"id":"provider":"stream_id":"name":"org_id":"collection_ids":["rate_limit":'
        b'{"allowed_requests":"interval":"max_concurrent_requests":"credential_id":'
        b'"credential":{"id":"provider":"properties":{"kind":"***********","oauth_app_id":null,'
        b'"oauth_app":{"kind":"sequin"},"metadata":{"created_at":"updated_at":"max_age_days":'
        b'"sync_frequency":"4h","status":"disabled","disabled_reason":"status_changed_at":'
        b'"known":false,"deleted_at":'
    ),
    b"\x02": _FACTS_2,
    b"\x03": (  # the facts since they also hold what health reads of the sync's own fields
        b"stripe:hubspot:salesforce:github:shopify:intercom:zendesk:jira:linear:airtable:"
        b"customer:contact:company:account:invoice:subscription:ticket:issue:order:user:"
        b"Production Staging - "
        b'"provider":"name":"org_id":"collection_ids":["sync_frequency":"4h",'
        b'"status":"disabled","disabled_reason":"status_changed_at":"known":false,'
        b'"deleted_at":"created_at":'
    )
    + _FACTS_2,
}

_DIRECTORY = Path(__file__).with_name("dictionaries")
ZSTD_DICTIONARIES: dict[bytes, str] = {b"\x04": "facts-4.zdict", b"\x05": "seed-4.zdict"}
_ZSTD_LEVEL = 3  # level 1 stores 5% more for no measurable gain in time here

MAX_DOCUMENT = 16 << 20  # bytes: a view is a few KiB (an event at most 1 MiB); past it, bad
SEED, FACTS = b"\x05", b"\x04"  # what values are written with now
DEFLATED_SEED, DEFLATED_FACTS = b"\x01", b"\x03"
OLD_FACTS = b"\x02"  # facts of the earlier split: the seed part held more (see store.syncs)


def _load(tag: bytes) -> zstandard.ZstdCompressionDict:
    data = (_DIRECTORY / ZSTD_DICTIONARIES[tag]).read_bytes()
    dictionary = zstandard.ZstdCompressionDict(data, dict_type=zstandard.DICT_TYPE_FULLDICT)
    dictionary.precompute_compress(level=_ZSTD_LEVEL)
    return dictionary


_ZSTD = {tag: _load(tag) for tag in ZSTD_DICTIONARIES}


class _Codecs(threading.local):
    """zstd contexts are not thread safe: each thread (consumer, API, scheduler) has its own."""

    def __init__(self) -> None:
        self.compress = {
            tag: zstandard.ZstdCompressor(
                level=_ZSTD_LEVEL, dict_data=d, write_checksum=False, write_dict_id=False
            ).compress
            for tag, d in _ZSTD.items()
        }
        self.decompress = {
            tag: zstandard.ZstdDecompressor(dict_data=d).decompress for tag, d in _ZSTD.items()
        }


_local = _Codecs()


def pack(tag: bytes, document: bytes | str) -> bytes:
    """Compresses a JSON document with the dictionary `tag` names."""
    raw = document.encode() if isinstance(document, str) else document
    if tag in _ZSTD:
        return tag + _local.compress[tag](raw)
    deflater = zlib.compressobj(6, zlib.DEFLATED, _WBITS, 4, zdict=DEFLATE_DICTIONARIES[tag])
    return tag + deflater.compress(raw) + deflater.flush()


def unpack(stored: bytes) -> bytes:
    """The JSON document back, however it was stored; ValueError for one that would inflate
    past MAX_DOCUMENT (a damaged or planted value: zstd can expand 32 KiB to 1 GiB)."""
    tag = stored[:1]
    if tag in _ZSTD:
        body = stored[1:]
        if zstandard.frame_content_size(body) > MAX_DOCUMENT:  # the size its header declares
            raise ValueError(f"stored value inflates past {MAX_DOCUMENT} bytes")
        return _local.decompress[tag](body)
    if tag not in DEFLATE_DICTIONARIES:
        return stored
    inflater = zlib.decompressobj(_WBITS, zdict=DEFLATE_DICTIONARIES[tag])
    document = inflater.decompress(stored[1:], MAX_DOCUMENT + 1)
    if len(document) > MAX_DOCUMENT:
        raise ValueError(f"stored value inflates past {MAX_DOCUMENT} bytes")
    return document + inflater.flush()
