"""Any OpenAI-compatible chat-completions endpoint, over a lean HTTP/1.1 client (factory.teachers.http).

Why not the ``openai`` SDK or aiohttp: measured on a 2-core box against a 200 ms server with 1,024 in
flight, the SDK spends 1.6-2.9 ms of CPU per request and stalls at a fraction of the ideal rate; a bare
aiohttp loop spends about 300 µs; the lean client about 50 µs (see benchmarks/README.md). Connections
open as requests need them, up to the in-flight limit: there is no hidden cap.

Retries: 408, 409, 5xx, timeouts, resets, unreadable bodies and a 200 without content are retried with
exponential backoff and full jitter, up to ``max_retries``. A 401, 403 or 404 stops the run at once with
the server's message and the fix; any other 4xx refuses that request (not retried, never cached: a
re-run asks again). See factory.teachers.api_errors.

Rate limits (factory.teachers.pacing): ``max_requests_per_minute`` spaces the starts evenly; without
it, the first 429 starts pacing at a learnt rate. ``max_tokens_per_minute`` spaces them by tokens too
(each reserves body bytes / 4 plus ``max_tokens``, corrected by the answer's usage), and a provider's
``x-ratelimit-*`` headers hold starts while a limit is spent and give the limits when none is told.
A 429's ``Retry-After`` / ``retry-after-ms`` pauses every start of the teacher. A 429 is not a failure of the request: it is retried without using up
``max_retries``, for up to ``rate_limit_wait_s`` from its first 429.

Reasoning (factory.teachers.reasoning): ``message.reasoning_content`` (or ``reasoning``) is kept in
``Completion.reasoning``; without it, reasoning between ``think_tags`` at the start of the content is
split out of the answer. A length-cut answer with reasoning and no content is an answer with an empty
text and ``finish_reason: length`` (filter ``truncated`` drops its records), not an error.

Time-outs and streaming: a plain request may take ``request_timeout_s`` (default 120) plus
``timeout_per_1k_tokens_s`` (default 30) for each 1,000 of its ``max_tokens``: 128 s for 256 tokens,
about 16 min for 32k. With ``stream`` (default ``auto``: on when ``max_tokens`` is at least
``STREAM_MIN_TOKENS``, 8,192; ``true`` or ``false`` to choose) the request is sent with ``stream: true``
and ``stream_options: {include_usage: true}``, and its time-out is ``idle_timeout_s`` (default 120) of
silence before the first event or between two, however long the whole answer takes. A stream that breaks
or ends before a ``finish_reason`` is a transport failure, retried like a reset; its partial text is never
an answer (never journaled or cached). Streaming changes neither the request key nor the answer: a
streamed answer is a cache hit for the same request sent plain, and the other way round.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import random
import time
from collections.abc import Sequence
from typing import Any

import orjson

from factory.errors import (
    ConfigError,
    TeacherError,
    TeacherMisconfigured,
    TeacherRejected,
    TeacherUnavailable,
)
from factory.keys import canonical_json
from factory.logprobs import from_openai
from factory.teachers import api_errors, reasoning
from factory.teachers.base import Teacher, Withheld
from factory.teachers.batch_api import ENDPOINT, BatchAPI, BatchSettings
from factory.teachers.http import HTTPFailure, Pool, Response
from factory.teachers.pacing import Pacer
from factory.teachers.sse import ChatStream
from factory.teachers.urls import DEFAULT_BASE_URL, base_url
from factory.types import Completion, Request

log = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524, 529}
STREAM_MIN_TOKENS = 8192  # ``stream: auto`` streams requests whose max_tokens is at least this


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
    supports_batch = True

    def __init__(self, spec: str, model: str, options: dict[str, Any]):
        model, _, url = model.partition("@")
        super().__init__(spec, model)
        self.base_url = base_url(options.pop("base_url", None) or url or DEFAULT_BASE_URL)
        self.api_key_env: str | None = options.pop("api_key_env", None)
        self.max_in_flight = int(options.pop("max_in_flight", 64))
        self.max_retries = int(options.pop("max_retries", 8))
        self.timeout_s = _positive("request_timeout_s", options.pop("request_timeout_s", 120.0))
        self.timeout_per_1k_s = _at_least_zero(
            "timeout_per_1k_tokens_s", options.pop("timeout_per_1k_tokens_s", 30.0)
        )
        self.idle_timeout_s = _positive("idle_timeout_s", options.pop("idle_timeout_s", 120.0))
        self.stream: bool | None = _stream_option(options.pop("stream", "auto"))
        self.think_tags = reasoning.think_tags(options.pop("think_tags", reasoning.DEFAULT_THINK_TAGS))
        self.backoff_base_s = float(options.pop("backoff_base_s", 0.5))
        self.backoff_max_s = float(options.pop("backoff_max_s", 30.0))
        rpm = options.pop("max_requests_per_minute", None)
        self.max_requests_per_minute = _positive("max_requests_per_minute", rpm) if rpm is not None else None
        tpm = options.pop("max_tokens_per_minute", None)
        self.max_tokens_per_minute = _positive("max_tokens_per_minute", tpm) if tpm is not None else None
        self.learn_rate_limit = bool(options.pop("learn_rate_limit", True))
        self.rate_limit_wait_s = _positive("rate_limit_wait_s", options.pop("rate_limit_wait_s", 600.0))
        self.extra_body: dict[str, Any] = _extra_body(options.pop("extra_body", None))
        # A vLLM server names logprob tokens by id when asked (return_tokens_as_token_ids); other providers
        # give token strings only, and refuse the field.
        token_ids = options.pop("token_ids", False)
        if not isinstance(token_ids, bool):
            raise ConfigError(
                f"teacher option token_ids must be true or false, got {token_ids!r} (true only for a vLLM server)"
            )
        self.token_ids = token_ids
        mode = options.pop("mode", "online")
        batch = options.pop("batch", None)
        if mode not in ("online", "batch"):
            raise ConfigError(f"teacher.mode must be online or batch, got {mode!r}")
        self.batch_settings = BatchSettings.of(batch or {}) if mode == "batch" else None
        if options:
            raise ConfigError(f"unknown option(s) for the openai teacher: {', '.join(sorted(options))}")
        self._api_key = self._read_key()
        self._pool: Pool | None = None
        pool = self._pool_get()  # a malformed base_url is a config error now, not at the first request
        self._where = pool.host if pool.port in (80, 443) else f"{pool.host}:{pool.port}"
        self._sem = asyncio.Semaphore(self.max_in_flight)
        self.pacer = Pacer(
            self.max_requests_per_minute,
            learn=self.learn_rate_limit,
            tokens_per_minute=self.max_tokens_per_minute,
        )
        # set at the first 401/403/404: every call from then on returns its error, sending nothing
        self._halt: asyncio.Future[TeacherMisconfigured] | None = None
        self._answered = 0
        self._same_400: tuple[str, int] = ("", 0)

    def _read_key(self) -> str | None:
        env = self.api_key_env
        if env is None:
            if self.base_url != DEFAULT_BASE_URL:
                return None
            env = "OPENAI_API_KEY"
            key = os.environ.get(env)
        else:
            key = os.environ.get(env)
            if not key:
                raise ConfigError(
                    f"teacher.api_key_env names {env!r}, but that environment variable is empty. "
                    f"Export it (export {env}=...) and run again."
                )
        if key is not None:
            bad = next((c for c in key if ord(c) <= 32 or ord(c) == 127 or ord(c) > 255), None)
            if bad is not None:  # a key never holds white space; a pasted one often ends in a line break
                what = {"\r": "a line break", "\n": "a line break", " ": "a space"}.get(
                    bad, f"the character {bad!r}"
                )
                raise ConfigError(
                    f"${env} contains {what}, which no API key holds (a line break would add a header to "
                    f'every request): remove it (e.g. export {env}="$(printf %s "${env}" | tr -d \' \\r\\n\')") '
                    "and run again"
                )
        return key

    def identity(self) -> dict[str, Any]:
        """Model and endpoint, plus ``extra_body`` when it is not empty: it is merged into every payload
        (reasoning_effort, top_k, chat_template_kwargs ...), so it changes answers. Left out when empty,
        so that the keys of plain requests stay what they were. What ``payload`` builds from the request
        itself (messages, sampling, response format, logprobs) is keyed by ``Request.body()``. Nothing
        else sent changes an answer: the key is sent as a header, never keyed."""
        out: dict[str, Any] = {"backend": self.backend, "model": self.model, "base_url": self.base_url}
        if self.extra_body:
            out["extra_body"] = self.extra_body
        if self.token_ids:  # logprobs come as ids instead of strings: a different stored answer
            out["token_ids"] = True
        # think tags other than the default change what is stored as the answer; time-outs and
        # streaming change how it travels, not what it is, so they are never keyed
        out.update(reasoning.tags_identity(self.think_tags))
        return out

    def streams(self, req: Request) -> bool:
        """Whether this request is sent as a stream (the ``stream`` option; ``auto``: a large max_tokens)."""
        if self.stream is not None:
            return self.stream
        return (req.sampling.max_tokens or 0) >= STREAM_MIN_TOKENS

    def timeout_for(self, req: Request) -> float:
        """The time-out of one plain (not streamed) attempt: a floor plus seconds per 1k max_tokens."""
        return self.timeout_s + self.timeout_per_1k_s * (req.sampling.max_tokens or 0) / 1000.0

    def describe(self) -> dict[str, Any]:
        out = {**super().describe(), "base_url": self.base_url, "api_key_env": self.api_key_env}
        if self.batch_settings is not None:
            out["mode"] = "batch"
        return out

    def suggested_in_flight(self) -> int | None:
        """In batch mode, enough seeds to fill a batch file (a seed waits hours for its answer)."""
        return self.batch_settings.max_requests_per_file if self.batch_settings is not None else None

    # -- the Batch API (teacher.mode: batch; driven by factory.batch_queue) ------------------------------
    def batch_api(self) -> BatchAPI:
        return BatchAPI(
            self.base_url, self._api_key, timeout_s=self.timeout_s, max_retries=self.max_retries,
            backoff_max_s=self.backoff_max_s,
        )  # fmt: skip

    def batch_line(self, key: str, req: Request) -> bytes:
        """One line of a batch input file: the body the online path would send, under its request key."""
        doc = {"custom_id": key, "method": "POST", "url": ENDPOINT, "body": self.payload(req)}
        return orjson.dumps(doc) + b"\n"

    def batch_outcome(self, response: dict[str, Any], latency_ms: float) -> Completion | TeacherError:
        """A batch output or error line's ``response`` as the online answer with that status and body would
        be told (the same retry and caching rules)."""
        status = int(response.get("status_code") or 0)
        body = response.get("body")
        raw = orjson.dumps(body) if body is not None else b""
        out = self._answer((time.perf_counter() - latency_ms / 1000.0, None), Response(status, {}, raw))
        if isinstance(out, Completion):
            out.batch = True
        return out

    def batch_failed(self, err: TeacherError) -> TeacherError:
        return self._fail(err)

    @property
    def endpoint(self) -> str:
        """Where requests go, for the user to see before the first one."""
        return self.base_url + "/chat/completions"

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
            if self.token_ids:
                body["return_tokens_as_token_ids"] = True
        if self.extra_body:
            body.update(self.extra_body)
        return body

    async def complete(self, requests: Sequence[Request]) -> list[Completion | TeacherError]:
        if len(requests) == 1:
            return [await self._one(requests[0])]
        return list(await asyncio.gather(*(self._one(r) for r in requests)))

    async def _one(self, req: Request) -> Completion | TeacherError:
        body = self.payload(req)
        stream = self.stream  # decided once for the teacher, unless it is ``auto``
        if stream is None:
            stream = self.streams(req)
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        data = orjson.dumps(body)
        pacer = self.pacer
        # x-ratelimit-* headers pace this process's own pacer; a cluster's shared one keeps the worker's
        # share of the token limit and takes the requests from the cluster's budget
        reserve = len(data) // 4 + (req.sampling.max_tokens or 0)  # the prompt estimate: body bytes / 4
        attempt = limited = 0
        limited_since: float | None = None
        while True:
            async with self._sem:
                if self._halt is not None:
                    return await asyncio.shield(self._halt)
                epoch = await pacer.wait(reserve)
                if self._halt is not None:
                    return await asyncio.shield(self._halt)
                if self.paused:  # the run is stopping: neither a new request nor a retry goes out
                    raise Withheld(req)
                result = await self._attempt(data, req, stream)
            if not isinstance(result, TeacherError):
                pacer.answered()
                pacer.used(reserve, result.prompt_tokens + result.completion_tokens)
                self._answered += 1
                self._same_400 = ("", 0)
                return result
            if isinstance(result, (TeacherRejected, TeacherMisconfigured)):
                return await self._refused(result)
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

    async def _attempt(self, data: bytes, req: Request, stream: bool) -> Completion | TeacherError:
        self.attempts += 1
        self.in_flight += 1
        t0 = time.perf_counter()
        try:
            if stream:
                return await self._pool_get().post(
                    "/chat/completions",
                    data,
                    self._answer,
                    (t0, req),
                    sink=ChatStream(),
                    idle_s=self.idle_timeout_s,
                )
            return await self._pool_get().post(
                "/chat/completions", data, self._answer, (t0, req), timeout_s=self.timeout_for(req)
            )
        except HTTPFailure as exc:
            if not exc.sent:
                self.unsent += 1
            return self._fail(TeacherUnavailable(str(exc), kind=exc.kind))
        finally:
            self.in_flight -= 1

    def _answer(self, sent: tuple[float, Request | None], resp: Response) -> Completion | TeacherError:
        """The outcome of one response, made as its last byte arrives; an answer that is not retried goes
        to ``on_answer`` at once. ``sent``: when the attempt started, and its request (None for a line of
        a batch's output, which the batch queue settles itself).

        This is the path of every answer, so a plain 200 is read here in one frame: the server's
        reasoning fields are looked up only when the message has them, the think tags split only a text
        that holds one, and a usage count that is a positive int is taken as it is."""
        t0, req = sent
        headers, body = resp.headers, resp.body
        latency_ms = (time.perf_counter() - t0) * 1000.0
        if headers and isinstance(self.pacer, Pacer):
            self.pacer.observe(headers)
        if resp.status != 200:
            return self._handed(req, self._status(resp.status, headers, body))
        stream: ChatStream | None = resp.stream
        if stream is not None:
            plain = stream.plain_body()
            if plain is None:
                return self._handed(req, self._streamed(stream, latency_ms))
            body = plain  # the server ignored ``stream``: its one JSON body is read as a plain answer
        try:
            doc = orjson.loads(body)
            choice = doc["choices"][0]
            message = choice["message"]
            text = message.get("content")  # missing is told like null: a 200 without content
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
            return self._fail(
                TeacherUnavailable("unreadable response body (truncated JSON?)", kind="bad_body")
            )
        finish = choice.get("finish_reason")
        thought = (
            reasoning.server_reasoning(message)
            if "reasoning_content" in message or "reasoning" in message
            else None
        )
        if not isinstance(text, str):
            if not (thought and finish == "length"):
                return self._handed(req, self._fail(_no_content(message, finish)))
            text = ""  # cut inside the reasoning: kept, with its finish_reason, for filters to drop
        tags = self.think_tags
        if thought is None and tags is not None and (tags[0] in text or tags[1] in text):
            text, thought = reasoning.split(text, tags)
        usage = doc.get("usage")
        if not isinstance(usage, dict):
            usage = {}
        prompt = usage.get("prompt_tokens")
        if type(prompt) is not int or prompt < 0:
            prompt = _count(prompt)
        completion = usage.get("completion_tokens")
        if type(completion) is not int or completion < 0:
            completion = _count(completion)
        details = usage.get("prompt_tokens_details")  # OpenAI's prompt-cache hits, billed less
        lp = choice.get("logprobs")
        lp = lp.get("content") if lp and isinstance(lp, dict) else None
        out = Completion(
            text=text,
            finish_reason=finish,
            prompt_tokens=prompt,
            completion_tokens=completion,
            latency_ms=latency_ms,
            logprobs=from_openai(lp) if lp else None,
            reasoning=thought,
            cached_prompt_tokens=_count(details.get("cached_tokens")) if isinstance(details, dict) else 0,
        )
        if req is not None and self.on_answer is not None:
            self.on_answer(req, out)
        return out

    def _handed(self, req: Request | None, out: Completion | TeacherError) -> Completion | TeacherError:
        """``out`` given to ``on_answer`` unless it is retried (or a batch line's)."""
        if req is not None and self.on_answer is not None and not isinstance(out, TeacherUnavailable):
            self.on_answer(req, out)
        return out

    def _status(self, status: int, headers: Any, body: bytes) -> TeacherError:
        """What an answer other than 200 is: retried, the teacher's fatal error, or a refusal."""
        message = api_errors.server_message(body, secret=self._api_key)
        if status == 429 and api_errors.out_of_quota(body):  # billing, not pace: waiting cannot help
            return self._fail(TeacherMisconfigured(message, kind="http_429_quota"))
        if status in RETRY_STATUS or status >= 500:
            return self._fail(
                TeacherUnavailable(
                    f"HTTP {status}: {message}", kind=f"http_{status}", retry_after=_retry_after(headers)
                )
            )
        if status in (401, 403, 404, 405) or (status == 400 and api_errors.model_missing(body, message)):
            return self._fail(TeacherMisconfigured(message, kind=f"http_{status}"))
        return self._fail(TeacherRejected(f"HTTP {status}: {message}", kind=f"http_{status}"))

    def _streamed(self, stream: ChatStream, latency_ms: float) -> Completion | TeacherError:
        """The answer of a stream that completed; one that reported an error, or ended before a
        finish_reason, is a transport failure (retried; its partial text is dropped)."""
        if stream.error is not None:
            return self._fail(
                TeacherUnavailable(f"the stream reported an error: {stream.error}", kind="stream_error")
            )
        if stream.finish_reason is None:
            return self._fail(
                TeacherUnavailable(
                    "the stream ended before the answer finished (no finish_reason)", kind="stream_cut"
                )
            )
        finish = stream.finish_reason
        thought = "".join(stream.reasoning) or None
        if not stream.content and not (thought and finish == "length"):
            refusal = "".join(stream.refusal) or None
            return self._fail(_no_content({"content": None, "refusal": refusal}, finish))
        return self._completion(
            "".join(stream.content), thought, finish, stream.usage or {}, latency_ms, stream.logprobs
        )

    def _completion(
        self,
        text: str,
        thought: str | None,
        finish: Any,
        usage: dict[str, Any],
        latency_ms: float,
        logprobs: list[Any] | None,
    ) -> Completion:
        tags = self.think_tags
        if thought is None and tags is not None and (tags[0] in text or tags[1] in text):
            text, thought = reasoning.split(text, tags)
        details = usage.get("prompt_tokens_details")  # OpenAI's prompt-cache hits, billed less
        return Completion(
            text=text,
            finish_reason=finish,
            prompt_tokens=_count(usage.get("prompt_tokens")),
            completion_tokens=_count(usage.get("completion_tokens")),
            latency_ms=latency_ms,
            logprobs=from_openai(logprobs) if logprobs else None,
            reasoning=thought,
            cached_prompt_tokens=_count(details.get("cached_tokens")) if isinstance(details, dict) else 0,
        )

    def _fail(self, err: TeacherError) -> TeacherError:
        return self.failed(err, self._where)

    async def _refused(self, err: TeacherError) -> TeacherError:
        """A 4xx: a 401/403/404 (or a 429 for an account out of quota) becomes the teacher's fatal error
        (with the fix); other refusals are returned, unless every answer so far has been the same one."""
        if isinstance(err, TeacherMisconfigured):
            if self._halt is None:
                self._halt = halt = asyncio.get_running_loop().create_future()
                status = int(err.kind.removeprefix("http_").removesuffix("_quota"))
                served = None
                try:  # the calls waiting on the halt must get it even if this one is cancelled meanwhile
                    served = await self._served_models() if status in (400, 404) else None
                finally:
                    fix = api_errors.fix_for(
                        status, base_url=self.base_url, model=self.model, api_key_env=self.api_key_env,
                        has_key=bool(self._api_key), served=served,
                    )  # fmt: skip
                    halt.set_result(
                        TeacherMisconfigured(
                            f"{status} from {api_errors.origin(self.base_url)} for model {self.model!r}: "
                            f"{err} — {fix}",
                            kind=err.kind,
                        )
                    )
            return await asyncio.shield(self._halt)
        message, n = self._same_400
        n = n + 1 if str(err) == message else 1
        self._same_400 = (str(err), n)
        if self._answered == 0 and n >= api_errors.SAME_400_LIMIT and self._halt is None:
            self._halt = asyncio.get_running_loop().create_future()
            self._halt.set_result(
                TeacherMisconfigured(
                    f"the first {n} requests to {api_errors.origin(self.base_url)} all got {err}; "
                    "the set-up is wrong, not the requests: check the model, teacher.options.extra_body "
                    "and the server",
                    kind=err.kind,
                )
            )
            return self._halt.result()
        return err

    async def _served_models(self) -> list[str] | None:
        try:
            resp = await self._pool_get().get("/models")
        except HTTPFailure:
            return None
        return api_errors.served_models(resp.body) if resp.status == 200 else None

    async def aclose(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None


def _count(value: Any) -> int:
    """A token count from a usage block; 0 for a missing or malformed one (the answer is kept anyway)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return int(value)
    return 0


def _no_content(message: Any, finish_reason: Any) -> TeacherError:
    """A 200 whose message has no text content: never an empty success."""
    refusal = message.get("refusal") if isinstance(message, dict) else None
    if isinstance(refusal, str) and refusal:
        return TeacherRejected(f"the model refused: {refusal[:300]}", kind="refusal")
    if finish_reason == "length":
        return TeacherRejected(
            "the answer has no content: max_tokens ran out before any (spent on reasoning?); "
            "raise params.max_tokens",
            kind="empty_content",
        )
    return TeacherUnavailable(
        f"the server answered 200 with no content (finish_reason={finish_reason!r})", kind="empty_content"
    )


def _positive(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = -1.0
    if not number > 0:
        raise ConfigError(f"teacher.{name} must be a positive number, got {value!r}")
    return number


def _at_least_zero(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = -1.0
    if not number >= 0:
        raise ConfigError(f"teacher.options.{name} must be a number >= 0, got {value!r}")
    return number


def _stream_option(value: Any) -> bool | None:
    """``stream``: true, false, or ``auto`` (None: decided per request by its max_tokens)."""
    if isinstance(value, bool):
        return value
    if value is None or value == "auto":
        return None
    raise ConfigError(
        f"teacher.options.stream must be true, false or auto (stream requests whose max_tokens is at least "
        f"{STREAM_MIN_TOKENS}), got {value!r}"
    )


def _extra_body(value: Any) -> dict[str, Any]:
    """``extra_body`` as a mapping that JSON (the payload and the request key) can hold exactly."""
    if value is None:
        return {}
    try:
        if not isinstance(value, dict):
            raise TypeError
        canonical_json(value)
    except (TypeError, orjson.JSONEncodeError):
        raise ConfigError(
            "teacher.options.extra_body must be a mapping of JSON values with string keys "
            f"(for example {{reasoning_effort: low}}), got {value!r:.200}"
        ) from None
    return dict(value)


def create(spec: str, model: str, options: dict[str, Any]) -> Teacher:
    return OpenAITeacher(spec, model, options)
