"""JSON Merge Patch (RFC 7386) and secret masking: the two rewrites of sync fields."""

from __future__ import annotations

import re
from typing import Any

MASK = "***********"
_SECRET_NAME = re.compile(r"secret|password|token|api_key|private_key", re.IGNORECASE)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 section 2: objects merge recursively, `null` removes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def mask_secrets(value: Any) -> Any:
    """Replaces the value of every key naming a secret, at any depth, so none is ever stored."""
    if isinstance(value, dict):
        return {
            key: MASK if _SECRET_NAME.search(key) and item is not None else mask_secrets(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [mask_secrets(item) for item in value]
    return value
