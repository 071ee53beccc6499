"""OpenAI's Batch API (files and batches) for the OpenAI-compatible teacher, over aiohttp.

A handful of calls per batch file, so aiohttp's cost per request does not matter here; it does multipart
uploads and streams large downloads, which the lean chat client (factory.teachers.http) does not.

Transient failures (connection errors, time-outs, 408/409/429/5xx) are retried with exponential backoff
and jitter, honouring ``Retry-After``; a 401/403 stops the run with the fix; other 4xx raise
:class:`BatchRefused` with the server's message.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from factory.errors import ConfigError, TeacherMisconfigured, TeacherUnavailable
from factory.teachers import api_errors

log = logging.getLogger(__name__)

ENDPOINT = "/v1/chat/completions"
RETRY = {408, 409, 425, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524, 529}
METADATA_KEY = "factory_batch"  # our id of a batch, sent as metadata: how a lost create is found again


@dataclass(frozen=True, slots=True)
class BatchSettings:
    """``teacher.batch`` (factory.config.BatchConfig) as the batch client uses it."""

    max_requests_per_file: int = 50_000
    max_bytes_per_file: int = 200 * 1024 * 1024
    collect_s: float = 5.0
    poll_interval_s: float = 30.0
    poll_max_interval_s: float = 600.0
    retry_errors: str = "batch"

    @classmethod
    def of(cls, options: dict[str, Any]) -> BatchSettings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(
                f"unknown teacher.batch option(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
        out = cls(**options)
        if out.retry_errors not in ("batch", "online"):
            raise ConfigError(f"teacher.batch.retry_errors must be batch or online, got {out.retry_errors!r}")
        return out


class BatchRefused(Exception):
    """A 4xx other than 401/403 (or a 404 of a batch or file): ``status`` and the server's message."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class BatchAPI:
    def __init__(
        self, base_url: str, api_key: str | None, *, timeout_s: float, max_retries: int, backoff_max_s: float
    ):
        self.base_url = base_url.rstrip("/")
        self._key = api_key
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_max_s = backoff_max_s
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=self.timeout_s, sock_read=self.timeout_s
                ),
                trust_env=False,
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- calls ---------------------------------------------------------------------------------------
    async def upload(self, path: Path, filename: str) -> str:
        """Upload one JSONL file (purpose ``batch``); its file id."""

        def form() -> aiohttp.FormData:
            data = aiohttp.FormData()
            data.add_field("purpose", "batch")
            data.add_field("file", path.open("rb"), filename=filename, content_type="application/jsonl")
            return data

        doc = await self._json("POST", "/files", form=form)
        return str(doc["id"])

    async def create(self, input_file_id: str, ours: str) -> dict[str, Any]:
        body = {
            "input_file_id": input_file_id,
            "endpoint": ENDPOINT,
            "completion_window": "24h",
            "metadata": {METADATA_KEY: ours},
        }
        return await self._json("POST", "/batches", body=body)

    async def retrieve(self, batch_id: str) -> dict[str, Any]:
        return await self._json("GET", f"/batches/{batch_id}")

    async def find(self, ours: str, input_file_id: str | None, since: float) -> dict[str, Any] | None:
        """The batch created with our id in its metadata (or from this input file), looking back through
        the list (newest first) until batches older than ``since`` (unix seconds)."""
        after: str | None = None
        while True:
            path = "/batches?limit=100" + (f"&after={after}" if after else "")
            page = await self._json("GET", path)
            for doc in page.get("data") or []:
                meta = doc.get("metadata") or {}
                if meta.get(METADATA_KEY) == ours or (
                    input_file_id and doc.get("input_file_id") == input_file_id
                ):
                    return doc
                if (doc.get("created_at") or 0) < since:
                    return None
            if not page.get("has_more") or not page.get("last_id"):
                return None
            after = str(page["last_id"])

    async def lines(self, file_id: str) -> AsyncIterator[bytes]:
        """The lines of a file's content, streamed (an output file may be hundreds of MB). Transient
        failures before the first line are retried; after it the caller starts again (settling a line
        twice is harmless: the cache keeps the first)."""
        resp = await self._send("GET", f"/files/{file_id}/content")
        try:
            buf = b""
            async for chunk in resp.content.iter_chunked(1 << 20):
                buf += chunk
                *whole, buf = buf.split(b"\n")
                for line in whole:
                    if line.strip():
                        yield line
            if buf.strip():
                yield buf
        finally:
            resp.release()

    # -- plumbing ------------------------------------------------------------------------------------
    async def _json(self, method: str, path: str, *, body: Any = None, form: Any = None) -> dict[str, Any]:
        resp = await self._send(method, path, body=body, form=form)
        try:
            raw = await resp.read()
        finally:
            resp.release()
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise TeacherUnavailable(f"{method} {path}: unreadable response body", kind="bad_body") from None
        if not isinstance(doc, dict):
            raise TeacherUnavailable(f"{method} {path}: the response is not a JSON object", kind="bad_body")
        return doc

    async def _send(
        self, method: str, path: str, *, body: Any = None, form: Any = None
    ) -> aiohttp.ClientResponse:
        url = self.base_url + path
        attempt = 0
        while True:
            delay: float | None = None
            try:
                kwargs: dict[str, Any] = {}
                if form is not None:
                    kwargs["data"] = form()
                elif body is not None:
                    kwargs["data"] = orjson.dumps(body)
                    kwargs["headers"] = {"Content-Type": "application/json"}
                resp = await self._get_session().request(method, url, **kwargs)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                failure: Exception = TeacherUnavailable(
                    f"{method} {url}: {exc or type(exc).__name__}", kind="connection"
                )
            else:
                if resp.status < 400:
                    return resp
                raw = await resp.read()
                resp.release()
                message = api_errors.server_message(raw, secret=self._key)
                if resp.status in (401, 403):
                    raise TeacherMisconfigured(
                        f"{resp.status} from {api_errors.origin(self.base_url)} on {method} {path}: {message} — "
                        + api_errors.fix_for(resp.status, base_url=self.base_url, model="", api_key_env=None,
                                             has_key=bool(self._key), served=None),
                        kind=f"http_{resp.status}",
                    )  # fmt: skip
                if resp.status not in RETRY and resp.status < 500:
                    raise BatchRefused(resp.status, message)
                failure = TeacherUnavailable(
                    f"HTTP {resp.status} on {method} {path}: {message}", kind=f"http_{resp.status}"
                )
                after = resp.headers.get("retry-after")
                if after:
                    try:
                        delay = float(after)
                    except ValueError:
                        delay = None
            if attempt >= self.max_retries:
                raise failure
            attempt += 1
            wait = random.uniform(0, min(self.backoff_max_s, 0.5 * 2**attempt))
            wait = max(wait, delay or 0.0)
            log.info("batch API: %s; retry %d in %.1fs", failure, attempt, wait)
            await asyncio.sleep(wait)


__all__ = ["ENDPOINT", "METADATA_KEY", "BatchAPI", "BatchRefused", "BatchSettings"]
