"""Soft labels: a teacher's top-k log-probabilities per generated token, packed for the cache.

The in-memory form is ``factory.types.TokenLogprobs``. In the store (the cache table's ``logprobs`` BLOB,
and base64 in journal lines) it is one packed little-endian blob, about ``8 + 8k`` bytes per generated
token with ids (``4 + 8k`` more per token for token strings when ids are unknown):

    offset 0   u8   format version (1)
           1   u8   flags: 1 = token ids present, 2 = token strings present
           2   u32  n, the generated tokens
           6   u16  k, alternatives per position (the widest position; shorter ones are padded)
           8   f32  token_logprobs[n]                     (NaN where the teacher gave none)
               f32  top_logprobs[n * k]                   (NaN pads a position with fewer than k)
      ids:     i32  token_ids[n], i32 top_ids[n * k]      (-1 pads)
      strings: u16  byte lengths[n + n * k], then their UTF-8 bytes, chosen tokens first

float32 keeps what every engine computes (vLLM and the OpenAI API report float32 values); unpacking gives
back exactly the values packed, as Python floats.
"""

from __future__ import annotations

import math
import re
import struct
from array import array
from collections.abc import Sequence
from typing import Any

from factory.types import TokenLogprobs

VERSION = 1
_IDS, _STRINGS = 1, 2
_HEAD = struct.Struct("<BBIH")
_NAN = float("nan")
_TOKEN_ID = re.compile(r"token_id:(-?\d+)\Z")


def _le(a: array[Any]) -> bytes:
    if struct.pack("=I", 1) != struct.pack("<I", 1):  # pragma: no cover - a big-endian host
        a = array(a.typecode, a)
        a.byteswap()
    return a.tobytes()


def _from(typecode: str, data: bytes | memoryview) -> list[Any]:
    a = array(typecode)
    a.frombytes(data)
    if struct.pack("=I", 1) != struct.pack("<I", 1):  # pragma: no cover
        a.byteswap()
    return a.tolist()


def pack(lp: TokenLogprobs) -> bytes:
    """The blob the cache stores (see the module docstring)."""
    n = len(lp.top_logprobs)
    k = max((len(p) for p in lp.top_logprobs), default=0)
    has_ids = lp.token_ids is not None and lp.top_ids is not None
    has_strings = lp.tokens is not None and lp.top_tokens is not None
    flags = (_IDS if has_ids else 0) | (_STRINGS if has_strings else 0)
    parts = [_HEAD.pack(VERSION, flags, n, k)]
    chosen = [_NAN if v is None else v for v in lp.token_logprobs] if lp.token_logprobs else [_NAN] * n
    parts.append(_le(array("f", chosen)))
    parts.append(_le(array("f", [v for p in lp.top_logprobs for v in _pad(p, k, _NAN)])))
    if has_ids:
        assert lp.token_ids is not None and lp.top_ids is not None
        parts.append(_le(array("i", lp.token_ids)))
        parts.append(_le(array("i", [v for p in lp.top_ids for v in _pad(p, k, -1)])))
    if has_strings:
        assert lp.tokens is not None and lp.top_tokens is not None
        encoded = [t.encode() for t in lp.tokens] + [
            t.encode() for p in lp.top_tokens for t in _pad(p, k, "")
        ]
        parts.append(_le(array("H", [min(len(b), 0xFFFF) for b in encoded])))
        parts.append(b"".join(b[:0xFFFF] for b in encoded))
    return b"".join(parts)


def _pad(values: Sequence[Any], k: int, fill: Any) -> list[Any]:
    return list(values) + [fill] * (k - len(values))


