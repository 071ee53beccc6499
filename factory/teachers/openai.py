"""Any OpenAI-compatible chat-completions endpoint, over a lean HTTP/1.1 client (factory.teachers.http).

Why not the ``openai`` SDK or aiohttp: measured on a 2-core box against a 200 ms server with 1,024 in
flight, the SDK spends 1.6-2.9 ms of CPU per request and stalls at a fraction of the ideal rate; a bare
aiohttp loop spends about 300 µs; the lean client about 50 µs (see benchmarks/README.md). Connections
open as requests need them, up to the in-flight limit: there is no hidden cap.

Retries: 408, 409, 5xx, timeouts, resets and unreadable bodies are retried with exponential backoff
and full jitter, up to ``max_retries``; any other 4xx is a deterministic rejection, returned at once (and
cached by the runner so it is never paid for twice).

Rate limits (factory.teachers.pacing): ``max_requests_per_minute`` spaces the starts evenly; without
it, the first 429 starts pacing at a learnt rate. A 429's ``Retry-After`` / ``retry-after-ms`` pauses
every start of the teacher. A 429 is not a failure of the request: it is retried without using up
``max_retries``, for up to ``rate_limit_wait_s`` from its first 429.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import logging
import os
import random
import time
from collections.abc import Sequence
from typing import Any

import orjson

from factory.errors import ConfigError, TeacherError, TeacherRejected, TeacherUnavailable
from factory.teachers.base import Teacher, Withheld
from factory.teachers.http import HTTPFailure, Pool, Response
from factory.teachers.pacing import Pacer
from factory.types import Completion, Request

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524, 529}


def _retry_after(headers: Any) -> float | None:
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


class OpenAITeacher(Teacher):
    backend = "openai"
    native_batch = False
    supports_json_schema = True
    supports_logprobs = True

    def __init__(self, spec: str, model: str, options: dict[str, Any]):
        model, _, url = model.partition("@")
        super().__init__(spec, model)
        self.base_url = (options.pop("base_url", None) or url or DEFAULT_BASE_URL).rstrip("/")
        self.api_key_env: str | None = options.pop("api_key_env", None)
        self.max_in_flight = int(options.pop("max_in_flight", 64))
        self.max_retries = int(options.pop("max_retries", 8))
        self.timeout_s = float(options.pop("request_timeout_s", 120.0))
        self.backoff_base_s = float(options.pop("backoff_base_s", 0.5))
        self.backoff_max_s = float(options.pop("backoff_max_s", 30.0))
        rpm = options.pop("max_requests_per_minute", None)
        self.max_requests_per_minute = _positive("max_requests_per_minute", rpm) if rpm is not None else None
        self.learn_rate_limit = bool(options.pop("learn_rate_limit", True))
        self.rate_limit_wait_s = _positive("rate_limit_wait_s", options.pop("rate_limit_wait_s", 600.0))
        self.extra_body: dict[str, Any] = dict(options.pop("extra_body", {}) or {})
        if options:
            raise ConfigError(f"unknown option(s) for the openai teacher: {', '.join(sorted(options))}")
        self._api_key = self._read_key()
        self._pool: Pool | None = None
        pool = self._pool_get()  # a malformed base_url is a config error now, not at the first request
        self._where = pool.host if pool.port in (80, 443) else f"{pool.host}:{pool.port}"
        self._sem = asyncio.Semaphore(self.max_in_flight)
        self.pacer = Pacer(self.max_requests_per_minute, learn=self.learn_rate_limit)

    def _read_key(self) -> str | None:
        if self.api_key_env is None:
            return os.environ.get("OPENAI_API_KEY") if self.base_url == DEFAULT_BASE_URL else None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ConfigError(
                f"teacher.api_key_env names {self.api_key_env!r}, but that environment variable is empty. "
                f"Export it (export {self.api_key_env}=...) and run again."
            )
        return key

    def identity(self) -> dict[str, Any]:
        return {"backend": self.backend, "model": self.model, "base_url": self.base_url}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "base_url": self.base_url, "api_key_env": self.api_key_env}

    def _pool_get(self) -> Pool:
        if self._pool is None:
            headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
            self._pool = Pool(self.base_url, headers=headers, timeout_s=self.timeout_s)
        return self._pool

    def payload(self, req: Request) -> dict[str, Any]:
        s = req.sampling
        body: dict[str, Any] = {
            "model": self.model,
            "messages": list(req.messages),
            "temperature": s.temperature,
            "top_p": s.top_p,
            "max_tokens": s.max_tokens,
        }
        if s.stop:
            body["stop"] = list(s.stop)
        if s.seed is not None:
            body["seed"] = s.seed
        if req.json_schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "record", "schema": req.json_schema, "strict": True},
            }
        if req.logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = req.logprobs
        if self.extra_body:
            body.update(self.extra_body)
        return body

    async def complete(self, requests: Sequence[Request]) -> list[Completion | TeacherError]:
        if len(requests) == 1:
            return [await self._one(requests[0])]
        return list(await asyncio.gather(*(self._one(r) for r in requests)))

    async def _one(self, req: Request) -> Completion | TeacherError:
        data = orjson.dumps(self.payload(req))
        pacer = self.pacer
        attempt = limited = 0
        limited_since: float | None = None
        while True:
            async with self._sem:
                epoch = await pacer.wait()
                if self.paused:  # the run is stopping: neither a new request nor a retry goes out
                    raise Withheld(req)
                result = await self._attempt(data, req)
            if not isinstance(result, TeacherError):
                pacer.answered()
                return result
            if not isinstance(result, TeacherUnavailable):
                return result
            if result.kind == "http_429":
                # the pacer holds every start of this teacher back; this request just queues again
                pacer.limited(epoch, result.retry_after)
                now = time.monotonic()
                limited_since = limited_since or now
                if now + (result.retry_after or 0.0) - limited_since > self.rate_limit_wait_s:
                    return result  # it would still be waiting past its budget
                if pacer.rate is None and result.retry_after is None:  # nothing paces: back off alone
                    limited += 1
                    await asyncio.sleep(
                        random.uniform(0, min(self.backoff_max_s, self.backoff_base_s * 2**limited))
                    )
                continue
            if attempt >= self.max_retries:
                return result
            delay = random.uniform(0, min(self.backoff_max_s, self.backoff_base_s * 2**attempt))
            if result.retry_after is not None:
                delay = max(delay, result.retry_after)
            attempt += 1
            log.debug("retry %d after %.2fs: %s", attempt, delay, result)
            await asyncio.sleep(delay)

    async def _attempt(self, data: bytes, req: Request) -> Completion | TeacherError:
        self.attempts += 1
        self.in_flight += 1
        t0 = time.perf_counter()
        try:
            return await self._pool_get().post(
                "/chat/completions", data, functools.partial(self._answer, t0, req)
            )
        except HTTPFailure as exc:
            if not exc.sent:
                self.unsent += 1
            return self._fail(TeacherUnavailable(str(exc), kind=exc.kind))
        finally:
            self.in_flight -= 1

    def _answer(self, t0: float, req: Request, resp: Response) -> Completion | TeacherError:
        """The outcome of one response, made as its last byte arrives; an answer that is not retried goes
        to ``on_answer`` at once."""
        out = self._outcome(resp, t0)
        if self.on_answer is not None and not isinstance(out, TeacherUnavailable):
            self.on_answer(req, out)
        return out

    def _outcome(self, resp: Response, t0: float) -> Completion | TeacherError:
        status, headers, body = resp.status, resp.headers, resp.body
        latency_ms = (time.perf_counter() - t0) * 1000.0
        if status != 200:
            message = body[:300].decode("utf-8", "replace")
            if status in RETRY_STATUS or status >= 500:
                return self._fail(
                    TeacherUnavailable(
                        f"HTTP {status}: {message}", kind=f"http_{status}", retry_after=_retry_after(headers)
                    )
                )
            return self._fail(TeacherRejected(f"HTTP {status}: {message}", kind=f"http_{status}"))
        try:
            doc = orjson.loads(body)
            choice = doc["choices"][0]
            text = choice["message"]["content"] or ""
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
            return self._fail(
                TeacherUnavailable("unreadable response body (truncated JSON?)", kind="bad_body")
            )
        usage = doc.get("usage") or {}
        lp = choice.get("logprobs")
        return Completion(
            text=text,
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            latency_ms=latency_ms,
            logprobs=lp.get("content") if isinstance(lp, dict) else None,
        )

    def _fail(self, err: TeacherError) -> TeacherError:
        return self.failed(err, self._where)

    async def aclose(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None


def _positive(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = -1.0
    if not number > 0:
        raise ConfigError(f"teacher.{name} must be a positive number, got {value!r}")
    return number


def create(spec: str, model: str, options: dict[str, Any]) -> Teacher:
    return OpenAITeacher(spec, model, options)
