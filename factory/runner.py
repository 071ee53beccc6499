"""The streaming runner: seeds flow through the recipe, every teacher call through the request cache.

Nothing waits on a whole batch: each seed runs as soon as a slot frees, each answer is journaled the
moment it is parsed off its connection (the teacher hands it over before the awaiting task resumes, and
the journal writes it there and then, or under load with the others of its loop pass: see
factory.store.journal), and rows are committed at least every ``commit_interval_s``. Re-running the same config resumes: finished seeds are skipped and every
request already answered is served from the cache.

Stopping: ``stop(drain=True)`` (the first Ctrl+C, or a cluster shard told to stop) sends no new request
and waits for the ones in flight, up to ``drain_s``, keeping their answers; ``abandon()`` (the second
Ctrl+C, or ``drain_s`` passed) cancels them: they are sent, and paid for, again on resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import orjson

from factory.batching import MicroBatcher
from factory.errors import (
    BudgetExhausted,
    FactoryError,
    StoreError,
    TeacherError,
    TeacherMisconfigured,
    TeacherRejected,
)
from factory.gc_tuning import fewer_collections
from factory.keyfilter import KeyFilter
from factory.keys import canonical_json, record_id, request_key_raw
from factory.live import clear_live, write_live
from factory.logprobs import pack, unpack
from factory.plan import Budget, Plan, Progress, Result
from factory.pricing import Price, usd
from factory.run_counters import RunCounters
from factory.seeds import Seed, seed_windows
from factory.store import Batch, CacheRow, Store
from factory.teachers.base import Teacher, Withheld
from factory.types import Completion, Request
from recipes.base import Draft

log = logging.getLogger(__name__)

Outcome = Completion | TeacherError
SEED_WINDOW = 4096  # seeds read from the seed file at a time (at least twice max_seeds_in_flight)


DEFAULT_SEEDS_IN_FLIGHT = 64


def seeds_in_flight(explicit: int | None, teacher: Teacher, max_in_flight: int) -> int | None:
    """The plan's ``max_seeds_in_flight``: the config's when it sets one; None (sized by the teacher as the
    run goes, see ``Runner._window``) for a teacher that suggests its own; else from the API setting
    ``max_in_flight`` (at least 16: a seed's requests may wait on one another)."""
    if explicit is not None:
        return explicit
    if teacher.suggested_in_flight() is not None:
        return None
    return max(16, max_in_flight)


class _Draining(Exception):
    """A request not sent because the run is stopping (its seed is left for the next invocation)."""


@dataclass(slots=True)
class _Lane:
    """One teacher role as the runner uses it: identity for keys, name for rows, batcher for engines."""

    teacher: Teacher
    identity_json: bytes
    engine: MicroBatcher[Request, Outcome] | None
    price: Price | None = None  # what its answers cost; None: unknown
    batches: Any = None  # a BatchQueue (factory.batch_queue) while a session runs, for teacher.mode: batch
    skip_lookup: bool = False  # nothing of this teacher's in the cache before the run: no look-ups needed
    # requests at the teacher, by id(request): [lane, key, body, reserved tokens, True, reserved dollars]; the
    # fifth item is True until the answer arrives
    waiting: dict[int, list[Any]] = field(default_factory=dict)
    name: str = field(init=False)  # the teacher's name, stored with each of its answers

    def __post_init__(self) -> None:
        self.name = self.teacher.name


class Runner(RunCounters):
    def __init__(
        self,
        store: Store,
        teachers: Teacher | dict[str, Teacher],
        plan: Plan,
        invocation: int,
        on_progress: Any = None,
    ):
        self.store = store
        roles = teachers if isinstance(teachers, dict) else {"default": teachers}
        self.teacher = roles["default"]
        self.plan = plan
        self.invocation = invocation
        self.on_progress = on_progress
        lanes: dict[int, _Lane] = {}
        for role, t in roles.items():  # roles that share a teacher share its lane (and its engine batch)
            if id(t) not in lanes:
                engine = MicroBatcher(t.complete, max_batch=4096) if t.native_batch else None
                lanes[id(t)] = _Lane(t, canonical_json(t.identity()), engine, plan.prices.get(role))
        self._lanes = {role: lanes[id(t)] for role, t in roles.items()}
        self._default = self._lanes["default"]
        self._teacher_name = self.teacher.name
        self._inflight: dict[str, asyncio.Future[Outcome]] = {}
        self._uncommitted: list[str] = []
        self._committed_keys = KeyFilter()  # fixed size, whatever the length of the run
        self._batch = Batch()
        self._replace: set[str] = set()  # keys whose cached rejection is being asked again
        self._stopping: str | None = None
        self._fatal: BaseException | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="factory-store")
        self._flush_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._journal = store.journal()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_timer: asyncio.TimerHandle | None = None
        self._draining = False
        self._lookup: MicroBatcher[str, dict[str, Any] | None] = MicroBatcher(
            self._lookup_batch, max_batch=2048
        )
        # counters of this invocation (the teachers' own counters are taken from where they stand now:
        # a teacher may have served an earlier runner)
        self._teachers = list({id(lane.teacher): lane.teacher for lane in self._lanes.values()}.values())
        self._base = {id(t): (t.attempts, t.unsent, dict(t.errors)) for t in self._teachers}
        self.seeds_done = 0
        self.seeds_failed = 0
        self.records = 0
        self.answered = 0  # requests the teachers answered or finally failed (what max_requests counts)
        self.abandoned = 0
        self.cache_hits = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.reserved_tokens = 0
        self.cost_usd = 0.0  # paid by this invocation, at the lanes' prices
        self.saved_usd = 0.0  # what the answers served from the cache cost when they were paid for
        self.reserved_usd = 0.0  # requests in flight at their most
        self.unpriced = 0  # answers of a teacher with no known price (their cost is not in cost_usd)
        self.budget_note: str | None = None
        self.dispatched = 0
        self.final_failures: Counter[str] = Counter()
        self._t0 = time.perf_counter()
        self._first_token_t: float | None = None
        self._last_report_t = self._t0
        self._resumed_done = 0
        self._seeds_total = len(plan.seeds)

    # -- public ------------------------------------------------------------------------------------
    def stop(self, reason: str = "interrupted", *, drain: bool = False) -> None:
        """Stop taking new seeds; everything finished is committed. In-flight work is cancelled, or with
        ``drain`` no new request is sent and the ones in flight are waited for (and kept), for up to
        ``plan.drain_s``; then they are abandoned. Callable from another thread."""
        if self._stopping is not None:
            return
        self._stopping = reason
        for t in self._distinct_teachers():
            t.paused = True  # requests queued at a teacher (or about to be retried) are not sent either
        loop = self._loop
        if not drain:
            if loop is not None:
                loop.call_soon_threadsafe(self._cancel_all)
            else:
                self._cancel_all()
            return
        self._draining = True
        log.warning(
            "stopping: no new requests; waiting up to %gs for the %d in flight (their answers are kept)",
            self.plan.drain_s, self.awaiting,
        )  # fmt: skip
        if loop is not None:
            loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        assert self._loop is not None
        if all(lane.batches is not None for lane in self._lanes.values()):
            log.warning(
                "stopping: the batches submitted stay with the provider and in the store; "
                "the same command takes them up again (nothing is submitted twice)"
            )
            self._cancel_all()
            return
        self._drain_timer = self._loop.call_later(self.plan.drain_s, self._drain_expired)
        self._report()

    def _drain_expired(self) -> None:
        if self.awaiting:
            log.warning("drain_s=%gs passed with requests still in flight", self.plan.drain_s)
        self.abandon()

    def abandon(self) -> None:
        """Give up the requests in flight (the second Ctrl+C, or ``drain_s`` passed): their seeds are left
        for the next invocation, which sends those requests, and pays for them, again."""
        if self._stopping is None:
            self._stopping = "interrupted"
        if self.abandoned or not self._tasks:
            return
        self.abandoned = self.awaiting
        if self.abandoned:
            log.warning(
                "abandoning %d requests in flight: they are sent (and paid for) again on resume",
                self.abandoned,
            )
        self._cancel_all()

    def _cancel_all(self) -> None:
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None
        for t in list(self._tasks):
            t.cancel()

    def _report(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.snapshot())

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[None]:
        """Cache look-ups, the journal and commits every ``commit_interval_s`` for the generate() calls made
        inside; on the way out everything answered is committed."""
        loop = self._loop = asyncio.get_running_loop()
        lanes = list({id(x): x for x in self._lanes.values()}.values())
        for lane in lanes:
            n = await loop.run_in_executor(self._executor, self.store.count_cache, lane.name)
            lane.skip_lookup = n == 0
        # keys committed during this run must be looked up again by lanes that otherwise skip look-ups
        self._track_committed = any(lane.skip_lookup for lane in self._lanes.values())
        hooks = [(lane.teacher, lane.teacher.on_answer) for lane in lanes]
        for lane in lanes:
            lane.teacher.on_answer = functools.partial(self._on_answer, lane)
            lane.teacher.paused = self._stopping is not None

        def journal_failed(exc: StoreError) -> None:  # inside an append: stop from the loop, not there
            loop.call_soon(self._journal_failed, exc)

        self._journal.start(lambda: self.stats("running"), journal_failed)
        write_live(self.store.path, self._live())  # `factory status` finds the run from its start
        flusher = loop.create_task(self._flush_every())
        try:
            await self._start_batches(lanes)
            yield
        finally:
            flusher.cancel()
            for lane in lanes:
                if lane.batches is not None:
                    await lane.batches.aclose()
                    lane.batches = None
            for teacher, hook in hooks:
                teacher.on_answer = hook
                teacher.paused = False
            if self._drain_timer is not None:
                self._drain_timer.cancel()
            try:
                await self._flush()
            except StoreError as exc:
                self._fatal = self._fatal or exc
            self._executor.shutdown(wait=True)
            try:
                self._journal.close()
            except StoreError as exc:  # the journal's failed write (disk full): the run reports it
                self._fatal = self._fatal or exc
            clear_live(self.store.path)

    async def _start_batches(self, lanes: list[_Lane]) -> None:
        """A batch queue for each teacher in mode: batch; it takes up the batches left open first."""
        from factory.batch_queue import BatchQueue

        loop = asyncio.get_running_loop()

        def call(fn: Any, *args: Any) -> Any:
            return loop.run_in_executor(self._executor, fn, *args)

        for lane in lanes:
            if lane.teacher.batch_settings is not None:
                settle = functools.partial(self._batch_settled, lane)
                lane.batches = BatchQueue(lane.teacher, self.store, self.plan.run_id, call, settle)
                await lane.batches.start()

    def _batch_settled(self, lane: _Lane, key: str, body: str, outcome: Outcome) -> None:
        """An answer out of a provider batch (one line of its output): counted and kept as online ones."""
        self._keep(lane, key, body.encode(), outcome)

    def waiting_on(self) -> str | None:
        said = [
            s for lane in self._lanes.values() if lane.batches is not None and (s := lane.batches.summary())
        ]
        return "; ".join(dict.fromkeys(said)) or None

    async def run(self) -> Result:
        self.store.bounded(True)  # DuckDB's memory does not grow with the run either
        try:
            with fewer_collections():
                return await self._run()
        finally:
            with contextlib.suppress(Exception):  # a store that failed is reported by the run
                self.store.bounded(False)

    async def _run(self) -> Result:
        loop = asyncio.get_running_loop()
        async with self.session():
            self.seeds_done = await loop.run_in_executor(
                self._executor, self.store.count_done, self.plan.run_id
            )
            self._resumed_done = self.seeds_done
            log.info(
                "run %s: %d seeds, %d already done", self.plan.run_id, len(self.plan.seeds), self.seeds_done
            )
            try:
                await self._dispatch(check_done=self.seeds_done > 0)
            except FactoryError as exc:  # the seed file changed under the run, or the store failed
                if self._fatal is None:
                    self._fatal = exc
                self.stop("failed", drain=True)
            while self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._fatal is not None:
            status = "failed"
        elif self._stopping:
            status = self._stopping
        else:
            status = "done" if self.seeds_failed == 0 else "incomplete"
        self._write_status(status)
        code = self._fatal.exit_code if isinstance(self._fatal, FactoryError) else None
        return Result(
            self.plan.run_id, status, self.snapshot(), str(self._fatal) if self._fatal else None, code
        )

    def _window(self) -> int:
        """Seeds in flight at most: the plan's number, else what the default teacher suggests now (a local
        engine's capacity, which it learns when it starts: asked again whenever a seed finishes)."""
        if self.plan.max_seeds_in_flight is not None:
            return self.plan.max_seeds_in_flight
        return self.teacher.suggested_in_flight() or DEFAULT_SEEDS_IN_FLIGHT

    async def _dispatch(self, check_done: bool) -> None:
        """Start a task per seed not finished by an earlier invocation, at most ``_window()`` at a time (asked
        again whenever a seed finishes: a local engine's capacity grows once it has started). The
        seeds come a window at a time; the next window is read (and, on resume, its finished seeds looked up
        in the store) while this one runs."""
        loop = asyncio.get_running_loop()
        freed = asyncio.Event()

        def seed_done(task: asyncio.Task[None]) -> None:
            self._tasks.discard(task)
            freed.set()

        windows = seed_windows(self.plan.seeds, max(SEED_WINDOW, 2 * self._window()))
        ahead = loop.create_task(self._read_window(windows, check_done))
        tasks, window = self._tasks, self._window()
        try:
            while (seeds := await ahead) is not None:
                ahead = loop.create_task(self._read_window(windows, check_done))
                for seed in seeds:
                    while len(tasks) >= window and not self._stopping:
                        freed.clear()
                        await freed.wait()
                        window = self._window()  # asked once a wake-up, not once a seed
                    if self._stopping:
                        return
                    task = loop.create_task(self._seed(seed))
                    self._tasks.add(task)
                    task.add_done_callback(seed_done)
        finally:
            with contextlib.suppress(BaseException):  # its error, if any, was raised above
                await ahead
            windows.close()

    async def _read_window(
        self, windows: Generator[list[Seed], None, None], check_done: bool
    ) -> list[Seed] | None:
        loop = asyncio.get_running_loop()
        seeds = await loop.run_in_executor(None, next, windows, None)
        if seeds and check_done:
            done = await loop.run_in_executor(
                self._executor, self.store.done_among, self.plan.run_id, [s.id for s in seeds]
            )
            seeds = [s for s in seeds if s.id not in done]
        return seeds

    def finish_session(self, status: str) -> None:
        """Record this invocation's counters (a session used outside run(), e.g. by a filter)."""
        try:
            self.store.commit(Batch(stats=self.stats(status)))
        except StoreError as exc:
            log.error("could not record the counters: %s", exc)

    def _write_status(self, status: str) -> None:
        try:
            self.store.commit(Batch(stats=self.stats(status)))
            self.store.finish_run(self.plan.run_id, status)
        except (StoreError, Exception) as exc:  # the store may be the thing that failed
            log.error("could not record the run status: %s", exc)

    # -- one seed ----------------------------------------------------------------------------------
    async def _seed(self, seed: Seed) -> None:
        try:
            drafts = await self.plan.recipe.process(seed, self.plan.state, self.generate)
        except asyncio.CancelledError:
            return
        except (BudgetExhausted, _Draining, Withheld):
            return
        except TeacherMisconfigured as exc:  # wrong key, model or URL: no request can succeed
            if self._fatal is None:
                self._fatal = exc  # the CLI shows it; a library caller gets it in Result.error
            self.stop("failed", drain=True)  # the answers in flight are counted (and kept, if any)
            return
        except TeacherError as exc:
            self.seeds_failed += 1
            self._batch.failures.append(
                (self.plan.run_id, getattr(exc, "key", ""), seed.id, exc.kind, str(exc)[:500], 0)
            )
            self.final_failures[exc.kind] += 1
            return
        except (
            FactoryError
        ) as exc:  # not about this seed (an engine that cannot start, the store): stop the run
            if self._fatal is None:
                self._fatal = exc
            self.stop("failed")
            return
        except Exception as exc:  # a recipe bug must not throw away a paid run; it is recorded and shown
            log.exception("recipe %s failed on seed %s", self.plan.recipe.slug, seed.id)
            self.seeds_failed += 1
            self.final_failures["recipe_error"] += 1
            self._batch.failures.append((self.plan.run_id, "", seed.id, "recipe_error", repr(exc)[:500], 0))
            return
        self._add_records(seed, drafts)

    def _add_records(self, seed: Seed, drafts: list[Draft]) -> None:
        run_id = self.plan.run_id
        slug = self.plan.recipe.slug
        b = self._batch
        for d in drafts:
            rid = record_id(run_id, d.stage, seed.id, d.sample_index)
            b.records.append(  # RECORD_COLUMNS order
                (rid, run_id, slug, d.stage, seed.id, d.sample_index, d.text, orjson.dumps(d.payload).decode(),
                 d.parent_ids, d.request_keys, self._teacher_name, self.plan.template_version)
            )  # fmt: skip
            if d.reject is not None:
                b.verdicts.append(
                    (rid, run_id, f"{slug}.parse", self.plan.template_version, False, d.score, d.reject)
                )
        b.seeds_done.append((run_id, seed.id, len(drafts)))
        self.records += len(drafts)
        self.seeds_done += 1

    # -- requests ----------------------------------------------------------------------------------
    async def generate(self, req: Request, *, teacher: str = "default") -> Completion:
        """The function recipes get: one request in, its completion out, paid for at most once."""
        lane = self._default if teacher == "default" else self._lane(teacher)
        body = canonical_json(req.body())
        key = request_key_raw(lane.identity_json, body)
        fut = self._inflight.get(key)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._inflight[key] = fut
            try:
                outcome = await self._resolve(lane, key, req, body)
            except BaseException:  # budget reached or cancelled: a later call may try this key again
                self._inflight.pop(key, None)
                fut.cancel()
                raise
            fut.set_result(outcome)
        else:
            outcome = await asyncio.shield(fut)
        if isinstance(outcome, TeacherError):
            outcome.key = key  # type: ignore[attr-defined]
            raise outcome
        return outcome

    def _lane(self, role: str) -> _Lane:
        try:
            return self._lanes[role]
        except KeyError:
            raise FactoryError(
                f"recipe {self.plan.recipe.slug!r} asked for teacher role {role!r}, which the config does not "
                f"define (roles: {', '.join(self._lanes)}); declare it in the recipe's teacher_roles"
            ) from None

    async def _resolve(self, lane: _Lane, key: str, req: Request, body: bytes) -> Outcome:
        # a lane that skips look-ups asks the filter only once the run has committed a key
        if not lane.skip_lookup or (self._committed_keys.added and key in self._committed_keys):
            row = await self._lookup.submit(key)
            if row is not None and row["status"] != "ok" and self.plan.retry_rejected:
                self._replace.add(key)  # asked again; its new outcome takes the cached rejection's place
                row = None
            if row is not None:
                self.cache_hits += 1
                self.saved_usd += row.get("cost_usd") or 0.0
                self._inflight.pop(key, None)
                if row["status"] == "ok":
                    return Completion(
                        text=row["text"] or "", finish_reason=row["finish_reason"],
                        prompt_tokens=row["prompt_tokens"] or 0, completion_tokens=row["completion_tokens"] or 0,
                        latency_ms=row["latency_ms"] or 0.0, key=key, cached=True,
                        cached_prompt_tokens=row.get("cached_prompt_tokens") or 0, cost_usd=0.0,
                        logprobs=unpack(row["logprobs"]) if row.get("logprobs") is not None else None,
                        reasoning=row.get("reasoning"),
                    )  # fmt: skip
                return TeacherRejected(row["error"] or "rejected (cached)", kind="rejected_cached")
        if self._stopping is not None:
            raise _Draining(self._stopping)
        worst = self._check_budget(lane, req, body)
        reserve = req.sampling.max_tokens
        self.reserved_tokens += reserve
        self.reserved_usd += worst
        self.dispatched += 1
        if lane.batches is not None:  # settled (journaled, counted) by the batch queue
            try:
                return await lane.batches.submit(key, body, req)
            finally:
                self.reserved_tokens -= reserve
                self.reserved_usd -= worst
                self.dispatched -= 1
        ticket = [lane, key, body, reserve, True, worst]  # the fifth item: not arrived yet
        lane.waiting[id(req)] = ticket
        try:
            if lane.engine is not None:
                outcome = await lane.engine.submit(req)
            else:
                outcome = (await lane.teacher.complete([req]))[0]
        except BaseException:
            if ticket[4]:
                del lane.waiting[id(req)]
                self.reserved_tokens -= reserve
                self.reserved_usd -= worst
                self.dispatched -= 1
            raise
        if ticket[4]:  # not handed over on arrival (see _on_answer)
            del lane.waiting[id(req)]
            self._arrived(ticket, outcome)
        return outcome

    def _on_answer(self, lane: _Lane, req: Request, outcome: Outcome) -> None:
        """The teacher's hook: an answer, as it is parsed off its connection (before the task awaiting it
        resumes, which may be many callbacks later on a busy loop)."""
        ticket = lane.waiting.pop(id(req), None)
        if ticket is not None:
            try:
                self._arrived(ticket, outcome)
            except Exception:  # never into the HTTP client's callback; the task's own path logs it too
                log.exception("could not keep an answer of %s", lane.name)

    def _arrived(self, ticket: list[Any], outcome: Outcome) -> None:
        """Once per request sent: count it and keep its answer (journal, then the next commit)."""
        lane, key, body, reserve, _, worst = ticket
        ticket[4] = False
        self.reserved_tokens -= reserve
        self.reserved_usd -= worst
        self.dispatched -= 1
        self._keep(lane, key, body, outcome)

    def _keep(self, lane: _Lane, key: str, body: bytes, outcome: Outcome) -> None:
        """Count an answer and keep it: an answer or a rejection the exact request always gets is
        journaled (then committed); anything else is not cached, and a later call may try again."""
        self.answered += 1
        if isinstance(outcome, Completion):
            outcome.key = key
            self.prompt_tokens += outcome.prompt_tokens
            self.completion_tokens += outcome.completion_tokens
            if lane.price is None:
                self.unpriced += 1
            else:
                self._price(lane, outcome)
            self._remember(lane, key, body, "ok", outcome, None)
        elif isinstance(outcome, TeacherRejected) and outcome.cacheable:
            self._remember(lane, key, body, "rejected", None, str(outcome)[:1000])
        else:  # transient, or about the server or account
            self._inflight.pop(key, None)

    def _price(self, lane: _Lane, c: Completion) -> None:
        """An answer's cost at its teacher's price (a batch answer at the batch discount), counted."""
        assert lane.price is not None  # an unpriced answer is counted by _keep
        c.cost_usd = lane.price.cost(
            c.prompt_tokens, c.completion_tokens, c.cached_prompt_tokens, batch=c.batch
        )
        self.cost_usd += c.cost_usd

    def _check_budget(self, lane: _Lane, req: Request, body: bytes) -> float:
        """Raise BudgetExhausted when sending ``req`` could break a budget; else return the most it can
        cost: its prompt as body bytes / 3 (above the exact count of every prompt of our recipes, see
        benchmarks/results/prompt_tokens.json), every max_tokens of output, no discount."""
        b = self.plan.budget
        if b.max_requests is not None and self.answered + self.dispatched >= b.max_requests:
            self._budget_hit(f"max_requests={b.max_requests} reached")
        if b.max_output_tokens is not None and (
            self.completion_tokens + self.reserved_tokens + req.sampling.max_tokens > b.max_output_tokens
        ):
            self._budget_hit(f"max_output_tokens={b.max_output_tokens} would be exceeded")
        worst = lane.price.worst_case(len(body) // 3, req.sampling.max_tokens) if lane.price else 0.0
        if b.max_usd is not None and self.cost_usd + self.reserved_usd + worst > b.max_usd:
            self._budget_hit(
                f"max_usd={b.max_usd:g} would be exceeded: {usd(self.cost_usd)} spent, "
                f"{usd(self.reserved_usd)} at most for the {self.dispatched} requests in flight"
            )
        return worst

    def _budget_hit(self, why: str) -> None:
        if self._stopping is None:
            log.warning("budget: %s; stopping after the requests in flight", why)
            self._stopping = "budget"
            self.budget_note = why
        raise BudgetExhausted(why)

    def _remember(
        self, lane: _Lane, key: str, body: bytes, status: str, c: Completion | None, error: str | None
    ) -> None:
        row: CacheRow
        if c is not None:  # CACHE_COLUMNS order
            row = (key, lane.name, status, body.decode(), c.text, c.finish_reason, c.prompt_tokens,
                   c.completion_tokens, c.latency_ms, error, self.plan.run_id,
                   pack(c.logprobs) if c.logprobs is not None else None, c.reasoning, c.cached_prompt_tokens,
                   c.cost_usd)  # fmt: skip
        else:
            row = (key, lane.name, status, body.decode(), None, None, None, None, None, error, self.plan.run_id,
                   None, None, None, None)  # fmt: skip
        self._journal.append(row)  # on disk before its task resumes
        self._batch.cache.append(row)
        self._uncommitted.append(key)
        if self._replace and key in self._replace:
            self._replace.discard(key)
            self._batch.replace.append(key)

    def _journal_failed(self, exc: StoreError) -> None:
        """The journal could not be written (disk full): stop cleanly, keep what is committed."""
        if self._fatal is None:
            self._fatal = exc
        self.stop("failed")

    async def _lookup_batch(self, keys: Sequence[str]) -> list[dict[str, Any] | None]:
        rows = await asyncio.get_running_loop().run_in_executor(self._executor, self.store.lookup, list(keys))
        return [rows.get(k) for k in keys]

    # -- commits -----------------------------------------------------------------------------------
    async def _flush_every(self) -> None:
        while True:
            await asyncio.sleep(self.plan.commit_interval_s)
            flush = asyncio.ensure_future(self._flush())
            # A commit that fails after this task was cancelled still fails the run (and is not left to
            # asyncio to report as an exception never retrieved).
            flush.add_done_callback(self._flush_failed)
            try:
                # Shielded: when the run ends and this task is cancelled mid-commit, the commit of the rows
                # already swapped out of the batch must still happen (the final flush waits for it).
                await asyncio.shield(flush)
            except StoreError as exc:
                self._fatal = exc
                self.stop("failed")
                return

    def _live(self) -> dict[str, Any]:
        p = self.snapshot()
        return {
            "run_id": self.plan.run_id, "invocation": self.invocation, "seeds_total": p.seeds_total,
            "seeds_done": p.seeds_done, "seeds_failed": p.seeds_failed, "records": p.records,
            "requests_sent": p.requests_sent, "cache_hits": p.cache_hits, "in_flight": p.in_flight,
            "prompt_tokens": p.prompt_tokens, "completion_tokens": p.completion_tokens, "cost_usd": p.cost_usd,
            "saved_usd": p.saved_usd, "cost_known": p.cost_known, "pacing": p.pacing,
            "draining": p.draining, "elapsed_s": round(p.elapsed_s, 1),
        }  # fmt: skip

    def _flush_failed(self, task: asyncio.Future[None]) -> None:
        exc = None if task.cancelled() else task.exception()
        if exc is not None and self._fatal is None:
            self._fatal = exc

    async def _flush(self) -> None:
        async with self._flush_lock:
            segment = self._journal.rotate()
            batch, self._batch = self._batch, Batch()
            keys, self._uncommitted = self._uncommitted, []
            batch.stats = self.stats("running")
            loop = asyncio.get_running_loop()
            # each key is sent once and stays in flight until this commit: plain inserts (Writes.commit)
            await loop.run_in_executor(
                self._executor, functools.partial(self.store.commit, batch, known_new=True)
            )
            # what `factory status` shows while this process holds the store
            await loop.run_in_executor(self._executor, write_live, self.store.path, self._live())
            if segment is not None:
                segment.unlink(missing_ok=True)
            for k in keys:
                self._inflight.pop(k, None)
            for lane in self._lanes.values():
                if lane.batches is not None:
                    lane.batches.forget(keys)
            if self._track_committed:
                self._committed_keys.update(keys)
            self._report()


__all__ = ["Budget", "Plan", "Progress", "Result", "Runner"]
