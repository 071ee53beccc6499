"""Canonical JSON and the content hashes built on it.

The canonical form is a contract: JSON with sorted keys, no whitespace, UTF-8 (non-ASCII kept as is),
floats as Python's shortest repr, and a version tag as the first thing hashed. Changing any of it
changes every key, so a new form gets a new version tag and old cache rows simply stop matching.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

REQUEST_KEY_VERSION = "rk1"
RECORD_ID_VERSION = "rid1"


def canonical_json(value: Any) -> bytes:
    """Sorted-key, compact JSON bytes. Non-string dict keys are rejected rather than coerced."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def digest(tag: str, value: Any, length: int = 32) -> str:
    h = hashlib.blake2b(tag.encode() + b"\x00" + canonical_json(value), digest_size=length // 2)
    return h.hexdigest()


def request_key(teacher: dict[str, Any], body: dict[str, Any]) -> str:
    """The cache key: identical (teacher identity, messages, sampling, sample index, schema) → same key."""
    return request_key_raw(canonical_json(teacher), canonical_json(body))


def request_key_raw(teacher_json: bytes, body_json: bytes) -> str:
    """``request_key`` from the canonical JSON of both parts: the tag, the teacher, the body, NUL-separated."""
    h = hashlib.blake2b(
        REQUEST_KEY_VERSION.encode() + b"\x00" + teacher_json + b"\x00" + body_json, digest_size=16
    )
    return h.hexdigest()


def record_id(run_id: str, stage: str, seed_id: str, sample_index: int) -> str:
    return digest(RECORD_ID_VERSION, [run_id, stage, seed_id, sample_index], length=24)
