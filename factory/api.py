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

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}


DRY_RUN_WINDOW = 4096  # seeds rendered, keyed and looked up at a time


def dry_run(prep: Prepared) -> DryRunReport:
    """Render the first-stage prompts and estimate requests and tokens; no teacher is called. The seeds go
    through a window at a time, each window's keys looked up in the store at once."""
    teachers = make_teachers(prep)  # cheap: engines and connections open lazily
    rep = DryRunReport(prep.run_id, len(prep.seeds), 0, 0, 0, 0, 0, None, [])
    with contextlib.ExitStack() as stack:
        st: Store | None = None
        if prep.store_path.exists():
            try:
                st = stack.enter_context(Store(prep.store_path, read_only=True))
                rep.seeds_done = st.count_done(prep.run_id)
            except FactoryError as exc:
                rep.notes.append(f"store not read: {exc}")
        for seeds in seed_windows(prep.seeds, DRY_RUN_WINDOW):
            requests = first_stage_requests(prep, seeds)
            if rep.example_prompt is None and requests:
                rep.example_prompt = list(requests[0][1].messages)
            rep.requests += len(requests)
            rep.prompt_tokens_est += sum(sum(len(m["content"]) for m in r.messages) // 4 for _, r in requests)
            rep.max_output_tokens += sum(r.sampling.max_tokens for _, r in requests)
            if st is not None:
                keys = {request_key(teachers[role].identity(), r.body()) for role, r in requests}
                try:
                    rep.cached += len(st.lookup(sorted(keys)))
                except FactoryError as exc:
                    rep.notes.append(f"store not read: {exc}")
                    st = None
    if prep.recipe.stages[1:]:
        rep.notes.append(
            f"only the first stage is counted; later stages ({', '.join(prep.recipe.stages[1:])}) depend on answers"
        )
    return rep


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
