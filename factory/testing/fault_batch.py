"""The OpenAI Batch API on the fault server: uploaded JSONL files, batches that move through their states.

Mounted by ``FaultServer`` (``factory.testing.fault_server``); every path under ``/v1/files`` and
``/v1/batches`` lands in ``BatchStore.dispatch``. State (files, batches) lives in the server process
only: a restarted server knows none of them. ``POST /admin/reset`` zeroes the batch counters and
keeps the files and batches.

Endpoints, with the shapes of OpenAI's API (the stock ``openai`` client reads them):

* ``POST /v1/files`` (multipart: ``file`` and ``purpose``; only ``batch`` is taken) -> a file object.
  A file over ``batch_max_bytes`` bytes or ``batch_max_lines`` lines is refused with 400.
* ``GET /v1/files/{id}`` -> the file object; ``GET /v1/files/{id}/content`` -> its bytes.
* ``POST /v1/batches`` (``input_file_id``, ``endpoint`` ``/v1/chat/completions``,
  ``completion_window`` ``24h``, optional ``metadata``) -> a batch in ``validating``.
* ``GET /v1/batches/{id}``; ``POST /v1/batches/{id}/cancel``; ``GET /v1/batches?after=ID&limit=N``
  (newest first, ``has_more``, ``first_id``, ``last_id``).

A batch waits ``batch_validating_s``, then checks each line (JSON object, ``custom_id`` string unique in
the file, ``method`` ``POST``, ``url`` equal to the batch's endpoint, ``body`` an object); any bad line
fails the batch (``failed``, ``errors.data`` with ``code``, ``line``, ``param``, ``message``). Otherwise
it runs ``in_progress``: one request every ``1 / batch_rate`` seconds (``batch_rate`` 0: no wait), each
answered as ``POST /v1/chat/completions`` answers the same body (the body as ``orjson`` serializes it),
with rejections and faults picked the same way (no latency, rate limit or outage): a rejected body,
a body that is no chat request, a wrong model under ``strict_model``, or a body picked for a fault within
its first ``fault_repeats`` attempts (attempts count across batches and the online endpoint) becomes a
line of the error file with its status code (429 for a ``429`` fault, 500 for the other kinds). Then ``finalizing`` for ``batch_finalizing_s`` and
``completed``. Past ``batch_window_s`` seconds after creation the batch ends ``expired``: requests done
are in the output (or error) file, the rest in the error file with code ``batch_expired``. A cancelled
batch goes ``cancelling`` then ``cancelled``, the requests not run in the error file with code
``batch_cancelled``. Output and error lines keep the input order:
``{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error": null}``, or for a
request never run ``{"id", "custom_id", "response": null, "error": {"code", "message"}}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from hashlib import blake2b
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import BodyPartReader, web

if TYPE_CHECKING:
    from factory.testing.fault_server import FaultServer

__all__ = ["BATCH_ENDPOINT", "BatchStore"]

BATCH_ENDPOINT = "/v1/chat/completions"
COMPLETION_WINDOWS = ("24h",)
_JSON = "application/json"
_TERMINAL = ("completed", "failed", "expired", "cancelled")
_STAMPED = ("in_progress", "finalizing", *_TERMINAL, "cancelling")


def _error(status: int, message: str, param: str | None = None, code: str | None = None) -> web.Response:
    kind = "invalid_request_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.Response(status=status, body=orjson.dumps(body), content_type=_JSON)


def _ok(doc: dict[str, Any]) -> web.Response:
    return web.Response(body=orjson.dumps(doc), content_type=_JSON)


@dataclass
class _File:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def doc(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
            "expires_at": None,
        }


@dataclass
class _Batch:
    id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, Any] | None
    created_at: int
    deadline: float  # time.monotonic() past which the batch expires
    expires_at: int
    status: str = "validating"
    times: dict[str, int] = field(default_factory=dict)
    errors: list[dict[str, Any]] | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None
    cancel: asyncio.Event = field(default_factory=asyncio.Event)

    def doc(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "errors": None if self.errors is None else {"object": "list", "data": self.errors},
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "request_counts": {"total": self.total, "completed": self.completed, "failed": self.failed},
            "metadata": self.metadata,
        }
        for name in _STAMPED:
            out[name + "_at"] = self.times.get(name)
        return out


class BatchStore:
    """Files and batches of one ``FaultServer``; all mutation happens on the server's event loop."""

    def __init__(self, server: FaultServer):
        self.server = server
        self.config = server.config
        self.files: dict[str, _File] = {}
        self.batches: dict[str, _Batch] = {}
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self.reset_counters()

    def reset_counters(self) -> None:
        self.requests = 0  # batch lines run
        self.created = 0  # batches created
        self.outcomes: dict[str, int] = {}  # batch lines by outcome: 200, 400, 429, 500, expired, cancelled

    def counters(self) -> dict[str, Any]:
        return {"requests": self.requests, "created": self.created, "outcomes": dict(self.outcomes)}

    def _new_id(self, prefix: str) -> str:
        n = next(self._ids)
        return f"{prefix}{blake2b(f'{prefix}{n}/{time.time_ns()}'.encode(), digest_size=12).hexdigest()}"

    def _count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    # ------------------------------------------------------------------ routing

    async def dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        refused = self.server.refuse_key(request)
        if refused is not None:
            return refused
        parts = request.path.strip("/").split("/")[1:]  # drop "v1"
        method = request.method
        route: Callable[..., Any] | None = None
        args: tuple[str, ...] = ()
        if parts == ["files"]:
            route = self.upload if method == "POST" else None
        elif len(parts) == 2 and parts[0] == "files":
            route, args = (self.file_info if method == "GET" else None), (parts[1],)
        elif len(parts) == 3 and parts[0] == "files" and parts[2] == "content":
            route, args = (self.file_content if method == "GET" else None), (parts[1],)
        elif parts == ["batches"]:
            route = {"POST": self.create, "GET": self.list_batches}.get(method)
        elif len(parts) == 2 and parts[0] == "batches":
            route, args = (self.retrieve if method == "GET" else None), (parts[1],)
        elif len(parts) == 3 and parts[0] == "batches" and parts[2] == "cancel":
            route, args = (self.cancel if method == "POST" else None), (parts[1],)
        else:
            return _error(404, f"no route {request.path}", code="404")
        if route is None:
            return _error(405, "method not allowed", code="405")
        return await route(request, *args)

    # -------------------------------------------------------------------- files

    async def upload(self, request: web.BaseRequest) -> web.Response:
        cfg = self.config
        if not request.content_type.startswith("multipart/"):
            return _error(400, "Expected a multipart/form-data body with 'file' and 'purpose'.", "file")
        purpose, filename, data = None, "upload.jsonl", None
        try:
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if not isinstance(part, BodyPartReader):
                    continue
                if part.name == "purpose":
                    purpose = (await part.text()).strip()
                elif part.name == "file":
                    filename = part.filename or filename
                    chunks, size = [], 0
                    while chunk := await part.read_chunk(1 << 16):
                        size += len(chunk)
                        if size > cfg.batch_max_bytes:
                            return _error(
                                400,
                                f"File is too large: the limit is {cfg.batch_max_bytes} bytes for purpose 'batch'.",
                                "file",
                                "file_too_large",
                            )
                        chunks.append(chunk)
                    data = b"".join(chunks)
        except (ValueError, AssertionError, UnicodeDecodeError) as exc:
            return _error(400, f"The multipart body could not be read: {exc}", "file")
        if purpose is None:
            return _error(
                400, "Missing required parameter: 'purpose'.", "purpose", "missing_required_parameter"
            )
        if purpose != "batch":
            return _error(
                400, f"Invalid value for 'purpose': {purpose!r}; this server takes 'batch'.", "purpose"
            )
        if data is None:
            return _error(400, "Missing required parameter: 'file'.", "file", "missing_required_parameter")
        lines = sum(1 for line in data.splitlines() if line.strip())
        if lines > cfg.batch_max_lines:
            return _error(
                400,
                f"The batch input file has {lines} requests; the limit is {cfg.batch_max_lines} per batch.",
                "file",
                "too_many_requests",
            )
        file = _File(self._new_id("file-"), filename, purpose, data, int(time.time()))
        self.files[file.id] = file
        return _ok(file.doc())

    def _file(self, file_id: str) -> _File | web.Response:
        file = self.files.get(file_id)
        return _error(404, f"No such File object: {file_id}", "id") if file is None else file

    async def file_info(self, request: web.BaseRequest, file_id: str) -> web.Response:
        file = self._file(file_id)
        return file if isinstance(file, web.Response) else _ok(file.doc())

    async def file_content(self, request: web.BaseRequest, file_id: str) -> web.Response:
        file = self._file(file_id)
        if isinstance(file, web.Response):
            return file
        return web.Response(body=file.data, content_type="application/octet-stream")

    # ------------------------------------------------------------------ batches

    async def create(self, request: web.BaseRequest) -> web.Response:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error(400, "The body is not valid JSON.")
        if not isinstance(body, dict):
            return _error(400, "The body must be a JSON object.")
        for name in ("input_file_id", "endpoint", "completion_window"):
            if not isinstance(body.get(name), str):
                return _error(
                    400, f"Missing required parameter: '{name}'.", name, "missing_required_parameter"
                )
        if body["endpoint"] != BATCH_ENDPOINT:
            return _error(
                400, f"Invalid value for 'endpoint': this server takes '{BATCH_ENDPOINT}'.", "endpoint"
            )
        if body["completion_window"] not in COMPLETION_WINDOWS:
            return _error(
                400, "Invalid value for 'completion_window': supported: '24h'.", "completion_window"
            )
        metadata = body.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            return _error(400, "Invalid type for 'metadata': expected an object.", "metadata")
        file = self.files.get(body["input_file_id"])
        if file is None:
            return _error(404, f"No such File object: {body['input_file_id']}", "input_file_id")
        if file.purpose != "batch":
            return _error(400, f"File {file.id} has purpose {file.purpose!r}, not 'batch'.", "input_file_id")
        now = time.time()
        window = self.config.batch_window_s
        batch = _Batch(
            id=self._new_id("batch_"),
            input_file_id=file.id,
            endpoint=body["endpoint"],
            completion_window=body["completion_window"],
            metadata=metadata,
            created_at=int(now),
            deadline=time.monotonic() + window,
            expires_at=int(now + window),
        )
        self.batches[batch.id] = batch
        self.created += 1
        task = asyncio.get_running_loop().create_task(self._run(batch, file.data))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return _ok(batch.doc())

    def _batch(self, batch_id: str) -> _Batch | web.Response:
        batch = self.batches.get(batch_id)
        return _error(404, f"No batch found with id '{batch_id}'.", "batch_id") if batch is None else batch

    async def retrieve(self, request: web.BaseRequest, batch_id: str) -> web.Response:
        batch = self._batch(batch_id)
        return batch if isinstance(batch, web.Response) else _ok(batch.doc())

    async def cancel(self, request: web.BaseRequest, batch_id: str) -> web.Response:
        batch = self._batch(batch_id)
        if isinstance(batch, web.Response):
            return batch
        if batch.status in _TERMINAL:
            return _error(409, f"Cannot cancel a batch with status '{batch.status}'.")
        if batch.status != "cancelling":
            batch.status = "cancelling"
            batch.times["cancelling"] = int(time.time())
            batch.cancel.set()
        return _ok(batch.doc())

    async def list_batches(self, request: web.BaseRequest) -> web.Response:
        try:
            limit = int(request.query.get("limit", "20"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 100:
            return _error(400, "Invalid value for 'limit': an integer from 1 to 100.", "limit")
        ordered = list(reversed(self.batches.values()))  # newest first
        after = request.query.get("after")
        if after:
            ids = [b.id for b in ordered]
            if after not in ids:
                return _error(400, f"Invalid value for 'after': no batch '{after}'.", "after")
            ordered = ordered[ids.index(after) + 1 :]
        page = ordered[:limit]
        return _ok(
            {
                "object": "list",
                "data": [b.doc() for b in page],
                "first_id": page[0].id if page else None,
                "last_id": page[-1].id if page else None,
                "has_more": len(ordered) > limit,
            }
        )

    # -------------------------------------------------------------- the worker

    async def _pause(self, batch: _Batch, seconds: float) -> None:
        """Sleep ``seconds``, waking early when the batch is cancelled."""
        if seconds > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(batch.cancel.wait(), seconds)

    def _validate(self, data: bytes, endpoint: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        tasks: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        seen: set[str] = set()

        def bad(line: int, code: str, message: str, param: str | None = None) -> None:
            errors.append({"code": code, "line": line, "message": message, "param": param})

        for n, raw in enumerate(data.splitlines(), 1):
            if not raw.strip():
                continue
            try:
                item = orjson.loads(raw)
            except orjson.JSONDecodeError:
                bad(n, "invalid_json_line", "This line is not parseable as valid JSON.")
                continue
            if not isinstance(item, dict):
                bad(n, "invalid_json_line", "This line is not a JSON object.")
                continue
            custom_id = item.get("custom_id")
            if not isinstance(custom_id, str) or not custom_id:
                bad(n, "missing_required_parameter", "Missing required parameter: 'custom_id'.", "custom_id")
            elif custom_id in seen:
                bad(n, "duplicate_custom_id", f"The custom_id '{custom_id}' is not unique.", "custom_id")
            else:
                seen.add(custom_id)
            if item.get("method") != "POST":
                bad(n, "invalid_method", "The method must be 'POST'.", "method")
            if item.get("url") != endpoint:
                bad(n, "invalid_url", "The URL does not match the batch's endpoint.", "url")
            if not isinstance(item.get("body"), dict):
                bad(n, "invalid_request", "The 'body' must be a JSON object.", "body")
            tasks.append(item)
        if not tasks and not errors:
            bad(0, "empty_file", "The batch input file is empty.")
        return tasks, errors

    async def _run(self, batch: _Batch, data: bytes) -> None:
        cfg = self.config
        await self._pause(batch, cfg.batch_validating_s)
        if batch.cancel.is_set():
            batch.status = "cancelled"
            batch.times["cancelled"] = int(time.time())
            return
        tasks, errors = self._validate(data, batch.endpoint)
        if errors:
            batch.errors = errors[:1000]
            batch.status = "failed"
            batch.times["failed"] = int(time.time())
            return
        batch.total = len(tasks)
        batch.status = "in_progress"
        batch.times["in_progress"] = int(time.time())
        gap = 1.0 / cfg.batch_rate if cfg.batch_rate > 0 else 0.0
        done_lines: list[tuple[bool, bytes]] = []  # (went fine, line)
        ended = ""
        for item in tasks:
            if batch.cancel.is_set():
                ended = "cancelled"
                break
            if time.monotonic() >= batch.deadline:
                ended = "expired"
                break
            ok, line = await self._one(item)
            done_lines.append((ok, line))
            if ok:
                batch.completed += 1
            else:
                batch.failed += 1
            if gap:
                await self._pause(batch, min(gap, max(0.0, batch.deadline - time.monotonic())))
        rest = tasks[len(done_lines) :]
        if not ended and not batch.cancel.is_set():
            batch.status = "finalizing"
            batch.times["finalizing"] = int(time.time())
            await self._pause(batch, cfg.batch_finalizing_s)
        if ended == "expired":
            message = "This request could not be executed before the completion window expired."
        else:
            message = "This request was not run: the batch was cancelled."
        for item in rest:
            self._count(ended)
            error = {"code": f"batch_{ended}", "message": message}
            done_lines.append((False, self._line(item["custom_id"], None, error)))
        self._write(batch, done_lines)
        final = ended or ("cancelled" if batch.cancel.is_set() else "completed")
        batch.status = final
        batch.times[final] = int(time.time())

    def _write(self, batch: _Batch, lines: list[tuple[bool, bytes]]) -> None:
        now = int(time.time())
        for ok, attr, name in ((True, "output_file_id", "output"), (False, "error_file_id", "error")):
            chosen = [line for good, line in lines if good is ok]
            if chosen:
                file = _File(
                    self._new_id("file-"), f"{batch.id}_{name}.jsonl", "batch_output", b"".join(chosen), now
                )
                self.files[file.id] = file
                setattr(batch, attr, file.id)

    def _line(self, custom_id: str, response: dict[str, Any] | None, error: dict[str, Any] | None) -> bytes:
        doc = {"id": self._new_id("batch_req_"), "custom_id": custom_id, "response": response, "error": error}
        return orjson.dumps(doc) + b"\n"

    async def _one(self, item: dict[str, Any]) -> tuple[bool, bytes]:
        self.requests += 1
        try:
            status, body = await self.server.answer(orjson.dumps(item["body"]))
        except Exception as exc:  # a failing ``reply`` callable fails its line, not the batch
            status = 500
            body = {"error": {"message": f"reply failed: {exc!r}", "type": "server_error", "param": None}}
        self._count(str(status))
        response = {"status_code": status, "request_id": self._new_id("req_"), "body": body}
        return status == 200, self._line(item["custom_id"], response, None)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