def unpack(blob: bytes | bytearray | memoryview) -> TokenLogprobs:
    """The in-memory form of a blob made by ``pack``; ValueError when it is not one."""
    view = memoryview(blob)
    if len(view) < _HEAD.size:
        raise ValueError("logprobs blob too short")
    version, flags, n, k = _HEAD.unpack_from(view)
    if version != VERSION:
        raise ValueError(f"logprobs blob of format {version}; this version reads format {VERSION}")
    at = _HEAD.size

    def take(typecode: str, count: int) -> list[Any]:
        nonlocal at
        size = array(typecode).itemsize * count
        if at + size > len(view):
            raise ValueError("logprobs blob truncated")
        out = _from(typecode, view[at : at + size])
        at += size
        return out

    chosen = take("f", n)
    flat = take("f", n * k)
    if any(map(math.isnan, flat)):  # a position with fewer than k alternatives: NaN pads it
        width = [k - sum(map(math.isnan, flat[i * k : (i + 1) * k])) for i in range(n)]
    else:
        width = [k] * n
    top_logprobs = [flat[i * k : i * k + width[i]] for i in range(n)]
    token_ids = top_ids = tokens = top_tokens = None
    if flags & _IDS:
        token_ids = take("i", n)
        ids = take("i", n * k)
        top_ids = [ids[i * k : i * k + width[i]] for i in range(n)]
    if flags & _STRINGS:
        lengths = take("H", n + n * k)
        strings = []
        for length in lengths:
            if at + length > len(view):
                raise ValueError("logprobs blob truncated")
            strings.append(bytes(view[at : at + length]).decode("utf-8", errors="replace"))
            at += length
        tokens = strings[:n]
        top_tokens = [strings[n + i * k : n + i * k + width[i]] for i in range(n)]
    return TokenLogprobs(
        token_ids=token_ids,
        top_ids=top_ids,
        top_logprobs=top_logprobs,
        token_logprobs=chosen,
        tokens=tokens,
        top_tokens=top_tokens,
    )


def token_id(token: Any) -> int | None:
    """N for vLLM's ``token_id:N`` (its server's ``return_tokens_as_token_ids``), else None."""
    if isinstance(token, str):
        m = _TOKEN_ID.match(token)
        if m:
            return int(m.group(1))
    return None


def from_openai(content: Any) -> TokenLogprobs | None:
    """The ``choices[0].logprobs.content`` list of an OpenAI-style answer in the canonical form: ids when
    every token is ``token_id:N`` (vLLM asked with ``return_tokens_as_token_ids``), else token strings
    only (ids unknown). None when the answer holds no such list."""
    if not isinstance(content, list):
        return None
    tokens: list[str] = []
    chosen: list[float] = []
    top_tokens: list[list[str]] = []
    top_logprobs: list[list[float]] = []
    for entry in content:
        if not isinstance(entry, dict):
            return None
        tokens.append(str(entry.get("token") or ""))
        chosen.append(_float(entry.get("logprob")))
        alts = [a for a in entry.get("top_logprobs") or [] if isinstance(a, dict)]
        top_tokens.append([str(a.get("token") or "") for a in alts])
        top_logprobs.append([_float(a.get("logprob")) for a in alts])
    ids = [token_id(t) for t in tokens]
    top_ids = [[token_id(t) for t in p] for p in top_tokens]
    if all(i is not None for i in ids) and all(i is not None for p in top_ids for i in p):
        return TokenLogprobs(
            token_ids=[int(i) for i in ids if i is not None],
            top_ids=[[int(i) for i in p if i is not None] for p in top_ids],
            top_logprobs=top_logprobs,
            token_logprobs=chosen,
        )
    return TokenLogprobs(
        token_ids=None,
        top_ids=None,
        top_logprobs=top_logprobs,
        token_logprobs=chosen,
        tokens=tokens,
        top_tokens=top_tokens,
    )


def _float(value: Any) -> float:
    """A logprob as float32 holds it (what the store keeps), NaN when missing."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(array("f", [value])[0])
    return _NAN


def to_float32(values: Sequence[float]) -> list[float]:
    """Values rounded to float32, as the store keeps them."""
    return array("f", values).tolist()
