"""Compression of stored JSON: small documents with the same keys shrink by 60% with a dictionary.

A stored value starts with `{` (plain JSON) or with a one-byte tag naming the dictionary it
was deflated with, so values stay readable by the code whatever it wrote before.
"""

from __future__ import annotations

import zlib

# Raw deflate, a 4 KiB window and little memory: ~12 us for a 500 B document here. Level 6
# stores 8% fewer bytes than level 1 for ~1.5 us more, which takes most values one jemalloc
# size class down (bench/core.py: 2,058 -> 2,015 B of Redis per sync).
_WBITS, _MEM_LEVEL, _LEVEL = -12, 4, 6

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
DICTIONARIES: dict[bytes, bytes] = {
    # Later bytes are cheaper to reference, so the most frequent strings come last.
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
SEED, FACTS = b"\x01", b"\x03"
OLD_FACTS = b"\x02"  # facts of the earlier split: the seed part held more (see store.syncs)


def pack(tag: bytes, document: bytes | str) -> bytes:
    """Deflates a JSON document with the dictionary `tag` names."""
    raw = document.encode() if isinstance(document, str) else document
    deflater = zlib.compressobj(_LEVEL, zlib.DEFLATED, _WBITS, _MEM_LEVEL, zdict=DICTIONARIES[tag])
    return tag + deflater.compress(raw) + deflater.flush()


def unpack(stored: bytes) -> bytes:
    """The JSON document back, whether it was stored plain or deflated."""
    tag = stored[:1]
    if tag not in DICTIONARIES:
        return stored
    inflater = zlib.decompressobj(_WBITS, zdict=DICTIONARIES[tag])
    return inflater.decompress(stored[1:]) + inflater.flush()
