"""The Python API, mirroring the CLI: prepare a run from a config, dry-run it, run it, inspect it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from factory import __version__, stored_recipe
from factory.config import RunConfig
from factory.errors import ConfigError, FactoryError
from factory.keys import digest, request_key
from factory.loops import run_sync
from factory.prepare import (
    Prepared,
    first_stage_requests,
    make_teachers,
    plan_for,
    prepare,
)  # fmt: skip
from factory.runner import Progress, Result, Runner
from factory.seeds import seed_windows
from factory.store import Store
from factory.teachers import parse_spec
from factory.teachers.base import Teacher

log = logging.getLogger(__name__)


def endpoints(prep: Prepared) -> list[str]:
    """Where each teacher's requests go, one line per distinct teacher, to show before any is sent (an
    openai spec without @URL goes to the OpenAI API: a forgotten @URL is visible at once). No request."""
    from factory.teachers import parse_spec

    roles = make_teachers(prep)  # cheap: engines and connections open lazily
    lines, seen = [], set()
    for role, tc in prep.config.roles().items():
        t = roles[role]
        if id(t) in seen:
            continue
        seen.add(id(t))
        who = tc.spec if role == "default" else f"{role} ({tc.spec})"
        described = t.describe()
        url = described.get("base_url")
        if url is None:
            settings = described.get("settings")  # what the engine runs with, where the backend says
            lines.append(
                f"teacher {who} → a local {parse_spec(tc.spec)[0]} engine"
                + (f" ({settings})" if settings else "")
            )
            continue
        default = "@" not in parse_spec(tc.spec)[1] and not tc.base_url and "base_url" not in tc.options
        lines.append(f"teacher {who} → {url}" + (" (no @URL in the spec)" if default else ""))
    return lines


@dataclass(slots=True)
class DryRunReport:
    run_id: str
    seeds: int
    seeds_done: int
    requests: int
    cached: int
    prompt_tokens_est: int
    max_output_tokens: int
    example_prompt: list[dict[str, str]] | None
    notes: list[str]
    prompt_tokens_how: str = ""  # counted with a tokenizer, or estimated (with the estimate's error)
    output_tokens_median: float | None = None  # of earlier answers of this recipe's first stage in the store
    output_tokens_expected: int | None = (
        None  # the requests not cached, at that median (capped by max_tokens)
    )
    cost_usd_max: float | None = None  # the requests not cached: every max_tokens of output; None: no price
    cost_usd_expected: float | None = None  # at the median output of earlier answers, when the store has some
    cost_basis: str = ""  # where the prices come from

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}


DRY_RUN_WINDOW = 4096  # seeds rendered, keyed and looked up at a time


def dry_run(prep: Prepared) -> DryRunReport:
    """Render the first-stage prompts and estimate requests and tokens; no teacher is called. The seeds go
    through a window at a time, each window's keys looked up in the store at once."""
    teachers = make_teachers(prep)  # cheap: engines and connections open lazily
    rep = DryRunReport(prep.run_id, len(prep.seeds), 0, 0, 0, 0, 0, None, [])
    dollars = _DryRunDollars(prep)
    with contextlib.ExitStack() as stack:
        st: Store | None = None
        if prep.store_path.exists():
            try:
                st = stack.enter_context(Store(prep.store_path, read_only=True))
                rep.seeds_done = st.count_done(prep.run_id)
                dollars.median_from(st, prep.recipe.slug, prep.recipe.stages[0])
            except FactoryError as exc:
                rep.notes.append(f"store not read: {exc}")
        for seeds in seed_windows(prep.seeds, DRY_RUN_WINDOW):
            requests = first_stage_requests(prep, seeds)
            if rep.example_prompt is None and requests:
                rep.example_prompt = list(requests[0][1].messages)
            rep.requests += len(requests)
            rep.max_output_tokens += sum(r.sampling.max_tokens for _, r in requests)
            keys = [request_key(teachers[role].identity(), r.body()) for role, r in requests]
            found: set[str] = set()
            if st is not None:
                try:
                    found = set(st.lookup(sorted(set(keys))))
                except FactoryError as exc:
                    rep.notes.append(f"store not read: {exc}")
                    st = None
            rep.cached += len(found)
            for (role, r), key in zip(requests, keys, strict=True):
                rep.prompt_tokens_est += dollars.add(role, r, cached=key in found)
        dollars.report(rep)
    if prep.recipe.stages[1:]:
        rep.notes.append(
            f"only the first stage is counted; later stages ({', '.join(prep.recipe.stages[1:])}) depend on answers"
        )
    return rep


