"""JSON Merge Patch (RFC 7386) and secret masking."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from monitor.patching import MASK, mask_secrets, merge_patch

# RFC 7386 Appendix A, every row: (original, patch, result).
RFC7386_APPENDIX_A: list[tuple[Any, Any, Any]] = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(
    ("original", "patch", "expected"),
    RFC7386_APPENDIX_A,
    ids=[f"A{i + 1}" for i in range(len(RFC7386_APPENDIX_A))],
)
def test_merge_patch_rfc7386_appendix_a(original: Any, patch: Any, expected: Any) -> None:
    before = (copy.deepcopy(original), copy.deepcopy(patch))
    assert merge_patch(original, patch) == expected
    assert (original, patch) == before  # neither input is mutated


def test_merge_patch_rfc7386_section_3_example() -> None:
    original = {
        "title": "Goodbye!",
        "author": {"givenName": "John", "familyName": "Doe"},
        "tags": ["example", "sample"],
        "content": "This will be unchanged",
    }
    patch = {
        "title": "Hello!",
        "phoneNumber": "+01-123-456-7890",
        "author": {"familyName": None},
        "tags": ["example"],
    }
    assert merge_patch(original, patch) == {
        "title": "Hello!",
        "author": {"givenName": "John"},
        "tags": ["example"],
        "content": "This will be unchanged",
        "phoneNumber": "+01-123-456-7890",
    }


def test_merge_patch_result_shares_no_dict_with_target() -> None:
    target = {"a": {"b": 1}}
    result = merge_patch(target, {"a": {"c": 2}})
    result["a"]["d"] = 3
    assert target == {"a": {"b": 1}}


MASK_CASES: list[tuple[str, Any, Any]] = [
    ("secret", {"secret": "s"}, {"secret": MASK}),
    ("client_secret", {"client_secret": "s"}, {"client_secret": MASK}),
    ("password", {"password": "p"}, {"password": MASK}),
    ("db_password_2", {"db_password_2": "p"}, {"db_password_2": MASK}),
    ("token", {"token": "t"}, {"token": MASK}),
    ("refresh_token", {"refresh_token": "t"}, {"refresh_token": MASK}),
    ("api_key", {"api_key": "k"}, {"api_key": MASK}),
    ("private_key", {"private_key": "k"}, {"private_key": MASK}),
    (
        "upper case",
        {"CLIENT_SECRET": "s", "Password": "p"},
        {"CLIENT_SECRET": MASK, "Password": MASK},
    ),
    (
        "camel case",
        {"accessToken": "t", "myApi_Key": "k"},
        {"accessToken": MASK, "myApi_Key": MASK},
    ),
    ("non-string secrets", {"token": 123, "secret": True}, {"token": MASK, "secret": MASK}),
    ("secret object masked whole", {"secrets": {"a": "x", "b": "y"}}, {"secrets": MASK}),
    ("secret list masked whole", {"tokens": ["a", "b"]}, {"tokens": MASK}),
    (
        "nested",
        {"properties": {"kind": "stripe_key", "secret": "sk_live", "test": True}},
        {"properties": {"kind": "stripe_key", "secret": MASK, "test": True}},
    ),
    (
        "deeply nested",
        {"a": {"b": {"c": {"d": {"private_key": "pk", "id": 1}}}}},
        {"a": {"b": {"c": {"d": {"private_key": MASK, "id": 1}}}}},
    ),
    (
        "dicts in lists",
        {"keys": [{"api_key": "k1", "name": "one"}, {"api_key": "k2"}, "plain", 3]},
        {"keys": [{"api_key": MASK, "name": "one"}, {"api_key": MASK}, "plain", 3]},
    ),
    (
        "non-secret names kept",
        {"id": "c1", "username": "bob", "provider": "stripe", "oauth_app_id": None, "n": 1},
        {"id": "c1", "username": "bob", "provider": "stripe", "oauth_app_id": None, "n": 1},
    ),
    ("null secret stays null", {"token": None}, {"token": None}),
    ("non-secret value that looks secret", {"note": "password"}, {"note": "password"}),
    ("empty", {}, {}),
    ("none", None, None),
    ("scalar", "token", "token"),
    ("top-level list", [{"secret": "s"}], [{"secret": MASK}]),
]


@pytest.mark.parametrize(
    ("value", "expected"), [c[1:] for c in MASK_CASES], ids=[c[0] for c in MASK_CASES]
)
def test_mask_secrets(value: Any, expected: Any) -> None:
    before = copy.deepcopy(value)
    assert mask_secrets(value) == expected
    assert value == before  # the input is not mutated


def test_mask_secrets_is_idempotent() -> None:
    value = {"secret": "s", "nested": [{"token": "t"}], "user": "u"}
    once = mask_secrets(value)
    assert mask_secrets(once) == once
