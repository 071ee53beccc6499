"""``teacher.mode: batch``: the runner's requests go to the provider's Batch API instead of one by one.

Requests are collected as the recipe makes them, each as a JSONL line whose ``custom_id`` is its request
key, into a file next to the store (``STORE.batches/ID.jsonl``). A file is sent when it is full (the
provider's limits: ``max_requests_per_file``, ``max_bytes_per_file``) or when no request has come for
``collect_s`` (a stage's requests go together; the next stage's follow as their inputs are answered).
Then it is uploaded, a batch created, polled (``poll_interval_s``, growing by half up to
``poll_max_interval_s``), and its output and error files are read: each line is settled as the answer of
its key, through the same journal and cache as an online answer (``Completion.batch`` is set).

What is kept, and when (each row written to the store before the step it guards):

* ``uploading``: the batch row and its request keys (with each request's JSON), before the upload. A
  killed process re-uploads the file on resume (an upload costs nothing; a duplicate file is harmless),
  or, when the file is gone (another machine), drops the row: nothing was submitted.
* ``creating``: the uploaded file's id, before the batch is created. The create carries our batch id in
  ``metadata.factory_batch``; a process killed around the create looks for it in the provider's batch list
  on resume and adopts it, and creates the batch only when it is not there. So a batch is never created
  twice for one file, and no request is paid for twice.
* ``submitted``: the provider's batch id, then its status and request counts at each poll.
* ``settled``: after every line was journaled. A process killed while reading the output resumes by
  reading it again (a key already answered is kept once).

On resume (the same command, on any machine with the store), requests whose key is in a batch still open
wait for that batch instead of going into a new file; answers of an open batch whose request no seed asks
for yet are cached all the same. An expired or cancelled batch leaves its unanswered requests to the next
file; a request that failed with a transient error (429, 5xx) is retried in the next file, or online when
``retry_errors: online``, up to ``max_retries``; a 4xx or a final failure is told as online (never cached).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from hashlib import blake2b
from pathlib import Path
from typing import IO, Any

import orjson

from factory.errors import (
    ConfigError,
    FactoryError,
    TeacherError,
    TeacherMisconfigured,
    TeacherRejected,
    TeacherUnavailable,
)
from factory.store.batches import OPEN_STATES
from factory.teachers.base import Teacher
from factory.teachers.batch_api import BatchRefused
from factory.types import Completion, Request

log = logging.getLogger(__name__)

Outcome = Completion | TeacherError
TERMINAL = ("completed", "failed", "expired", "cancelled")
UNANSWERED = ("batch_expired", "batch_cancelled")  # error codes of requests the provider never ran


def batch_folder(store_path: Path) -> Path:
    return store_path.with_name(store_path.name + ".batches")


class _Spool:
    """The batch file being collected."""

    def __init__(self, folder: Path):
        self.id = (
            "fb-" + blake2b(f"{time.time_ns()}/{os.getpid()}/{id(self)}".encode(), digest_size=10).hexdigest()
        )
        self.path = folder / f"{self.id}.jsonl"
        self.fh: IO[bytes] = self.path.open("wb")
        self.keys: list[str] = []
        self.bodies: list[str] = []
        self.bytes = 0


class BatchQueue:
    def __init__(
        self,
        teacher: Teacher,
        store: Any,
        run_id: str,
        call: Callable[..., Awaitable[Any]],
        settle: Callable[[str, str, Outcome], None],
    ):
        self.t = teacher
        self.s = teacher.batch_settings
        self.store = store
        self.run_id = run_id
        self._call = call  # runs a store method on the store's thread
        self._settle = settle  # journals and caches one answer, and counts it
        self.api = teacher.batch_api()  # type: ignore[attr-defined]
        self.folder = batch_folder(store.path)
        self._waiters: dict[str, asyncio.Future[Outcome]] = {}
        self._reqs: dict[str, tuple[Request, bytes]] = {}
        self._open_keys: dict[str, str] = {}  # key -> id of the open batch that holds it
        self._open: dict[str, dict[str, Any]] = {}  # open batches by our id
        self._attempts: dict[str, int] = {}
        self._recent: dict[str, Outcome] = {}  # settled, maybe not committed yet
        self._spool: _Spool | None = None
        self._last_add = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self.submitted = 0  # batches created by this process
        self.lines_submitted = 0

    # -- life ------------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Take up the batches an earlier process left open, then start collecting."""
        self.folder.mkdir(parents=True, exist_ok=True)
        rows = await self._call(self.store.open_batches, self.t.name)
        known = {r["id"] for r in rows}
        for p in self.folder.glob("fb-*.jsonl"):  # a file never recorded: nothing of it was sent
            if p.stem not in known:
                p.unlink(missing_ok=True)
        for row in rows:
            if row["state"] == "uploading" and not self._file(row["id"]).exists():
                await self._update(row, state="dropped", error="its file is gone and it was never created")
                continue
            for key in await self._call(self.store.batch_keys, row["id"]):
                self._open_keys[key] = row["id"]
            row["resumed"] = True
            self._open[row["id"]] = row
            self._spawn(self._drive(row))
        if rows:
            log.info("resuming %d open batches (%d requests)", len(self._open), len(self._open_keys))
        self._spawn(self._collector())

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        sp, self._spool = self._spool, None
        if sp is not None:  # collected, never sent: the next run asks for them again
            sp.fh.close()
            sp.path.unlink(missing_ok=True)
        await self.api.aclose()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("batch task failed: %r", task.exception())

    # -- requests --------------------------------------------------------------------------------------
    async def submit(self, key: str, body: bytes, req: Request) -> Outcome:
        """The outcome of one request not in the cache: from the open batch that holds its key, else from
        the next batch file."""
        if key in self._recent:
            return self._recent[key]
        if key not in self._open_keys:
            self._add(key, body, req)
        fut = asyncio.get_running_loop().create_future()
        self._waiters[key] = fut
        self._reqs[key] = (req, body)
        try:
            return await fut
        finally:
            if self._waiters.get(key) is fut:
                del self._waiters[key]
                self._reqs.pop(key, None)

    def forget(self, keys: list[str]) -> None:
        """These keys are committed: look-ups find them from now on."""
        if self._recent:
            for k in keys:
                self._recent.pop(k, None)

    def _add(self, key: str, body: bytes, req: Request) -> None:
        s = self.s
        line = self.t.batch_line(key, req)  # type: ignore[attr-defined]
        if len(line) > s.max_bytes_per_file:
            raise ConfigError(
                f"a request of {len(line):,} bytes does not fit in a batch file: teacher.batch.max_bytes_per_file "
                f"is {s.max_bytes_per_file:,}. Shorten the prompt (or max_tokens), raise the limit if the "
                "provider allows it, or use teacher.mode: online"
            )
        sp = self._spool
        if sp is not None and (
            len(sp.keys) >= s.max_requests_per_file or sp.bytes + len(line) > s.max_bytes_per_file
        ):
            self._cut()
            sp = None
        if sp is None:
            sp = self._spool = _Spool(self.folder)
        sp.fh.write(line)
        sp.keys.append(key)
        sp.bodies.append(body.decode())
        sp.bytes += len(line)
        self._open_keys[key] = sp.id
        self._last_add = time.monotonic()

    async def _collector(self) -> None:
        wait = self.s.collect_s
        while True:
            await asyncio.sleep(min(wait, 1.0) / 2)
            if self._spool is not None and time.monotonic() - self._last_add >= wait and not self.t.paused:
                self._cut()

    def _cut(self) -> None:
        sp, self._spool = self._spool, None
        if sp is None:
            return
        sp.fh.flush()
        os.fsync(sp.fh.fileno())
        sp.fh.close()
        self._spawn(self._begin(sp))

    async def _begin(self, sp: _Spool) -> None:
        row: dict[str, Any] = {"id": sp.id, "teacher": self.t.name, "run_id": self.run_id, "state": "uploading",
                               "requests": len(sp.keys), "bytes": sp.bytes}  # fmt: skip
        try:
            await self._call(self.store.batch_begin, row, sp.keys, sp.bodies)
        except BaseException as exc:
            sp.path.unlink(missing_ok=True)
            self._unsent(sp.keys, exc)
            raise
        sp.bodies = []
        self._open[sp.id] = row
        await self._drive(row)

    # -- one batch -------------------------------------------------------------------------------------
    def _file(self, ours: str) -> Path:
        return self.folder / f"{ours}.jsonl"

    async def _update(self, row: dict[str, Any], **changes: Any) -> None:
        await self._call(self.store.batch_update, row["id"], changes)
        row.update(changes)

    def _from_doc(self, doc: dict[str, Any]) -> dict[str, Any]:
        counts = doc.get("request_counts") or {}
        ended = next((doc.get(f"{s}_at") for s in TERMINAL if doc.get(f"{s}_at")), None)
        errors = (doc.get("errors") or {}).get("data") or []
        return {
            "provider_status": doc.get("status"), "output_file_id": doc.get("output_file_id"),
            "error_file_id": doc.get("error_file_id"), "total": counts.get("total"),
            "completed": counts.get("completed"), "failed": counts.get("failed"),
            "provider_created_at": doc.get("created_at"), "in_progress_at": doc.get("in_progress_at"),
            "ended_at": ended, "expires_at": doc.get("expires_at"),
            "error": "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors[:3]) or None,
        }  # fmt: skip

    async def _drive(self, row: dict[str, Any]) -> None:
        ours = row["id"]
        try:
            if row["state"] == "uploading":
                file_id = await self.api.upload(self._file(ours), f"{ours}.jsonl")
                await self._update(row, state="creating", input_file_id=file_id)
            if row["state"] == "creating":
                doc = None
                if row.get("resumed"):  # a create may have reached the provider before the kill
                    since = row["created_at"].timestamp() - 3600 if row.get("created_at") else 0.0
                    doc = await self.api.find(ours, row["input_file_id"], since)
                    if doc is not None:
                        log.info("batch %s was created before the interruption: resuming it", doc.get("id"))
                if doc is None:
                    doc = await self.api.create(row["input_file_id"], ours)
                    self.submitted += 1
                    self.lines_submitted += int(row["requests"])
                await self._update(row, state="submitted", batch_id=doc["id"], **self._from_doc(doc))
                self._file(ours).unlink(missing_ok=True)
            interval = self.s.poll_interval_s
            while row["provider_status"] not in TERMINAL:
                await asyncio.sleep(interval)
                interval = min(interval * 1.5, self.s.poll_max_interval_s)
                changes = self._from_doc(await self.api.retrieve(row["batch_id"]))
                if any(row.get(k) != v for k, v in changes.items()):
                    await self._update(row, **changes)
            await self._read(row)
        except asyncio.CancelledError:
            raise
        except TeacherMisconfigured as exc:  # a wrong key: the run stops, the batch stays for a re-run
            self._fail_keys(ours, exc)
        except BatchRefused as exc:  # the provider will not take this file: nothing of it was run
            await self._update(row, state="dropped", error=str(exc)[:1000])
            self._fail_keys(
                ours, self.t.failed(TeacherUnavailable(f"the batch was refused: {exc}", kind="batch_refused"))
            )
            self._open.pop(ours, None)
        except TeacherError as exc:  # the Batch API stayed unreachable: the batch stays open for a re-run
            self._fail_keys(ours, exc)
        except FactoryError as exc:
            self._fail_keys(ours, exc)

    def _fail_keys(self, ours: str, exc: BaseException) -> None:
        err = exc if isinstance(exc, TeacherError) else TeacherUnavailable(str(exc), kind="batch")
        for key in [k for k, b in self._open_keys.items() if b == ours]:
            del self._open_keys[key]
            self._resolve(key, err)
        self._open.pop(ours, None)

    def _unsent(self, keys: list[str], exc: BaseException) -> None:
        for key in keys:
            self._open_keys.pop(key, None)
            self._resolve(
                key, TeacherUnavailable(f"the batch file could not be recorded: {exc}", kind="batch")
            )

    async def _read(self, row: dict[str, Any]) -> None:
        """Settle every line of a finished batch, then mark it settled."""
        ours = row["id"]
        bodies: dict[str, str] = await self._call(self.store.batch_requests, ours)
        later: list[tuple[str, Outcome]] = []  # waiters resume once the batch is marked settled
        try:
            await self._read_lines(row, bodies, later)
        finally:
            for key, outcome in later:
                self._resolve(key, outcome)

    async def _read_lines(
        self, row: dict[str, Any], bodies: dict[str, str], later: list[tuple[str, Outcome]]
    ) -> None:
        ours = row["id"]
        created, ended = row.get("provider_created_at"), row.get("ended_at")
        latency_ms = float(ended - created) * 1000.0 if created and ended else 0.0
        answered = 0
        for file_id in (row.get("output_file_id"), row.get("error_file_id")):
            if not file_id:
                continue
            async for raw in self.api.lines(file_id):
                try:
                    doc = orjson.loads(raw)
                    key = doc["custom_id"]
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    log.warning("batch %s: an unreadable line in file %s", row["batch_id"], file_id)
                    continue
                body = bodies.pop(key, None)
                if body is None:
                    continue  # not ours, or already settled
                self._open_keys.pop(key, None)
                response, error = doc.get("response"), doc.get("error")
                if isinstance(response, dict):
                    self.t.attempts += 1
                    outcome: Outcome | None = self.t.batch_outcome(response, latency_ms)  # type: ignore[attr-defined]
                else:
                    code = str((error or {}).get("code") or "error")
                    message = str((error or {}).get("message") or "")
                    outcome = (
                        None
                        if code in UNANSWERED
                        else self.t.failed(
                            TeacherUnavailable(f"batch error {code}: {message}", kind=f"batch_{code}")
                        )
                    )
                answered += self._line(key, body, outcome, later)
        failed = row.get("provider_status") == "failed"
        for key, body in bodies.items():  # lines the provider never wrote (a failed batch writes none)
            self._open_keys.pop(key, None)
            err = self.t.failed(
                TeacherUnavailable(f"the batch failed: {row.get('error')}", kind="batch_failed")
            )
            answered += self._line(key, body, err if failed else None, later)
        retried = int(row["requests"]) - answered
        await self._update(row, state="settled", answered=answered, retried=retried)
        self._open.pop(ours, None)

    def _line(self, key: str, body: str, outcome: Outcome | None, later: list[tuple[str, Outcome]]) -> int:
        """One request's outcome in a batch; 1 when it is final (answered, or failed for good)."""
        waiting = self._reqs.get(key)
        if outcome is None:  # never run (expired, cancelled): the next file, if someone still waits
            if waiting is not None:
                self._add(key, waiting[1], waiting[0])
            return 0
        if isinstance(outcome, TeacherUnavailable) and not isinstance(outcome, TeacherMisconfigured):
            n = self._attempts[key] = self._attempts.get(key, 0) + 1
            if waiting is None:
                return 0  # nobody asks for it now; a run that does asks again
            if n <= getattr(self.t, "max_retries", 0):
                if self.s.retry_errors == "online":
                    self._spawn(self._online(key, body, waiting[0]))
                else:
                    self._add(key, waiting[1], waiting[0])
                return 0
        self._attempts.pop(key, None)
        if waiting is None and not isinstance(outcome, (Completion, TeacherRejected)):
            return 0
        self._settle(key, body, outcome)
        if waiting is None:
            self._recent[key] = outcome
        later.append((key, outcome))
        return 1

    async def _online(self, key: str, body: str, req: Request) -> None:
        outcome = (await self.t.complete([req]))[0]
        self._attempts.pop(key, None)
        self._settle(key, body, outcome)
        self._resolve(key, outcome)

    def _resolve(self, key: str, outcome: Outcome) -> None:
        fut = self._waiters.pop(key, None)
        self._reqs.pop(key, None)
        if fut is not None and not fut.done():
            fut.set_result(outcome)

    # -- what the progress line says -------------------------------------------------------------------
    def summary(self) -> str | None:
        """e.g. ``batch fb-12ab in_progress 1200/5000`` (the oldest open batch, and how many more)."""
        parts = []
        rows = [r for r in self._open.values() if r.get("state") in OPEN_STATES]
        if rows:
            r = rows[0]
            status = r.get("provider_status") or r.get("state")
            done = (r.get("completed") or 0) + (r.get("failed") or 0)
            counts = f" {done}/{r.get('total')}" if r.get("total") else ""
            ref = r.get("batch_id") or r["id"]
            more = f" (+{len(rows) - 1} more)" if len(rows) > 1 else ""
            parts.append(f"waiting on batch {ref}: {status}{counts}{more}")
        if self._spool is not None:
            parts.append(f"collecting {len(self._spool.keys)} requests for the next batch")
        return "; ".join(parts) or None


__all__ = ["BatchQueue", "batch_folder"]