class _DryRunDollars:
    """The dry run's prompt tokens (a tokenizer's count where one is on disk, else the estimate) and
    dollars (the requests not cached, at each role's price)."""

    def __init__(self, prep: Prepared):
        from factory.pricing import price_for
        from factory.token_count import counter_for

        self.roles = prep.config.roles()
        self.prices = {role: price_for(tc) for role, tc in self.roles.items()}
        self.counters: dict[str, Any] = {}
        self.how: list[str] = []
        loaded: dict[tuple[str, str | None], Any] = {}
        for role, tc in self.roles.items():
            ident = (tc.spec, tc.tokenizer)
            if ident not in loaded:
                loaded[ident] = counter_for(tc.spec, tc.tokenizer, prep.config._base_dir)
                self.how.append(("" if role == "default" else f"{role}: ") + loaded[ident][1])
            self.counters[role] = loaded[ident][0]
        self.median: float | None = None
        self.median_of = 0
        self.max_usd = 0.0
        self.expected_usd = 0.0
        self.expected_out = 0

    def median_from(self, st: Store, recipe: str, stage: str) -> None:
        self.median, self.median_of = st.output_tokens_median(recipe, stage)

    def add(self, role: str, req: Any, *, cached: bool) -> int:
        """Count one request; returns its prompt tokens."""
        from factory.token_count import estimate

        count = self.counters.get(role)
        n = count(req.messages) if count is not None else estimate(req.messages)
        price = self.prices.get(role)
        if not cached:
            out = req.sampling.max_tokens
            expected = out if self.median is None else min(out, round(self.median))
            self.expected_out += expected
            if price is not None:
                batch = self.roles[role].mode == "batch"  # answered through the Batch API: its discount
                self.max_usd += price.worst_case(n, out, batch=batch)
                self.expected_usd += price.cost(n, expected, batch=batch)
        return n

    def report(self, rep: DryRunReport) -> None:
        from factory.costs import price_sources

        rep.prompt_tokens_how = "; ".join(self.how)
        unknown = [f"{tc.spec}" for role, tc in self.roles.items() if self.prices[role] is None]
        sources, read = price_sources({"teacher": self.roles["default"].model_dump(),
                                       "teachers": {r: tc.model_dump() for r, tc in self.roles.items() if r != "default"}})  # fmt: skip
        listed = f"list prices read {', '.join(read)}" if read else "the configured prices"
        rep.cost_basis = f"an estimate from {listed} ({'; '.join(sources)})"
        if self.median is not None:
            rep.output_tokens_median = self.median
            rep.output_tokens_expected = self.expected_out
        if unknown:
            rep.notes.append(
                f"no price is known for {', '.join(unknown)}: give teacher.price to see what the run costs"
            )
            return
        rep.cost_usd_max = round(self.max_usd, 9)
        if self.median is not None:
            rep.cost_usd_expected = round(self.expected_usd, 9)


def interrupted(n: int, signame: str, stop: Callable[[], None], abandon: Callable[[], None] | None) -> bool:
    """The n-th Ctrl+C: the first stops, the second abandons the requests in flight; False after that
    (the caller quits at once)."""
    if n == 1:
        log.warning(
            "%s: stopping; everything finished so far is kept (press Ctrl+C again to abandon the requests "
            "in flight)",
            signame,
        )
        stop()
        return True
    if n == 2 and abandon is not None:
        log.warning("%s again: abandoning the requests in flight (press again to quit at once)", signame)
        abandon()
        return True
    return False


