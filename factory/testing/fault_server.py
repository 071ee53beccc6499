"""A fast OpenAI-compatible chat-completions server with injected latency and faults.

Used by tests and benchmarks to stand in for a teacher endpoint. Everything it does is cheap and
deterministic where it can be:

* replies depend only on the raw request body (equal bodies, equal replies);
* faults and rejections are picked per distinct body by its hash (salted with ``seed``);
* latency is ``latency`` seconds plus, if ``latency_median`` is set, a lognormal draw from an RNG
  seeded with ``seed``; it is always an ``await asyncio.sleep``.

Order of checks for ``POST /v1/chat/completions``:

1. an active outage (``POST /admin/outage``) fails the request at once with its kind;
2. the ``rpm`` token bucket (capacity ``rpm_burst`` or ``rpm``, refilled at ``rpm / 60`` per second)
   answers 429 with ``Retry-After`` (integer seconds, at least 1) and ``retry-after-ms``;
3. a body that is not a JSON object with a ``messages`` list gets 400;
4. a body picked by ``reject_rate`` gets 400, every time;
5. a body picked by ``fault_rate`` fails its first ``fault_repeats`` attempts with its kind
   (``429`` at once; ``500``, ``reset`` and ``truncated`` after the latency; ``timeout`` hangs for
   ``hang_seconds``; ``disconnect`` and ``stall`` break the answer halfway through), then succeeds;
6. otherwise, after the latency, a 200 chat completion, streamed as server-sent events when the body
   asks for ``stream``. A streamed body is answered (and picked for faults) as the same body without
   ``stream`` and ``stream_options``, in compact JSON: streamed and plain, a request gets one answer.
   With ``logprobs: true`` and ``top_logprobs: k``, each choice carries ``logprobs.content`` made up from
   the body (``fake_logprobs``), its tokens named ``token_id:N`` when the body sets
   ``return_tokens_as_token_ids`` (as vLLM's server does).

Reasoning models and streaming (``reasoning``, ``reasoning_tokens``, ``stream_chunk_chars``,
``stream_delay``; the ``disconnect`` and ``stall`` faults): see ``factory.testing.fault_stream``.

Between 3 and 4, the ``tpm`` bucket (capacity ``tpm_burst`` or ``tpm``, refilled at ``tpm / 60`` per second) charges each
request its body bytes / 4 plus its ``max_tokens`` and answers 429 with ``Retry-After`` when it lacks them;
a 200 gives back what its usage did not spend. With ``ratelimit_headers``, every 200 and rate-limit 429
carries OpenAI's ``x-ratelimit-limit|remaining|reset-requests|tokens`` (resets as ``1m2.5s``-style
durations) for the ``rpm`` and ``tpm`` buckets that are set.

Endpoints: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /admin/stats[?detail=1]``,
``POST /admin/reset``, ``POST /admin/outage?seconds=S&kind=K``, and OpenAI's Batch API
(``POST /v1/files``, ``GET /v1/files/{id}[/content]``, ``POST /v1/batches``, ``GET /v1/batches[/{id}]``,
``POST /v1/batches/{id}/cancel``; see ``factory.testing.fault_batch``: batch states, their delays
``batch_*``, limits, output and error files). Batches and files live in the server process only.
``/admin/stats`` counts batch lines under ``batch``.

In-process: ``with serve_in_thread(FaultConfig(latency=0.2)) as srv: ... srv.base_url``; or, inside
a running loop, ``async with serve(config) as srv``. Out of process: ``start_subprocess(latency=0.2)``
or ``python -m factory.testing.fault_server --port 0 --latency 0.2``, which prints exactly one line,
``listening on http://127.0.0.1:PORT/v1``, once bound.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import inspect
import math
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from hashlib import blake2b
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from factory.testing import fault_stream
from factory.testing.fault_batch import BatchStore

__all__ = [
    "FAULT_KINDS",
    "OUTAGE_KINDS",
    "STATE_KEY",
    "AsyncHandle",
    "FaultConfig",
    "FaultServer",
    "SubprocessHandle",
    "ThreadHandle",
    "body_key",
    "default_reply",
    "main",
    "make_app",
    "serve",
    "serve_in_thread",
    "start_subprocess",
]

HOST = "127.0.0.1"
FAULT_KINDS = ("429", "500", "timeout", "reset", "truncated", *fault_stream.STREAM_FAULTS)
OUTAGE_KINDS = FAULT_KINDS
LISTEN_PREFIX = "listening on "

ReplyFn = Callable[[list, dict], Any]


@dataclass
class FaultConfig:
    """Options of the fault server. Rates are fractions of distinct request bodies, in [0, 1]."""

    latency: float = 0.0
    """Fixed delay in seconds before every answer (added to the lognormal draw, if any)."""
    latency_median: float = 0.0
    """If > 0, add a lognormal delay with this median (seconds) ..."""
    latency_sigma: float = 0.0
    """... and this sigma (of the underlying normal; 1.0 gives a heavy tail)."""
    latency_max: float | None = None
    """Cap on the total delay when the lognormal draw is on, in seconds (None: no cap)."""
    rpm: float | None = None
    """Requests per minute admitted; beyond it 429 with Retry-After. None or 0: unlimited."""
    rpm_burst: float | None = None
    """Token-bucket capacity; defaults to ``rpm`` (a fresh minute's worth)."""
    tpm: float | None = None
    """Tokens per minute admitted (body bytes / 4 + ``max_tokens``); beyond it 429. None or 0: unlimited."""
    tpm_burst: float | None = None
    """Its bucket's capacity in tokens; defaults to ``tpm`` (a fresh minute's worth)."""
    ratelimit_headers: bool = False
    """Send OpenAI's ``x-ratelimit-*`` headers for the ``rpm`` / ``tpm`` buckets."""
    fault_rate: float = 0.0
    fault_kinds: Sequence[str] = ("500",)
    """Kinds among ``FAULT_KINDS``; a picked body gets one of them, chosen by its hash."""
    fault_repeats: int = 1
    """A picked body fails this many attempts, then succeeds."""
    retry_after: float = 1.0
    """Seconds advertised by injected 429s (``Retry-After`` rounded up, ``retry-after-ms`` exact)."""
    reject_rate: float = 0.0
    """Share of bodies answered 400 every time."""
    seed: int = 0
    """Seeds the latency RNG and salts which bodies get faults or rejections."""
    model: str = "fault-server"
    """Model id listed by /v1/models and echoed when a request names none."""
    hang_seconds: float = 3600.0
    """How long a ``timeout`` fault holds the request (the server answers nothing before)."""
    api_key: str | None = None
    """When set, a request without ``Authorization: Bearer <api_key>`` gets 401, whose message echoes the
    header it got (as some servers do: what a client stores of it must be scrubbed)."""
    strict_model: bool = False
    """A request naming another model than ``model`` gets 404, worded as vLLM's server words it."""
    reply: ReplyFn | None = field(default=None, repr=False)
    """``reply(messages, body) -> str`` (or an awaitable of str) overriding the default text."""
    reasoning: str | None = None
    """Answer as a reasoning model: ``reasoning_content``, ``reasoning`` (the field the trace goes in)
    or ``think`` (``<think>…</think>`` in the content); None: plain answers. See fault_stream."""
    reasoning_tokens: int = 48
    """About how many tokens a reasoning trace holds (4 characters each)."""
    stream_chunk_chars: int = 16
    """Characters of text per streamed chunk."""
    stream_delay: float = 0.0
    """Seconds between two streamed chunks."""
    batch_validating_s: float = 0.0
    """Batch API: seconds a new batch stays ``validating``."""
    batch_rate: float = 0.0
    """Batch API: requests run per second within a batch (0: as fast as the loop goes)."""
    batch_finalizing_s: float = 0.0
    """Batch API: seconds a batch stays ``finalizing`` before ``completed``."""
    batch_window_s: float = 86400.0
    """Batch API: seconds after creation at which an unfinished batch expires (``24h`` by default)."""
    batch_max_lines: int = 50_000
    """Batch API: most requests (non-blank lines) an uploaded file may hold."""
    batch_max_bytes: int = 200 * 1024 * 1024
    """Batch API: most bytes an uploaded file may hold."""

    def __post_init__(self) -> None:
        kinds = self.fault_kinds
        if isinstance(kinds, (str, int)):
            kinds = str(kinds).split(",")
        self.fault_kinds = tuple(str(k).strip() for k in kinds if str(k).strip())
        for kind in self.fault_kinds:
            if kind not in FAULT_KINDS:
                raise ValueError(f"unknown fault kind {kind!r}; choose among {', '.join(FAULT_KINDS)}")
        for name in ("fault_rate", "reject_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {value}")
        if self.fault_rate > 0 and not self.fault_kinds:
            raise ValueError("fault_rate > 0 needs at least one fault kind")
        if self.fault_repeats < 0:
            raise ValueError("fault_repeats must be >= 0")
        if self.latency < 0 or self.latency_median < 0 or self.latency_sigma < 0:
            raise ValueError("latency, latency_median and latency_sigma must be >= 0")
        if self.rpm is not None and self.rpm < 0:
            raise ValueError("rpm must be >= 0")
        for name in ("batch_validating_s", "batch_rate", "batch_finalizing_s"):
            if not 0.0 <= getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        if not 0.0 < self.batch_window_s < math.inf:
            raise ValueError(f"batch_window_s must be a finite number > 0, got {self.batch_window_s}")
        if self.batch_max_lines < 1 or self.batch_max_bytes < 1:
            raise ValueError("batch_max_lines and batch_max_bytes must be >= 1")
        if self.reasoning is not None and self.reasoning not in fault_stream.REASONING_MODES:
            raise ValueError(
                f"unknown reasoning mode {self.reasoning!r}; choose among {', '.join(fault_stream.REASONING_MODES)}"
            )
        if self.reasoning_tokens < 1 or self.stream_chunk_chars < 1:
            raise ValueError("reasoning_tokens and stream_chunk_chars must be >= 1")
        if not 0.0 <= self.stream_delay < math.inf:
            raise ValueError(f"stream_delay must be a finite number >= 0, got {self.stream_delay}")


def body_key(raw: bytes) -> str:
    """The stats key of a request body: blake2b of the raw bytes, 16 hex characters."""
    return blake2b(raw, digest_size=8).hexdigest()


def default_reply(key: str) -> str:
    n = int(key[:6], 16) % 100
    return f"Step 1: we read the problem. Step 2: we compute ({key[6:12]}). The answer is {n}."


_MASK64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    """splitmix64 finalizer: spreads the bits so that slices of the result are independent."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


_JSON = "application/json"
_STREAM_FIELDS = ("stream", "stream_options")
_U24 = float(1 << 24)


def _error_body(message: str, type_: str, code: str) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "param": None, "code": code}})


_ERR_500 = _error_body("injected fault: internal server error", "server_error", "injected_fault")
_ERR_429 = _error_body("injected fault: rate limited", "rate_limit_error", "injected_fault")
_ERR_RPM = _error_body(
    "rate limit reached for requests per minute", "rate_limit_error", "rate_limit_exceeded"
)
_ERR_REJECT = _error_body(
    "injected rejection: invalid request", "invalid_request_error", "injected_rejection"
)
_ERR_OUTAGE_500 = _error_body("injected outage: service unavailable", "server_error", "injected_outage")
_ERR_OUTAGE_429 = _error_body("injected outage: rate limited", "rate_limit_error", "injected_outage")


_ERR_TPM = _error_body("tokens per minute limit reached", "rate_limit_error", "rate_limit_exceeded")


def _duration(seconds: float) -> str:
    """OpenAI's form of a reset time: ``20ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1.0:
        return f"{max(0, round(seconds * 1000))}ms"
    minutes, rest = divmod(round(seconds, 3), 60.0)
    secs = f"{rest:.3f}".rstrip("0").rstrip(".")
    return f"{int(minutes)}m{secs}s" if minutes else f"{secs}s"


def _tokens(text: str) -> int:
    return (len(text) + 3) // 4


LOGPROB_VOCAB = 50_000  # the token ids of the logprobs the server makes up


def fake_logprobs(text: str, key: str, top: int, as_ids: bool) -> dict[str, Any]:
    """OpenAI's ``choices[i].logprobs`` for ``text``: one entry per 4-character token (as many as the
    usage's completion_tokens), each with ``top`` alternatives, best first, the first being the token
    itself. Ids and logprobs are drawn from the request key and the position, so equal bodies get equal
    logprobs. With ``as_ids`` tokens are named ``token_id:N``, as vLLM's server does when asked with
    ``return_tokens_as_token_ids``; else by their text (the alternatives get a ``~r`` suffix)."""
    content = []
    for pos in range(_tokens(text)):
        piece = text[4 * pos : 4 * pos + 4]
        h = blake2b(f"{key}/{pos}".encode(), digest_size=16).digest()
        ids = [int.from_bytes(h[2 * r : 2 * r + 2], "big") % LOGPROB_VOCAB for r in range(min(top, 8))]
        ids += [(ids[0] + 7919 * r) % LOGPROB_VOCAB for r in range(len(ids), top)]
        # logprobs exactly representable in float32, strictly decreasing
        lps = [-(r + 1) * 0.5 - h[15] / 256.0 for r in range(top)] or [-h[15] / 256.0]
        names = (
            [f"token_id:{i}" for i in ids] if as_ids else [piece] + [f"{piece}~{r}" for r in range(1, top)]
        )
        chosen = names[0] if names else (f"token_id:{h[0]}" if as_ids else piece)
        content.append(
            {
                "token": chosen,
                "logprob": lps[0],
                "bytes": list(chosen.encode()),
                "top_logprobs": [
                    {"token": t, "logprob": lp, "bytes": list(t.encode())}
                    for t, lp in zip(names, lps, strict=False)
                ],
            }
        )
    return {"content": content}


class FaultServer:
    """The state and handlers behind one app. All mutation happens on the server's event loop."""

    def __init__(self, config: FaultConfig):
        self.config = config
        self._rng = random.Random(config.seed)
        self._salt = int.from_bytes(
            blake2b(f"fault-server/{config.seed}".encode(), digest_size=8).digest(), "big"
        )
        self._fault_cut = int(config.fault_rate * _U24)
        self._reject_cut = int(config.reject_rate * _U24)
        self._kinds = tuple(config.fault_kinds)
        self._rate = (config.rpm or 0) / 60.0
        self._burst = float(config.rpm_burst or config.rpm or 0)
        self._lognormal = config.latency_median > 0
        self._mu = math.log(config.latency_median) if self._lognormal else 0.0
        self.stopping = asyncio.Event()
        self.started = time.time()
        self._routes = self.routes
        self.batch = BatchStore(self)
        self.reset()

    # ------------------------------------------------------------------ state

    def reset(self) -> None:
        """Zero every counter, forget fault attempts, refill the rate bucket and end any outage."""
        self.requests = 0
        self.responses: dict[int, int] = {}
        self.dropped: dict[str, int] = {}
        self.faults: dict[str, int] = {}
        self.rate_limited = 0
        self.rejected = 0
        self.unauthorized = 0
        self.per_body: dict[str, int] = {}
        self.received_at: list[float] = []  # time.monotonic() of each chat request as it came in
        self.answered_at: dict[str, float] = {}  # per body, its latest 200 answer, as it is handed over
        self.tokens_out = 0  # completion tokens of the 200 answers
        self._attempts: dict[str, int] = {}
        self.in_flight = getattr(self, "in_flight", 0)  # requests still running keep counting
        self.max_in_flight = self.in_flight
        self._tokens = self._burst
        self._refilled = time.monotonic()
        self._outage_until = 0.0
        self._outage_kind = "500"
        self._reset_tpm()
        self.batch.reset_counters()

    def set_outage(self, seconds: float, kind: str = "500") -> dict[str, Any]:
        if kind not in OUTAGE_KINDS:
            raise ValueError(f"unknown outage kind {kind!r}; choose among {', '.join(OUTAGE_KINDS)}")
        if seconds < 0 or not math.isfinite(seconds):
            raise ValueError(f"outage seconds must be a finite number >= 0, got {seconds}")
        self._outage_kind = kind
        self._outage_until = time.monotonic() + seconds if seconds > 0 else 0.0
        return {"kind": kind, "seconds": seconds}

    def snapshot(self, detail: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "requests": self.requests,
            "responses": {str(k): v for k, v in sorted(self.responses.items())},
            "dropped": dict(self.dropped),
            "faults": dict(self.faults),
            "rate_limited": self.rate_limited,
            "rejected": self.rejected,
            "unauthorized": self.unauthorized,
            "distinct_bodies": len(self.per_body),
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "tokens_out": self.tokens_out,
            "outage_s": max(0.0, self._outage_until - time.monotonic()),
            "uptime_s": time.time() - self.started,
            "batch": self.batch.counters(),
        }
        if detail:
            out["per_body"] = dict(self.per_body)
            out["received_at"] = list(self.received_at)
            out["answered_at"] = dict(self.answered_at)
            out["now"] = time.monotonic()  # the clock of the times above (CLOCK_MONOTONIC, system-wide)
        return out

    # --------------------------------------------------------------- helpers

    def _respond(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> web.Response:
        responses = self.responses
        responses[status] = responses.get(status, 0) + 1
        return web.Response(status=status, body=body, content_type=_JSON, headers=headers)

    def _delay(self) -> float:
        delay = self.config.latency
        if self._lognormal:
            delay += self._rng.lognormvariate(self._mu, self.config.latency_sigma)
            cap = self.config.latency_max
            if cap is not None and delay > cap:
                delay = cap
        return delay

    def _retry_headers(self, seconds: float) -> dict[str, str]:
        return {"Retry-After": str(max(0, math.ceil(seconds))), "retry-after-ms": str(int(seconds * 1000))}

    async def _fail(
        self, request: web.BaseRequest, kind: str, key: str, body: dict | None = None, outage: bool = False
    ) -> web.StreamResponse:
        faults = self.faults
        faults[kind] = faults.get(kind, 0) + 1
        if kind == "429":
            if outage:
                left = max(1.0, self._outage_until - time.monotonic())
                return self._respond(429, _ERR_OUTAGE_429, self._retry_headers(left))
            return self._respond(429, _ERR_429, self._retry_headers(self.config.retry_after))
        if kind == "timeout":
            self.dropped["timeout"] = self.dropped.get("timeout", 0) + 1
            # Hang; the client gives up first. Ends early only when the server stops.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), self.config.hang_seconds)
            return self._respond(503, _ERR_OUTAGE_500)
        if not outage:
            delay = self._delay()
            if delay > 0:
                await asyncio.sleep(delay)
        if kind in fault_stream.STREAM_FAULTS:
            self.dropped[kind] = self.dropped.get(kind, 0) + 1
            body = body or {}
            messages = body.get("messages")
            doc = self._shaped(body, messages if isinstance(messages, list) else [], key)
            if body.get("stream"):
                return await self._stream(request, doc, body, kind)
            return await fault_stream.broken_plain(request, doc, kind, self._hang, _abort)
        if kind == "500":
            return self._respond(500, _ERR_OUTAGE_500 if outage else _ERR_500)
        if kind == "reset":
            self.dropped["reset"] = self.dropped.get("reset", 0) + 1
            _abort(request)
            # The write of this response fails quietly on the closed transport.
            return web.Response(status=500, body=b"")
        # truncated: a 200 whose body is the first half of a real completion.
        body = body or {}
        messages = body.get("messages")
        full = orjson.dumps(self._completion(body, messages if isinstance(messages, list) else [], key))
        return self._respond(200, full[: len(full) // 2])

    def _shaped(self, body: dict, messages: list, key: str, text: str | None = None) -> dict[str, Any]:
        """A completion with the configured reasoning (a trace, cut by max_tokens)."""
        doc = self._completion(body, messages, key, text)
        mode = self.config.reasoning
        if mode is None:
            return doc
        return fault_stream.with_reasoning(
            doc, body, mode, fault_stream.trace(key, self.config.reasoning_tokens)
        )

    def _hang(self) -> Any:
        return asyncio.wait_for(self.stopping.wait(), self.config.hang_seconds)

    async def _stream(
        self, request: web.BaseRequest, doc: dict, body: dict, fault: str | None
    ) -> web.StreamResponse:
        if fault is None:
            self.responses[200] = self.responses.get(200, 0) + 1
        cfg = self.config
        return await fault_stream.stream(
            request, doc, body, chunk_chars=cfg.stream_chunk_chars, delay=cfg.stream_delay, fault=fault,
            hang=self._hang, abort=_abort,
        )  # fmt: skip

    def _completion(self, body: dict, messages: list, key: str, text: str | None = None) -> dict[str, Any]:
        if text is None:
            text = default_reply(key)
        prompt_tokens = 0
        for m in messages:
            content = m.get("content") if isinstance(m, dict) else m
            prompt_tokens += 4 + _tokens(content if isinstance(content, str) else str(content))
        n = body.get("n") or 1
        top = body.get("top_logprobs") if body.get("logprobs") is True else None
        top = top if isinstance(top, int) and 0 <= top <= 20 else None
        as_ids = body.get("return_tokens_as_token_ids") is True

        def logprobs(t: str, k: str) -> dict[str, Any] | None:
            return None if top is None else fake_logprobs(t, k, top, as_ids)

        choices = [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": logprobs(text, key),
                "finish_reason": "stop",
            }
        ]
        completion_tokens = _tokens(text)
        for i in range(1, n if isinstance(n, int) and 0 < n <= 128 else 1):
            alt = default_reply(blake2b(f"{key}/{i}".encode(), digest_size=8).hexdigest())
            completion_tokens += _tokens(alt)
            choices.append(
                {
                    "index": i,
                    "message": {"role": "assistant", "content": alt},
                    "logprobs": logprobs(alt, f"{key}/{i}"),
                    "finish_reason": "stop",
                }
            )
        model = body.get("model")
        return {
            "id": "chatcmpl-" + key,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model if isinstance(model, str) and model else self.config.model,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    # -------------------------------------------------------------- handlers

    @property
    def routes(self) -> dict[tuple[str, str], Callable[[web.BaseRequest], Any]]:
        return {
            ("POST", "/v1/chat/completions"): self.chat,
            ("GET", "/v1/models"): self.models,
            ("GET", "/admin/stats"): self.admin_stats,
            ("POST", "/admin/reset"): self.admin_reset,
            ("POST", "/admin/outage"): self.admin_outage,
        }

    async def dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        """The whole server as one low-level handler: a dict lookup instead of the app router."""
        if request.method == "POST" and request.path == "/v1/chat/completions":
            return await self.chat(request)
        handler = self._routes.get((request.method, request.path))
        if handler is not None:
            return await handler(request)
        if request.path.startswith(("/v1/files", "/v1/batches")):
            return await self.batch.dispatch(request)
        if any(path == request.path for _, path in self._routes):
            return web.Response(
                status=405,
                body=_error_body("method not allowed", "invalid_request_error", "405"),
                content_type=_JSON,
            )
        return web.Response(
            status=404,
            body=_error_body(f"no route {request.path}", "invalid_request_error", "404"),
            content_type=_JSON,
        )

    async def chat(self, request: web.BaseRequest) -> web.StreamResponse:
        self.requests += 1
        self.received_at.append(time.monotonic())
        self.in_flight += 1
        if self.in_flight > self.max_in_flight:
            self.max_in_flight = self.in_flight
        try:
            raw = await request.read()
            key = blake2b(raw, digest_size=8).hexdigest()
            per_body = self.per_body
            per_body[key] = per_body.get(key, 0) + 1

            refused = self._refuse(request, raw)
            if refused is not None:
                return refused

            if self._outage_until and time.monotonic() < self._outage_until:
                return await self._fail(request, self._outage_kind, key, outage=True)

            if self._rate:
                now = time.monotonic()
                tokens = min(self._burst, self._tokens + (now - self._refilled) * self._rate)
                self._refilled = now
                if tokens < 1.0:
                    self._tokens = tokens
                    self.rate_limited += 1
                    wait = (1.0 - tokens) / self._rate
                    headers = {
                        "Retry-After": str(max(1, math.ceil(wait))),
                        "retry-after-ms": str(math.ceil(wait * 1000)),
                        **self._ratelimit_headers(),
                    }
                    return self._respond(429, _ERR_RPM, headers)
                self._tokens = tokens - 1.0

            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                return self._respond(
                    400, _error_body("body is not valid JSON", "invalid_request_error", "invalid_json")
                )
            messages = body.get("messages") if isinstance(body, dict) else None
            if not isinstance(messages, list):
                return self._respond(
                    400, _error_body("'messages' must be a list", "invalid_request_error", "invalid_messages")
                )

            if body.get("stream") or "stream_options" in body:
                # the answer of a streamed body is that of the same body sent plain (compact JSON)
                key = body_key(orjson.dumps({k: v for k, v in body.items() if k not in _STREAM_FIELDS}))

            charged = self._tpm_charge(raw, body)
            if isinstance(charged, web.Response):
                return charged

            if self._reject_cut or self._fault_cut:
                picked = self._pick(key)
                if picked == "reject":
                    return self._respond(400, _ERR_REJECT)
                if picked is not None:
                    return await self._fail(request, picked, key, body)

            delay = self._delay()
            if delay > 0:
                await asyncio.sleep(delay)

            doc = await self._answer_doc(body, messages, key)
            self._tpm_settle(charged, doc)
            if body.get("stream"):
                return await self._stream(request, doc, body, None)
            return self._respond(200, orjson.dumps(doc), self._ratelimit_headers())
        finally:
            self.in_flight -= 1

    # ------------------------------------------------------------ tpm and x-ratelimit-* headers

    def _reset_tpm(self) -> None:
        self._tpm_level = self._tpm_cap()
        self._tpm_refilled = time.monotonic()

    def _tpm_cap(self) -> float:
        return float(self.config.tpm_burst or self.config.tpm or 0)

    def _tpm_refill(self) -> float:
        now = time.monotonic()
        tpm = float(self.config.tpm or 0)
        self._tpm_level = min(self._tpm_cap(), self._tpm_level + (now - self._tpm_refilled) * tpm / 60.0)
        self._tpm_refilled = now
        return tpm

    def _tpm_charge(self, raw: bytes, body: dict) -> float | web.Response:
        """Take this request's tokens from the ``tpm`` bucket: the amount taken, or a 429."""
        if not self.config.tpm:
            return 0.0
        tpm = self._tpm_refill()
        max_tokens = body.get("max_tokens")
        cost = min(self._tpm_cap(), len(raw) // 4 + (max_tokens if isinstance(max_tokens, int) else 0))
        if cost > self._tpm_level:
            self.rate_limited += 1
            wait = (cost - self._tpm_level) * 60.0 / tpm
            headers = {
                "Retry-After": str(max(1, math.ceil(wait))),
                "retry-after-ms": str(math.ceil(wait * 1000)),
                **self._ratelimit_headers(),
            }
            return self._respond(429, _ERR_TPM, headers)
        self._tpm_level -= cost
        return cost

    def _tpm_settle(self, charged: float, doc: dict[str, Any]) -> None:
        """Give back what a 200 was charged beyond its usage."""
        if self.config.tpm and charged:
            self._tpm_refill()
            usage = doc.get("usage") or {}
            spent = int(usage.get("total_tokens") or 0)
            self._tpm_level = min(self._tpm_cap(), self._tpm_level + max(0.0, charged - spent))

    def _ratelimit_headers(self) -> dict[str, str]:
        if not self.config.ratelimit_headers:
            return {}
        out: dict[str, str] = {}
        if self._rate:
            left = max(0.0, min(self._burst, self._tokens + (time.monotonic() - self._refilled) * self._rate))
            out["x-ratelimit-limit-requests"] = str(int(self.config.rpm or 0))
            out["x-ratelimit-remaining-requests"] = str(int(left))
            out["x-ratelimit-reset-requests"] = _duration((self._burst - left) / self._rate)
        if self.config.tpm:
            tpm = self._tpm_refill()
            out["x-ratelimit-limit-tokens"] = str(int(tpm))
            out["x-ratelimit-remaining-tokens"] = str(int(max(0.0, self._tpm_level)))
            out["x-ratelimit-reset-tokens"] = _duration((self._tpm_cap() - self._tpm_level) * 60.0 / tpm)
        return out

    def _pick(self, key: str) -> str | None:
        """``"reject"``, a fault kind (counting this attempt) or None for the body with this key."""
        mixed = _mix64(int(key, 16) ^ self._salt)
        if (mixed & 0xFFFFFF) < self._reject_cut:
            self.rejected += 1
            return "reject"
        if ((mixed >> 24) & 0xFFFFFF) < self._fault_cut:
            attempt = self._attempts.get(key, 0) + 1
            self._attempts[key] = attempt
            if attempt <= self.config.fault_repeats:
                kinds = self._kinds
                return kinds[(mixed >> 48) % len(kinds)]
        return None

    async def _answer_doc(self, body: dict, messages: list, key: str) -> dict[str, Any]:
        text = None
        if self.config.reply is not None:
            text = self.config.reply(messages, body)
            if inspect.isawaitable(text):
                text = await text
            text = str(text)
        doc = self._shaped(body, messages, key, text)
        self.tokens_out += doc["usage"]["completion_tokens"]
        self.answered_at[key] = time.monotonic()
        return doc

    async def answer(self, raw: bytes) -> tuple[int, dict[str, Any]]:
        """One request of a batch: the status and JSON body that ``POST /v1/chat/completions`` would
        give this body, with no latency, rate limit or outage; a picked fault gives its status (429 for
        ``429``, 500 for the other kinds) and counts as an attempt, as online."""
        key = body_key(raw)
        self.per_body[key] = self.per_body.get(key, 0) + 1
        body = orjson.loads(raw)
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list):
            return 400, orjson.loads(
                _error_body("'messages' must be a list", "invalid_request_error", "invalid_messages")
            )
        if body.get("stream"):
            return 400, orjson.loads(
                _error_body("stream is not supported by the fault server", "invalid_request_error", "stream")
            )
        if self.config.strict_model and body.get("model") != self.config.model:
            message = f"The model `{body.get('model')}` does not exist."
            return 404, orjson.loads(_error_body(message, "NotFoundError", "404"))
        if self._reject_cut or self._fault_cut:
            picked = self._pick(key)
            if picked == "reject":
                return 400, orjson.loads(_ERR_REJECT)
            if picked is not None:
                self.faults[picked] = self.faults.get(picked, 0) + 1
                if picked == "429":
                    return 429, orjson.loads(_ERR_429)
                return 500, orjson.loads(_ERR_500)
        return 200, await self._answer_doc(body, messages, key)

    def refuse_key(self, request: web.BaseRequest) -> web.Response | None:
        """The ``api_key`` check: a 401 for a request without the right bearer key, else None."""
        cfg = self.config
        if cfg.api_key is not None:
            got = request.headers.get("Authorization", "")
            if got != f"Bearer {cfg.api_key}":
                self.unauthorized += 1
                message = f"Incorrect API key provided. You sent: Authorization: {got or '(none)'}"
                return self._respond(401, _error_body(message, "invalid_request_error", "invalid_api_key"))
        return None

    def _refuse(self, request: web.BaseRequest, raw: bytes) -> web.Response | None:
        """The account and model checks (``api_key``, ``strict_model``), before anything else."""
        cfg = self.config
        refused = self.refuse_key(request)
        if refused is not None:
            return refused
        if cfg.strict_model:
            try:
                model = orjson.loads(raw).get("model")
            except (orjson.JSONDecodeError, AttributeError):
                model = None
            if model != cfg.model:
                message = f"The model `{model}` does not exist."
                return self._respond(404, _error_body(message, "NotFoundError", "404"))
        return None

    async def models(self, request: web.BaseRequest) -> web.Response:
        data = {
            "object": "list",
            "data": [{"id": self.config.model, "object": "model", "created": 0, "owned_by": "fault-server"}],
        }
        return web.Response(body=orjson.dumps(data), content_type=_JSON)

    async def admin_stats(self, request: web.BaseRequest) -> web.Response:
        detail = request.query.get("detail", "0") not in ("", "0", "false", "no")
        return web.Response(body=orjson.dumps(self.snapshot(detail)), content_type=_JSON)

    async def admin_reset(self, request: web.BaseRequest) -> web.Response:
        self.reset()
        return web.Response(body=b'{"ok":true}', content_type=_JSON)

    async def admin_outage(self, request: web.BaseRequest) -> web.Response:
        try:
            out = self.set_outage(float(request.query.get("seconds", "0")), request.query.get("kind", "500"))
        except ValueError as exc:
            return web.Response(
                status=400,
                body=_error_body(str(exc), "invalid_request_error", "bad_outage"),
                content_type=_JSON,
            )
        return web.Response(body=orjson.dumps({"ok": True, **out}), content_type=_JSON)


def _abort(request: web.BaseRequest) -> None:
    """Drop the connection with no response (an RST where the socket allows it)."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, AttributeError, TypeError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


STATE_KEY = web.AppKey("fault_server", FaultServer)
MAX_BODY = 64 * 1024 * 1024


def make_app(config: FaultConfig | None = None) -> web.Application:
    """The server as an aiohttp ``Application`` (to embed or mount); its state is ``app[STATE_KEY]``.

    The bundled runners (``serve``, ``serve_in_thread``, the CLI) skip the application router and
    serve ``FaultServer.dispatch`` on aiohttp's low-level server, which costs less per request."""
    state = FaultServer(config or FaultConfig())
    app = web.Application(client_max_size=MAX_BODY)
    app[STATE_KEY] = state
    for (method, path), handler in state.routes.items():
        app.router.add_route(method, path, handler)
    for prefix in ("/v1/files", "/v1/batches"):
        app.router.add_route("*", prefix + "{tail:(/.*)?}", state.batch.dispatch)
    return app


async def _start(config: FaultConfig, port: int = 0) -> tuple[web.BaseRunner, FaultServer, int]:
    state = FaultServer(config)
    loop = asyncio.get_running_loop()

    def request_factory(message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> web.BaseRequest:
        return web.BaseRequest(message, payload, protocol, writer, task, loop, client_max_size=MAX_BODY)

    server = web.Server(
        state.dispatch,
        request_factory=request_factory,
        handler_cancellation=True,  # a client that gives up releases its hung or sleeping handler
        access_log=None,
        keepalive_timeout=75.0,
    )
    runner = web.ServerRunner(server, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, HOST, port, backlog=4096, reuse_address=True)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, state, runner.addresses[0][1]


async def _stop(runner: web.BaseRunner, state: FaultServer) -> None:
    state.stopping.set()
    await state.batch.aclose()
    await runner.cleanup()


def _config_from(config: FaultConfig | None, options: dict[str, Any]) -> FaultConfig:
    if config is None:
        return FaultConfig(**options)
    return dataclasses.replace(config, **options) if options else config


# ---------------------------------------------------------------------------- handles


class _Handle:
    port: int

    @property
    def root_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


class AsyncHandle(_Handle):
    """A server on the caller's running loop (see ``serve``); methods act on the state directly."""

    def __init__(self, runner: web.BaseRunner, state: FaultServer, port: int):
        self.runner, self.state, self.port = runner, state, port

    def stats(self, detail: bool = False) -> dict[str, Any]:
        return self.state.snapshot(detail)

    def reset(self) -> None:
        self.state.reset()

    def outage(self, seconds: float, kind: str = "500") -> None:
        self.state.set_outage(seconds, kind)

    async def aclose(self) -> None:
        await _stop(self.runner, self.state)

    def stop(self) -> None:
        raise RuntimeError("use 'await handle.aclose()' (or 'async with serve(...)') on the loop's thread")


@contextlib.asynccontextmanager
async def serve(
    config: FaultConfig | None = None, *, port: int = 0, **options: Any
) -> AsyncIterator[AsyncHandle]:
    """Run the server on the current event loop for the duration of the ``async with`` block."""
    runner, state, bound = await _start(_config_from(config, options), port)
    handle = AsyncHandle(runner, state, bound)
    try:
        yield handle
    finally:
        await handle.aclose()


class ThreadHandle(_Handle):
    """A server running on its own event loop in a daemon thread. Methods are thread-safe."""

    def __init__(self, config: FaultConfig, port: int = 0, uvloop: bool = False):
        self.config = config
        self.port = port
        self._use_uvloop = uvloop
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self.state: FaultServer | None = None
        self._thread = threading.Thread(target=self._run, name="fault-server", daemon=True)

    def start(self, timeout: float = 10.0) -> ThreadHandle:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"fault server thread did not start within {timeout}s")
        if self._error is not None:
            raise RuntimeError(f"fault server failed to start: {self._error!r}") from self._error
        return self

    def _run(self) -> None:
        loop = _new_loop(self._use_uvloop)
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        finally:
            with contextlib.suppress(Exception):
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            self._ready.set()

    async def _main(self) -> None:
        self._stop_event = asyncio.Event()
        try:
            runner, state, self.port = await _start(self.config, self.port)
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self.state = state
        self._ready.set()
        try:
            await self._stop_event.wait()
        finally:
            await _stop(runner, state)

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        loop = self._loop
        if loop is None or not self._thread.is_alive():
            raise RuntimeError("fault server is not running")

        async def _do() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(_do(), loop).result(10)

    def stats(self, detail: bool = False) -> dict[str, Any]:
        assert self.state is not None
        return self._call(self.state.snapshot, detail)

    def reset(self) -> None:
        assert self.state is not None
        self._call(self.state.reset)

    def outage(self, seconds: float, kind: str = "500") -> None:
        assert self.state is not None
        self._call(self.state.set_outage, seconds, kind)

    def stop(self, timeout: float = 10.0) -> None:
        loop, event = self._loop, self._stop_event
        if loop is not None and event is not None and self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(event.set)
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)


def serve_in_thread(
    config: FaultConfig | None = None, *, port: int = 0, uvloop: bool = False, **options: Any
) -> ThreadHandle:
    """Start a server in a background thread and return its handle, which is also a context manager:
    ``with serve_in_thread(FaultConfig(latency=0.2)) as srv: ...``. ``options`` override ``config``."""
    return ThreadHandle(_config_from(config, options), port=port, uvloop=uvloop).start()


class SubprocessHandle(_Handle):
    """A server in a child process (``start_subprocess``); methods use the HTTP admin endpoints."""

    def __init__(self, proc: subprocess.Popen, port: int):
        self.proc = proc
        self.port = port
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _admin(self, method: str, path: str) -> dict[str, Any]:
        req = urllib.request.Request(
            self.root_url + path, method=method, data=b"" if method == "POST" else None
        )
        with self._opener.open(req, timeout=10) as resp:
            return orjson.loads(resp.read())

    def stats(self, detail: bool = False) -> dict[str, Any]:
        return self._admin("GET", "/admin/stats" + ("?detail=1" if detail else ""))

    def reset(self) -> None:
        self._admin("POST", "/admin/reset")

    def outage(self, seconds: float, kind: str = "500") -> None:
        self._admin("POST", f"/admin/outage?seconds={seconds}&kind={kind}")

    def stop(self, timeout: float = 5.0) -> None:
        proc = self.proc
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if proc.stdout is not None:
            proc.stdout.close()


def _cli_args(config: FaultConfig) -> list[str]:
    args: list[str] = []
    defaults = FaultConfig()
    for f in dataclasses.fields(FaultConfig):
        if f.name == "reply":
            continue
        value = getattr(config, f.name)
        if value == getattr(defaults, f.name) or value is None:
            continue
        if f.name == "fault_kinds":
            value = ",".join(value)
        if isinstance(value, bool):
            args.append("--" + f.name.replace("_", "-"))
            continue
        args += ["--" + f.name.replace("_", "-"), str(value)]
    return args


def start_subprocess(
    config: FaultConfig | None = None,
    *,
    port: int = 0,
    python: str | None = None,
    uvloop: bool = True,
    startup_timeout: float = 30.0,
    env: dict[str, str] | None = None,
    **options: Any,
) -> SubprocessHandle:
    """Start ``python -m factory.testing.fault_server`` with these options (``FaultConfig`` fields) and
    wait until it is listening. The handle is a context manager; ``.stop()`` terminates the process."""
    cfg = _config_from(config, options)
    if cfg.reply is not None:
        raise ValueError("a reply callable cannot be passed to a subprocess; use serve_in_thread")
    cmd = [
        python or sys.executable,
        "-m",
        "factory.testing.fault_server",
        "--port",
        str(port),
        *_cli_args(cfg),
    ]
    if not uvloop:
        cmd.append("--no-uvloop")
    # Make `-m factory...` importable from any working directory, installed or not.
    child_env = dict(os.environ if env is None else env)
    root = str(Path(__file__).resolve().parents[2])
    paths = [p for p in child_env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in paths:
        child_env["PYTHONPATH"] = os.pathsep.join([root, *paths])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=child_env)
    assert proc.stdout is not None
    deadline = time.monotonic() + startup_timeout
    line = b""
    try:
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"fault server did not report listening within {startup_timeout}s")
            ready, _, _ = select.select([proc.stdout], [], [], left)
            if ready:
                chunk = proc.stdout.read1(4096) if hasattr(proc.stdout, "read1") else proc.stdout.readline()
                if not chunk:
                    raise RuntimeError(
                        f"fault server exited (code {proc.wait(5)}) before listening; see its stderr"
                    )
                line += chunk
        text = line.decode().strip()
        if not text.startswith(LISTEN_PREFIX):
            raise RuntimeError(f"unexpected first line from fault server: {text!r}")
        bound = int(text.rsplit(":", 1)[1].split("/", 1)[0])
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise
    return SubprocessHandle(proc, bound)


# ---------------------------------------------------------------------------- entry point


def _new_loop(prefer_uvloop: bool) -> asyncio.AbstractEventLoop:
    if prefer_uvloop:
        try:
            import uvloop

            return uvloop.new_event_loop()
        except ImportError:
            pass
    return asyncio.new_event_loop()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m factory.testing.fault_server", description=__doc__.split("\n")[0]
    )
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    p.add_argument("--latency", type=float, default=0.0)
    p.add_argument("--latency-median", type=float, default=0.0)
    p.add_argument("--latency-sigma", type=float, default=0.0)
    p.add_argument("--latency-max", type=float, default=None)
    p.add_argument("--rpm", type=float, default=None)
    p.add_argument("--rpm-burst", type=float, default=None)
    p.add_argument("--tpm", type=float, default=None, help="tokens per minute admitted")
    p.add_argument("--tpm-burst", type=float, default=None, help="tpm bucket capacity (default: --tpm)")
    p.add_argument("--ratelimit-headers", action="store_true", help="send x-ratelimit-* headers")
    p.add_argument("--fault-rate", type=float, default=0.0)
    p.add_argument("--fault-kinds", default="500", help=f"comma-separated, among {','.join(FAULT_KINDS)}")
    p.add_argument("--fault-repeats", type=int, default=1)
    p.add_argument("--retry-after", type=float, default=1.0)
    p.add_argument("--reject-rate", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="fault-server")
    p.add_argument("--hang-seconds", type=float, default=3600.0)
    p.add_argument("--api-key", default=None, help="answer 401 unless this Bearer key is sent")
    p.add_argument("--strict-model", action="store_true", help="answer 404 for any other model than --model")
    p.add_argument("--batch-validating-s", type=float, default=0.0, help="seconds a batch validates")
    p.add_argument("--batch-rate", type=float, default=0.0, help="batch requests per second (0: no wait)")
    p.add_argument("--batch-finalizing-s", type=float, default=0.0, help="seconds a batch finalizes")
    p.add_argument("--batch-window-s", type=float, default=86400.0, help="seconds before a batch expires")
    p.add_argument("--batch-max-lines", type=int, default=50_000, help="most requests in a batch file")
    p.add_argument("--batch-max-bytes", type=int, default=200 * 1024 * 1024, help="most bytes in a file")
    p.add_argument(
        "--reasoning", default=None, choices=fault_stream.REASONING_MODES, help="answer with a trace"
    )
    p.add_argument("--reasoning-tokens", type=int, default=48, help="about how long a trace is, in tokens")
    p.add_argument("--stream-chunk-chars", type=int, default=16, help="characters per streamed chunk")
    p.add_argument("--stream-delay", type=float, default=0.0, help="seconds between streamed chunks")
    p.add_argument("--no-uvloop", action="store_true", help="use the default asyncio loop")
    return p


async def _serve_forever(config: FaultConfig, port: int) -> None:
    runner, state, bound = await _start(config, port)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sys.stdout.write(f"{LISTEN_PREFIX}http://{HOST}:{bound}/v1\n")
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        await _stop(runner, state)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = FaultConfig(
            latency=args.latency,
            latency_median=args.latency_median,
            latency_sigma=args.latency_sigma,
            latency_max=args.latency_max,
            rpm=args.rpm,
            rpm_burst=args.rpm_burst,
            tpm=args.tpm,
            tpm_burst=args.tpm_burst,
            ratelimit_headers=args.ratelimit_headers,
            fault_rate=args.fault_rate,
            fault_kinds=args.fault_kinds,
            fault_repeats=args.fault_repeats,
            retry_after=args.retry_after,
            reject_rate=args.reject_rate,
            seed=args.seed,
            model=args.model,
            hang_seconds=args.hang_seconds,
            api_key=args.api_key,
            strict_model=args.strict_model,
            batch_validating_s=args.batch_validating_s,
            batch_rate=args.batch_rate,
            batch_finalizing_s=args.batch_finalizing_s,
            batch_window_s=args.batch_window_s,
            batch_max_lines=args.batch_max_lines,
            batch_max_bytes=args.batch_max_bytes,
            reasoning=args.reasoning,
            reasoning_tokens=args.reasoning_tokens,
            stream_chunk_chars=args.stream_chunk_chars,
            stream_delay=args.stream_delay,
        )
    except ValueError as exc:
        print(f"fault_server: {exc}", file=sys.stderr)
        return 2
    loop = _new_loop(not args.no_uvloop)
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(_serve_forever(config, args.port))
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