@contextlib.contextmanager
def _signals(stop: Callable[[], None], abandon: Callable[[], None] | None = None) -> Iterator[None]:
    """The first Ctrl+C (or SIGTERM) calls ``stop``: no new request is sent, the ones in flight are waited
    for (up to ``runner.drain_s``) and everything finished is committed. The second calls ``abandon``: the
    requests still in flight are given up (sent, and paid for, again on resume). The next quits at once."""
    loop = asyncio.get_running_loop()
    hits = {"n": 0}

    def on_signal(signame: str) -> None:
        hits["n"] += 1
        if not interrupted(hits["n"], signame, stop, abandon):
            raise KeyboardInterrupt

    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal, sig.name)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):
            pass
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


async def run_async(
    prep: Prepared,
    *,
    teacher: Teacher | None = None,
    teachers: dict[str, Teacher] | None = None,
    store: Store | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    handle_signals: bool = False,
    retry_failed: bool = False,
    on_start: Callable[[], None] | None = None,
    on_runner: Callable[[Runner], None] | None = None,
) -> Result:
    """Run (or resume) a prepared run. Teachers passed in (``teacher`` is the default role) are the caller's
        to close; the ones built here are closed here. ``retry_failed`` asks again the requests whose cached
        answer is a rejection, and keeps the new outcome in its place. ``on_start`` is called once the store
        holds the run, before the first request (the CLI names the endpoints then); ``on_runner`` gets the runner
    before it starts (``factory.run`` stops it on Ctrl+C from the waiting thread)."""
    cfg = prep.config
    if cfg.executor.kind == "ray":
        if retry_failed:
            raise ConfigError("--retry-failed: run it without --executor ray (one process re-asks them)")
        if any(tc.mode == "batch" for tc in cfg.roles().values()):
            raise ConfigError(
                "teacher.mode: batch runs in one process (the provider runs the batch): run it without "
                "--executor ray, or use mode: online"
            )
        return await _run_on_ray(
            prep, store=store, on_progress=on_progress, handle_signals=handle_signals, on_start=on_start
        )
    given = dict(teachers or {})
    if teacher is not None:
        given["default"] = teacher
    roles = make_teachers(prep, given)
    own_teachers = {id(t): t for r, t in roles.items() if r not in given}
    teacher = roles["default"]
    own_store = store is None
    st = store or Store(prep.store_path)
    try:
        config_json = stored_recipe.mark(cfg.model_dump(mode="json"), cfg.recipe)
        invocation = st.start_run(
            run_id=prep.run_id, name=cfg.name, recipe=cfg.recipe, teacher=teacher.name, config=config_json,
            config_hash=digest("cfg1", cfg.fingerprint(), length=16), version=__version__,
        )  # fmt: skip
        plan = plan_for(prep, roles, retry_failed=retry_failed)
        runner = Runner(st, roles, plan, invocation, on_progress=on_progress)
        if on_runner is not None:  # e.g. to stop it from another thread
            on_runner(runner)
        if on_start is not None:
            on_start()
        if handle_signals:
            with _signals(lambda: runner.stop("interrupted", drain=True), runner.abandon):
                result = await runner.run()
        else:
            result = await runner.run()
        if prep.filters and result.status == "done":
            from factory.curation import apply_filters

            result.curation = await apply_filters(st, prep.run_id, prep.filters, teachers=roles)
        return result
    finally:
        for t in own_teachers.values():
            await t.aclose()
        if own_store:
            st.close()


async def _run_on_ray(
    prep: Prepared,
    *,
    store: Store | None,
    on_progress: Callable[[Progress], None] | None,
    handle_signals: bool,
    on_start: Callable[[], None] | None = None,
) -> Result:
    """The same run, its shards on a Ray cluster (factory.cluster); the driver owns the store."""
    import time

    from factory.cluster import ClusterReport, connect, run_on_ray
    from factory.store import Batch

    cfg = prep.config
    for tc in cfg.roles().values():  # the workers build the teachers, after the config is stored
        backend, model = parse_spec(tc.spec)
        if backend == "openai":
            from factory.teachers.urls import check_base_url

            check_base_url(model, tc.backend_options())
    connect(prep)  # bad input and an unreachable cluster are refused before the store is touched
    own_store = store is None
    st = store or Store(prep.store_path)
    stop = asyncio.Event()
    t0 = time.perf_counter()

    def progress(rep: Any, seeds_done: int) -> Progress:
        return Progress(
            seeds_total=len(prep.seeds), seeds_done=seeds_done, seeds_failed=rep.seeds_failed,
            records=rep.records, requests_sent=rep.requests_sent, cache_hits=rep.cache_hits, in_flight=0,
            prompt_tokens=rep.prompt_tokens, completion_tokens=rep.completion_tokens, failures={},
            elapsed_s=time.perf_counter() - t0,
        )  # fmt: skip

    try:
        invocation = st.start_run(
            run_id=prep.run_id, name=cfg.name, recipe=cfg.recipe, teacher=cfg.teacher.spec,
            config=cfg.model_dump(mode="json"), config_hash=digest("cfg1", cfg.fingerprint(), length=16),
            version=__version__,
        )  # fmt: skip
        if on_start is not None:
            on_start()
        error: FactoryError | None = None
        with _signals(stop.set) if handle_signals else contextlib.nullcontext():
            try:
                rep = await run_on_ray(
                    prep, st, invocation,
                    on_progress=(lambda r, n: on_progress(progress(r, n))) if on_progress else None,
                    stop_event=stop,
                )  # fmt: skip
            except ConfigError:
                raise
            except FactoryError as exc:
                error, rep = exc, None
        if rep is not None and rep.fatal is not None:  # a shard stopped the run (a wrong key, model, URL)
            error = FactoryError(rep.fatal)
            error.exit_code = rep.fatal_exit_code or 1
        seeds_done = st.count_done(prep.run_id)
        if error is not None:
            status = "failed"
        elif stop.is_set():
            status = "interrupted"
        elif rep is not None and rep.budget_reached and seeds_done < len(prep.seeds):
            status = "budget"
        elif seeds_done == len(prep.seeds):
            status = "done"
        else:
            status = "incomplete"
        stats = {
            "run_id": prep.run_id, "invocation": invocation, "requests_sent": rep.requests_sent if rep else 0,
            "attempts": rep.attempts if rep else 0, "cache_hits": rep.cache_hits if rep else 0,
            "prompt_tokens": rep.prompt_tokens if rep else 0, "completion_tokens": rep.completion_tokens if rep else 0,
            "failures": dict(rep.failures) if rep else {}, "status": status,
        }  # fmt: skip
        st.commit(Batch(stats=stats))
        st.finish_run(prep.run_id, status)
        prog = progress(rep or ClusterReport(), seeds_done)
        prog.failures = dict(rep.failures) if rep else {}
        result = Result(prep.run_id, status, prog, str(error) if error else None,
                        error.exit_code if error else None)  # fmt: skip
        if prep.filters and status == "done":
            from factory.curation import apply_filters

            roles = make_teachers(prep)
            try:
                result.curation = await apply_filters(st, prep.run_id, prep.filters, teachers=roles)
            finally:
                for t in {id(t): t for t in roles.values()}.values():
                    await t.aclose()
        return result
    finally:
        if own_store:
            st.close()


async def filter_run(store: Store, run_id: str, steps: list[Any], *, force: bool = True) -> Any:
    """Apply filter steps to a stored run; teachers (for judges) are built from the run's stored config."""
    from factory.config import parse_config
    from factory.curation import apply_filters

    teachers: dict[str, Teacher] = {}
    if any(s.filter.uses_teacher for s in steps):
        stored = stored_recipe.without_facts(store.run_config(run_id))
        cfg = parse_config(stored, source=f"the stored config of {run_id}", base_dir=Path("."))
        teachers = make_teachers(cfg)
    try:
        return await apply_filters(store, run_id, steps, teachers=teachers, force=force)
    finally:
        for t in {id(t): t for t in teachers.values()}.values():
            await t.aclose()


def run(config: str | Path | RunConfig, **kwargs: Any) -> Result:
    """Run (or resume) a config to completion. The notebook entry point."""
    store = kwargs.pop("store_path", None)
    result: Result = run_sync(run_async(prepare(config, store=store), **kwargs))
    return result
