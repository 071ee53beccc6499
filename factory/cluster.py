"""Runs a config on Ray: the seeds in shards, each shard through the same runner on a worker, the results
ingested into the store by the driver.

- Shards: the seeds in file order, ``executor.shard_seeds`` at a time; shard ``i`` is ``{i:05d}``. The
  run id covers the seed file, so a shard's seeds never change under it.
- Workers: ``executor.workers`` Ray actors. Each prepares the config once (the config and template files
  must be at the same paths on every node, or shipped with ``ray job submit --working-dir``; the seeds
  come with each shard, and the seed file is read only by a recipe that binds to all seeds),
  builds its teachers once (a local engine's model is loaded once per actor, on the GPUs the actor
  reserves: one, or a placement group of several for a tensor- or pipeline-parallel engine, see
  :mod:`factory.placement`) and takes shards one after another. A shard runs in the single-process
  runner against a scratch DuckDB file on the worker; each commit also goes out as parquet parts to
  ``{shard_dir}/{shard}/{attempt}/``. Workers never open the store.
- The driver ingests a shard's parts into the store with checked inserts (records, answers, seeds done:
  present rows are skipped), so an attempt that was retried, or read twice, adds nothing twice. Parts of
  attempts that died are ingested too: what a killed worker was paid for is kept. A retried attempt
  starts from the answers of the shard's earlier attempts and from the store's answers to the shard's
  first-stage requests, so nothing is paid for twice.
- API teachers share one budget across the cluster: one small actor (:class:`RateBudget`) paces every
  worker's starts against the told ``max_requests_per_minute`` or the rate learnt from 429s, and each
  worker gets an equal share of ``max_in_flight``.
- ``budget.*`` holds for the whole run: each shard gets a share of what is neither spent nor held by
  the shards running, and a shard that used up its share goes back in the queue for what is left.
- Filters run on the driver after ingestion, as in a single-process run. Before that, each worker calls
  the ``precompute`` hook of every filter of the run that has one (:mod:`filters.base`) on its shard's
  records, into a scratch folder laid out as the store's filter cache; the files go out with the shard and
  the driver copies them into that cache, so the pass finds the per-record work done and does only the
  set-level step. The executor knows the hook, never a filter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from factory.errors import ConfigError, FactoryError, StoreError
from factory.placement import WorkerPlan, plan_workers
from factory.prepare import first_stage_requests, make_teachers, plan_for, prepare
from factory.store import CACHE_COLUMNS, CACHE_SCHEMA, RECORD_SCHEMA, Batch, Store, full_cache_rows

log = logging.getLogger(__name__)

SUCCESS = "_SUCCESS.json"
SNAPSHOT = "snapshot.cache.parquet"
_DONE_SCHEMA = pa.schema([("run_id", pa.string()), ("seed_id", pa.string()), ("records", pa.int32())])
_FAILURE_SCHEMA = pa.schema(
    [("run_id", pa.string()), ("key", pa.string()), ("seed_id", pa.string()), ("kind", pa.string()),
     ("message", pa.string()), ("attempts", pa.int32())]
)  # fmt: skip
_VERDICT_SCHEMA = pa.schema(
    [("record_id", pa.string()), ("run_id", pa.string()), ("filter", pa.string()),
     ("filter_version", pa.string()), ("keep", pa.bool_()), ("score", pa.float64()), ("reason", pa.string())]
)  # fmt: skip
# Batch field → (parquet schema, whether rows from an attempt that did not finish are ingested)
TABLES: dict[str, pa.Schema] = {
    "cache": CACHE_SCHEMA,
    "records": RECORD_SCHEMA,
    "seeds_done": _DONE_SCHEMA,
    "verdicts": _VERDICT_SCHEMA,
    "failures": _FAILURE_SCHEMA,
}
FINISHED_ONLY = {"failures"}  # a failure an attempt did not live to finish may still succeed on retry


# ------------------------------------------------------------------------------------------ shard files


class ShardFiles:
    """The shard location: a local folder or any URL pyarrow's filesystems open (s3://, gs://, hdfs://)."""

    def __init__(self, root: str):
        if "://" in root:
            try:
                self.fs, self.root = pafs.FileSystem.from_uri(root)
            except (pa.ArrowInvalid, OSError) as exc:
                raise ConfigError(f"executor.shard_dir {root!r}: {exc}") from None
        else:
            self.fs, self.root = pafs.LocalFileSystem(), str(Path(root).resolve())
        self.uri = root

    def path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    @contextlib.contextmanager
    def _create(self, rel: str) -> Iterator[Any]:
        """A file written whole or not at all: under a temporary name, then moved (a copy on object
        stores, which show an object only once it is complete)."""
        final = self.path(rel)
        tmp = final + f".tmp-{uuid.uuid4().hex[:8]}"
        self.fs.create_dir(final.rsplit("/", 1)[0], recursive=True)
        with self.fs.open_output_stream(tmp) as out:
            yield out
        self.fs.move(tmp, final)

    def write_table(self, rel: str, table: pa.Table) -> None:
        with self._create(rel) as out:
            pq.write_table(table, out, compression="zstd")

    def write_bytes(self, rel: str, data: bytes) -> None:
        with self._create(rel) as out:
            out.write(data)

    def write_json(self, rel: str, doc: Any) -> None:
        self.write_bytes(rel, orjson.dumps(doc))

    def read_json(self, rel: str) -> Any:
        with self.fs.open_input_stream(self.path(rel)) as f:
            return orjson.loads(f.read())

    def read_table(self, rel: str) -> pa.Table:
        with self.fs.open_input_file(self.path(rel)) as f:
            return pq.read_table(f)

    def listing(self, rel: str) -> list[str]:
        """Files under ``rel``, as paths relative to the root, sorted; temporary files left out."""
        sel = pafs.FileSelector(self.path(rel), recursive=True, allow_not_found=True)
        base = self.root.rstrip("/") + "/"
        return sorted(
            i.path[len(base) :]
            for i in self.fs.get_file_info(sel)
            if i.type == pafs.FileType.File and ".tmp-" not in i.path
        )

    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound

    def remove(self, rel: str) -> None:
        with contextlib.suppress(FileNotFoundError, OSError):
            self.fs.delete_dir(self.path(rel))


def _batch_tables(batch: Batch) -> Iterator[tuple[str, pa.Table]]:
    for name, schema in TABLES.items():
        rows = getattr(batch, name)
        if rows:
            if name == "cache":  # a shard written before a column was added lacks it
                rows = full_cache_rows(rows)
            cols = list(zip(*rows, strict=True))
            yield name, pa.Table.from_arrays([pa.array(c, f.type) for c, f in zip(cols, schema, strict=True)],
                                             schema=schema)  # fmt: skip


def _rows(table: pa.Table) -> list[tuple[Any, ...]]:
    cols = [table.column(i).to_pylist() for i in range(table.num_columns)]
    return list(zip(*cols, strict=True))


@dataclass(slots=True)
class ShardParts:
    """What the files of one shard hold, by table, across its attempts."""

    tables: dict[str, list[tuple[Any, ...]]] = field(default_factory=lambda: {k: [] for k in TABLES})
    finished: list[dict[str, Any]] = field(default_factory=list)  # the _SUCCESS documents
    artefacts: list[str] = field(default_factory=list)  # files of the filter cache (precompute hooks)
    files: int = 0


def read_shard(files: ShardFiles, shard: str, *, skip: set[str] | None = None) -> ShardParts:
    """Every part of every attempt of a shard; failures only from attempts that finished."""
    out = ShardParts()
    paths = files.listing(shard)
    finished = {p.rsplit("/", 2)[-2] for p in paths if p.endswith("/" + SUCCESS)}
    for p in paths:
        if skip and p in skip:
            continue
        name = p.rsplit("/", 1)[-1]
        if "/filters/" in p:
            if p.split("/filters/", 1)[0].rsplit("/", 1)[-1] in finished:
                out.artefacts.append(p)
            continue
        if name == SUCCESS:
            out.finished.append(files.read_json(p))
            continue
        if not name.startswith("part-"):
            continue
        table_name = name.split(".")[1]
        attempt = p.rsplit("/", 2)[-2]
        if table_name not in TABLES or (table_name in FINISHED_ONLY and attempt not in finished):
            continue
        out.tables[table_name].extend(_rows(files.read_table(p)))
        out.files += 1
    return out


class _PartStore(Store):
    """A worker's scratch store: every commit also goes out as parquet parts of the attempt."""

    def __init__(self, path: Path, files: ShardFiles, prefix: str):
        self._files = files
        self._prefix = prefix
        self._n = 0
        super().__init__(path)  # replays the journal of an attempt killed on this node: out as parts too

    def commit(self, batch: Batch, *, known_new: bool = False) -> None:
        super().commit(batch, known_new=known_new)
        if not len(batch):
            return
        self._n += 1
        try:
            for name, table in _batch_tables(batch):
                self._files.write_table(f"{self._prefix}/part-{self._n:06d}.{name}.parquet", table)
        except OSError as exc:
            raise StoreError(f"cannot write shard part to {self._files.uri}: {exc}") from exc


# ------------------------------------------------------------------------------------------ rate budget


class RateBudget:
    """The cluster's one pacer for an API teacher (a Ray actor): starts are handed out in short blocks."""

    def __init__(self, requests_per_minute: float | None, learn: bool):
        from factory.teachers.pacing import Pacer

        self.pacer = Pacer(requests_per_minute, learn=learn)

    def reserve(self, n: int) -> tuple[list[float] | None, int]:
        """Start delays (seconds from now) for up to ``n`` requests, or None while nothing is paced."""
        p = self.pacer
        if not p.active:
            return None, p.epoch
        now = time.monotonic()
        horizon = now + 0.25  # a block covers at most a quarter second, so a cut takes effect quickly
        delays: list[float] = []
        while len(delays) < n:
            start = p.take(now)
            delays.append(start - now)
            if start >= horizon:
                break
        return delays, p.epoch

    def limited(self, epoch: int, retry_after: float | None) -> None:
        self.pacer.limited(epoch, retry_after)

    def answered(self, n: int) -> None:
        self.pacer.answered(n)

    def state(self) -> dict[str, Any]:
        return {"rate": self.pacer.rate, "epoch": self.pacer.epoch}


class SharedPacer:
    """A worker's side of :class:`RateBudget`, with the teacher's pacer interface. A token limit
    (``max_tokens_per_minute``, this worker's share of it) is kept here, by a pacer of the worker's own."""

    def __init__(self, budget: Any, tokens_per_minute: float | None = None):
        from factory.teachers.pacing import Pacer

        self._tokens = (
            Pacer(None, learn=False, tokens_per_minute=tokens_per_minute) if tokens_per_minute else None
        )
        self._budget = budget
        self._slots: deque[float] = deque()
        self._lock = asyncio.Lock()
        self._unpaced_until = 0.0
        self._answered = 0
        self._reported = 0.0
        self.epoch = 0
        self.rate: float | None = None

    async def wait(self, tokens: int = 0) -> int:
        """Wait for a start from the cluster's request budget, then for this worker's share of the token
        limit (a request reserving ``tokens``)."""
        epoch = await self._start()
        if self._tokens is not None:
            await self._tokens.wait(tokens)
        return epoch

    def used(self, reserved: int, tokens: int) -> None:
        if self._tokens is not None:
            self._tokens.used(reserved, tokens)

    def holding(self) -> str | None:
        now = time.monotonic()
        if self._slots and self._slots[-1] - now >= 1.0:
            return f"waiting {self._slots[-1] - now:.0f} s: requests per minute (shared by the cluster)"
        return self._tokens.holding(now) if self._tokens is not None else None

    async def _start(self) -> int:
        while True:
            now = time.monotonic()
            if now < self._unpaced_until:
                return self.epoch
            if self._slots:
                start = self._slots.popleft()
                if start > now:
                    await asyncio.sleep(start - now)
                return self.epoch
            async with self._lock:
                if self._slots or time.monotonic() < self._unpaced_until:
                    continue
                t0 = time.monotonic()
                delays, self.epoch = await self._budget.reserve.remote(64)
                if delays is None:
                    self._unpaced_until = time.monotonic() + 0.5
                else:
                    self.rate = 1.0
                    self._slots.extend(t0 + d for d in delays)

    def limited(self, epoch: int, retry_after: float | None) -> None:
        self._slots.clear()
        self._unpaced_until = 0.0
        self._budget.limited.remote(epoch, retry_after)

    def answered(self) -> None:
        self._answered += 1
        now = time.monotonic()
        if now - self._reported >= 0.25:
            self._budget.answered.remote(self._answered)
            self._answered, self._reported = 0, now


# ----------------------------------------------------------------------------------------------- worker


class ShardWorker:
    """One worker (a Ray actor): the prepared config and its teachers, kept across the shards it runs."""

    def __init__(
        self,
        config: dict[str, Any],
        base_dir: str,
        seeds_digest: str,
        in_flight: int | None,
        budgets: dict[str, str],
        workers: int = 1,
    ):
        from factory.config import parse_config

        cfg = parse_config(config, source="the driver's config", base_dir=Path(base_dir))
        # The seeds come a shard at a time with run_shard; the seed file is not read here (unless the recipe
        # binds its state to all the seeds).
        self.prep = prepare(cfg, store=os.devnull, seeds_of=([], seeds_digest))
        if in_flight is not None:
            for tc in cfg.roles().values():
                tc.max_in_flight = max(1, in_flight)
                if tc.max_tokens_per_minute:  # each worker keeps to its share of the token limit
                    tc.max_tokens_per_minute = tc.max_tokens_per_minute / max(1, workers)
        self.teachers = make_teachers(self.prep)
        self._budgets = budgets  # actor names: one restarted by Ray finds them again
        self.runner: Any = None

    def _share_budgets(self) -> None:
        """Point the API teachers' pacing at the cluster's budget actors (once, on the actor's loop)."""
        if not self._budgets:
            return
        import ray

        for role, name in self._budgets.items():
            teacher = self.teachers.get(role)
            if teacher is not None and hasattr(teacher, "pacer"):
                tokens = getattr(teacher.pacer, "tokens_per_minute", None)  # this worker's share
                teacher.pacer = SharedPacer(ray.get_actor(name), tokens)
        self._budgets = {}

    def ready(self) -> str:
        return self.prep.run_id

    async def run_shard(
        self,
        shard: str,
        shard_seeds: list[Any],
        done: list[str],
        root: str,
        budget: Share = (None, None, None),
    ) -> dict[str, Any]:
        from factory.runner import Budget, Runner

        prep = self.prep
        self._share_budgets()
        files = ShardFiles(root)
        attempt = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        earlier = read_shard(files, shard)
        skip = set(done) | {s for _, s, _ in earlier.tables["seeds_done"]}
        seeds = [s for s in shard_seeds if s.id not in skip]
        # The same folder for every attempt of this shard on this node: an attempt killed here left its
        # journal of answers not yet written out, and this one recovers them.
        scratch = Path(tempfile.gettempdir(), "factory-shards", prep.run_id, shard)
        scratch.mkdir(parents=True, exist_ok=True)
        try:
            store = _PartStore(scratch / "shard.duckdb", files, f"{shard}/{attempt}")
            try:
                cache = earlier.tables["cache"]
                if files.exists(f"{shard}/{SNAPSHOT}"):
                    cache = cache + _rows(files.read_table(f"{shard}/{SNAPSHOT}"))
                if cache:  # answers already paid for: into the scratch store only, not out as parts again
                    Store.commit(store, Batch(cache=cache), known_new=False)
                cfg = prep.config
                invocation = store.start_run(
                    run_id=prep.run_id, name=cfg.name, recipe=cfg.recipe, teacher=self.teachers["default"].name,
                    config={}, config_hash="", version="",
                )  # fmt: skip
                plan = plan_for(prep, self.teachers, seeds=seeds, budget=Budget(*budget))
                # the teachers live across shards: a runner counts from where they stand when it starts
                self.runner = Runner(store, self.teachers, plan, invocation)
                result = await self.runner.run()
                stats = self.runner.stats(result.status)
                self.runner = None
                p = result.progress
                doc = {
                    "shard": shard, "attempt": attempt, "status": result.status, "error": result.error,
                    "exit_code": result.exit_code,
                    "seeds": len(seeds), "seeds_done": p.seeds_done, "seeds_failed": p.seeds_failed,
                    "records": p.records, "requests_sent": p.requests_sent, "cache_hits": p.cache_hits,
                    "prompt_tokens": p.prompt_tokens, "completion_tokens": p.completion_tokens,
                    "attempts": stats["attempts"], "failures": stats["failures"], "cost_usd": p.cost_usd,
                    "host": os.uname().nodename, "pid": os.getpid(), "elapsed_s": p.elapsed_s,
                }  # fmt: skip
                if result.status in ("done", "incomplete"):
                    doc["precomputed"] = self._precompute(store, files, f"{shard}/{attempt}", scratch)
                    files.write_json(f"{shard}/{attempt}/{SUCCESS}", doc)
                return doc
            finally:
                store.close()
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _precompute(self, store: Store, files: ShardFiles, prefix: str, scratch: Path) -> dict[str, Any]:
        """The per-record work of the run's filters that declare a ``precompute`` hook, done here on the
        shard's records and sent out with the shard as files of the filter cache (``{prefix}/filters/``)."""
        from factory.curation import is_artefact, precompute, record_rows

        local = scratch / "filters"
        shutil.rmtree(local, ignore_errors=True)
        rows = record_rows(store, self.prep.run_id)
        done = precompute(list(self.prep.filters), rows, local)
        sent = 0
        for path in sorted(p for p in local.rglob("*") if p.is_file() and is_artefact(p.name)):
            files.write_bytes(f"{prefix}/filters/{path.relative_to(local).as_posix()}", path.read_bytes())
            sent += 1
        return {"filters": done, "records": len(rows) if done else 0, "files": sent}

    def stop(self) -> bool:
        """Stop the shard in progress: no new request is sent, the ones in flight are waited for, and
        everything answered is committed (and written out)."""
        if self.runner is not None:
            self.runner.stop("interrupted", drain=True)
            return True
        return False

    async def close(self) -> None:
        for t in {id(t): t for t in self.teachers.values()}.values():
            await t.aclose()


# ----------------------------------------------------------------------------------------------- driver


@dataclass(slots=True)
class ClusterReport:
    shards: int = 0
    shards_skipped: int = 0  # finished by an earlier invocation
    shards_done: int = 0
    attempts_failed: int = 0
    ingest_s: float = 0.0
    workers: int = 0
    seeds_done: int = 0
    seeds_failed: int = 0
    records: int = 0
    requests_sent: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 0
    cost_usd: float = 0.0  # at the teachers' prices (an estimate)
    failures: Counter[str] = field(default_factory=Counter)  # failed attempts by kind, final_* as in a run
    budget_reached: bool = False
    per_worker: dict[str, int] = field(default_factory=dict)
    # the error that stopped a shard's run (a wrong key, model or URL): it stops the whole run
    fatal: str | None = None
    fatal_exit_code: int | None = None


Share = tuple[int | None, int | None, float | None]  # a shard's budget: requests, output tokens, dollars
MONEY = 2  # the dollars' place in a Share
MIN_SHARE_USD = 1e-6  # a dollar share smaller than this is none


class _Spending:
    """The run's budget across shards: each shard gets a share of what is neither spent nor held by
    running shards, and hands back what it did not use. The shares never add up to more than the budget."""

    def __init__(self, max_requests: int | None, max_output_tokens: int | None, max_usd: float | None = None):
        self.limits = (max_requests, max_output_tokens, max_usd)
        self.spent: list[float] = [0, 0, 0.0]
        self.held: list[float] = [0, 0, 0.0]

    def share(self, idle: int) -> Share | None:
        out: list[Any] = []
        for k, limit in enumerate(self.limits):
            if limit is None:
                out.append(None)
                continue
            left = limit - self.spent[k] - self.held[k]
            part = left / max(1, idle) if k == MONEY else int(left // max(1, idle))
            if part <= (MIN_SHARE_USD if k == MONEY else 0):
                return None
            out.append(part)
            self.held[k] += part
        return out[0], out[1], out[2]

    def returned(self, share: Share, doc: dict[str, Any] | None) -> None:
        keys = ("requests_sent", "completion_tokens", "cost_usd")
        for k, part in enumerate(share):
            if part is None:
                continue
            self.held[k] -= part
            used = doc.get(keys[k]) if doc else None
            # a shard lost for good may have spent all of its share
            self.spent[k] += part if used is None else min(part, used)


def shards_of(n_seeds: int, shard_seeds: int) -> list[tuple[str, int, int]]:
    return [
        (shard_name(i), lo, min(n_seeds, lo + shard_seeds))
        for i, lo in enumerate(range(0, n_seeds, shard_seeds))
    ]


def shard_name(i: int) -> str:
    return f"{i:05d}"


@dataclass(slots=True)
class _Shard:
    name: str
    seeds: list[Any]  # the shard's seeds, in file order
    done: set[str]  # the ids of those an earlier invocation finished


class _ShardQueue:
    """The shards with seeds left, read from the seed file one shard at a time as workers take them (each
    shard's finished seeds looked up in the store then); a shard sent back (its budget share ran out) is
    taken again before the next one is read. At most one shard is read ahead."""

    def __init__(self, prep: Any, store: Store, shard_seeds: int, report: ClusterReport, *, resume: bool):
        from factory.seeds import seed_windows

        self._prep, self._store, self._report = prep, store, report
        self._windows = enumerate(seed_windows(prep.seeds, shard_seeds))
        self._resume = resume  # some seeds are finished: each shard's are looked up
        self._ahead: deque[_Shard] = deque()
        self._back: deque[_Shard] = deque()

    def _read(self) -> bool:
        """Read up to the next shard with seeds left; False at the end of the file."""
        for i, seeds in self._windows:
            ids = [s.id for s in seeds]
            done = self._store.done_among(self._prep.run_id, ids) if self._resume else set()
            if len(done) < len(ids):
                self._ahead.append(_Shard(shard_name(i), seeds, done))
                return True
            self._report.shards_skipped += 1
        return False

    def __bool__(self) -> bool:
        return bool(self._back or self._ahead or self._read())

    def at_least(self, n: int) -> int:
        """How many shards are left, counted up to ``n`` (read ahead as far as that)."""
        while len(self._back) + len(self._ahead) < n and self._read():
            pass
        return len(self._back) + len(self._ahead)

    def pop(self) -> _Shard:
        if self._back:
            return self._back.popleft()
        if not self._ahead:
            self._read()
        return self._ahead.popleft()

    def again(self, item: _Shard) -> None:
        self._back.append(item)

    def clear(self) -> None:
        self._back.clear()
        self._ahead.clear()
        self._windows = enumerate(iter(()))


def shard_root(prep: Any) -> str:
    ex = prep.config.executor
    if ex.shard_dir:
        base = ex.shard_dir if "://" in ex.shard_dir else str(prep.config.path(ex.shard_dir))
    else:
        base = str(prep.store_path.with_name(prep.store_path.name + ".shards"))
    return base.rstrip("/") + "/" + prep.run_id


def ray_init(address: str | None, *, num_cpus: int | None = None) -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "executor ray needs Ray: pip install 'distill-factory[ray]' (or pip install ray)"
        ) from None
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"logging_level": "warning", "log_to_driver": False}
        if address in (None, "local"):
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            kwargs.update(address="local", include_dashboard=False, object_store_memory=256 * 2**20)
            if num_cpus:
                kwargs["num_cpus"] = num_cpus
        else:
            kwargs["address"] = address
        # The workers import the project from the driver's interpreter environment; the working folder
        # goes with them so relative config and seed paths resolve as here.
        kwargs["runtime_env"] = {"env_vars": {"FACTORY_EVENT_LOOP": "asyncio"}}
        try:
            ray.init(**kwargs)
        except ConnectionError as exc:
            raise ConfigError(f"executor.address {address!r}: cannot reach a Ray cluster: {exc}") from None
    return ray


def connect(prep: Any, address: str | None = None) -> Any:
    """Check what a cluster run cannot do and reach the cluster, before anything is stored."""
    from factory import plugins

    cfg = prep.config
    if plugins.in_process("recipe", cfg.recipe):
        raise ConfigError(
            f"executor ray: the recipe {cfg.recipe!r} was defined in this Python session, and Ray workers "
            "cannot load it; put it in a module and name it in the config as `package.module:OBJECT` (or "
            "`path/to/file.py:OBJECT`, on a path every node sees), or run it without executor ray"
        )
    ShardFiles(shard_root(prep))  # a shard_dir URL no filesystem opens
    ray = ray_init(address if address is not None else cfg.executor.address)
    if _local_engine(prep):  # workers the cluster's GPUs cannot hold
        worker_plan(prep, ray, -(-len(prep.seeds) // cfg.executor.shard_seeds))
    return ray


def worker_plan(
    prep: Any, ray: Any, shards: int, *, workers: int | None = None, teachers: dict[str, Any] | None = None
) -> WorkerPlan:
    """How many workers the cluster holds for this run and what each reserves (factory.placement)."""
    from factory.teachers.local import LocalEngineTeacher

    if teachers is None:
        teachers = make_teachers(prep)
    engines = [t.gpus_per_engine() for t in teachers.values() if isinstance(t, LocalEngineTeacher)]
    res = ray.cluster_resources()
    return plan_workers(
        local=_local_engine(prep), gpus_per_engine=max(engines, default=1),
        cluster_gpus=float(res.get("GPU", 0)), cluster_cpus=float(res.get("CPU", 1)),
        workers=workers or prep.config.executor.workers, shards=shards,
    )  # fmt: skip


def start_workers(
    ray: Any, plan: WorkerPlan, cls: type, args: tuple[Any, ...]
) -> tuple[list[Any], list[Any]]:
    """The plan's workers (actors of ``cls``) and their placement groups: each worker in a group of its own
    when its engine spans several GPUs, where vLLM finds it and puts its GPU workers in its bundles."""
    worker_cls = ray.remote(
        num_cpus=plan.num_cpus, num_gpus=plan.num_gpus, max_restarts=-1, max_task_retries=3
    )(cls)
    actors, groups = [], []
    for _ in range(plan.workers):
        if not plan.bundles:
            actors.append(worker_cls.remote(*args))
            continue
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        group = placement_group(list(plan.bundles), strategy=plan.strategy)
        groups.append(group)
        strategy = PlacementGroupSchedulingStrategy(
            placement_group=group, placement_group_bundle_index=0, placement_group_capture_child_tasks=True
        )
        actors.append(worker_cls.options(scheduling_strategy=strategy).remote(*args))
    return actors, groups


def _local_engine(prep: Any) -> bool:
    from factory.teachers import parse_spec

    return any(parse_spec(tc.spec)[0] != "openai" for tc in prep.config.roles().values())


async def run_on_ray(
    prep: Any,
    store: Store,
    invocation: int,
    *,
    address: str | None = None,
    workers: int | None = None,
    on_progress: Callable[[ClusterReport, int], None] | None = None,
    stop_event: asyncio.Event | None = None,
) -> ClusterReport:
    """Run the pending shards of ``prep`` on Ray and ingest them into ``store``; returns the totals."""
    cfg = prep.config
    ex = cfg.executor
    ray = connect(prep, address)
    files = ShardFiles(shard_root(prep))
    report = ClusterReport()
    # Parts left by an earlier invocation (a driver stopped before ingesting them) go in first.
    report.shards = -(-len(prep.seeds) // ex.shard_seeds)
    for i in range(report.shards):
        if files.listing(shard_name(i)):
            report.ingest_s += _ingest(store, files, shard_name(i), report, count=False)
    done_before = store.count_done(prep.run_id)
    queue = _ShardQueue(prep, store, ex.shard_seeds, report, resume=done_before > 0)
    if not queue:
        return report

    teachers = make_teachers(prep)
    res = ray.cluster_resources()
    most = workers or ex.workers or max(1, int(max(res.get("GPU", 0), res.get("CPU", 1))))
    placed = worker_plan(prep, ray, queue.at_least(most), workers=workers, teachers=teachers)
    local = _local_engine(prep)
    n = report.workers = placed.workers
    budgets: dict[str, Any] = {}
    names: dict[str, str] = {}
    in_flight = None
    if not local:
        budget_cls = ray.remote(num_cpus=0)(RateBudget)
        tag = uuid.uuid4().hex[:8]
        for role, tc in cfg.roles().items():
            opts = tc.backend_options()
            names[role] = f"factory-budget-{prep.run_id}-{role}-{tag}"
            budgets[role] = budget_cls.options(name=names[role]).remote(
                opts.get("max_requests_per_minute"), opts.get("learn_rate_limit", True)
            )
        in_flight = max(1, cfg.teacher.max_in_flight // n)
    config = cfg.model_dump(mode="json")
    actors, groups = start_workers(
        ray,
        placed,
        ShardWorker,
        (config, str(cfg._base_dir.resolve()), prep.seeds_digest, in_flight, names, n),
    )
    try:
        ids = await asyncio.gather(*[a.ready.remote() for a in actors])
        if any(i != prep.run_id for i in ids):
            raise FactoryError(
                f"a worker prepared run {ids[0]}, the driver {prep.run_id}: the config or seed files differ "
                "between the nodes; put them in a folder every node sees or ship them with --working-dir"
            )
        running: dict[asyncio.Future[Any], tuple[Any, _Shard, Share]] = {}
        root = files.uri if "://" in files.uri else files.root

        async def result_of(ref: Any) -> Any:
            return await ref

        spend = _Spending(cfg.budget.max_requests, cfg.budget.max_output_tokens, cfg.budget.max_usd)
        identities = {role: t.identity() for role, t in teachers.items()}

        def submit(actor: Any) -> None:
            share = spend.share(idle=n - len(running))
            if share is None:  # the budget is spent
                queue.clear()
                report.budget_reached = True
                return
            item = queue.pop()
            _snapshot(store, files, prep, identities, item)
            ref = actor.run_shard.remote(item.name, item.seeds, sorted(item.done), root, share)
            fut = asyncio.ensure_future(result_of(ref))
            running[fut] = (actor, item, share)

        for actor in actors:
            if queue:
                submit(actor)
        stopping = False
        while running:
            if stop_event is not None and stop_event.is_set() and not stopping:
                stopping = True
                queue.clear()
                await asyncio.gather(*[a.stop.remote() for a in actors], return_exceptions=True)
            finished, _ = await asyncio.wait(list(running), timeout=0.2, return_when=asyncio.FIRST_COMPLETED)
            for fut in finished:
                actor, item, share = running.pop(fut)
                shard = item.name
                try:
                    doc = fut.result()
                except Exception as exc:  # its retries are spent: the parts it wrote are still ingested
                    report.attempts_failed += 1
                    log.error("shard %s failed after its retries: %s", shard, exc)
                    doc = None
                report.ingest_s += _ingest(store, files, shard, report)
                spend.returned(share, doc)
                if doc is not None and doc["status"] == "budget" and not stopping:
                    if doc["requests_sent"]:
                        queue.again(item)  # its share ran out: the rest of it waits for what is left
                    else:  # a share too small for even one request of this shard
                        queue.clear()
                        report.budget_reached = True
                if doc is not None:
                    report.shards_done += doc["status"] in ("done", "incomplete")
                    worker = f"{doc['host']}:{doc['pid']}"
                    report.per_worker[worker] = report.per_worker.get(worker, 0) + 1
                    for k in ("seeds_failed", "requests_sent", "cache_hits", "prompt_tokens",
                              "completion_tokens", "attempts"):  # fmt: skip
                        setattr(report, k, getattr(report, k) + int(doc[k] or 0))
                    report.cost_usd += float(doc.get("cost_usd") or 0.0)
                    report.failures.update(doc.get("failures") or {})
                fatal = doc is not None and doc["status"] == "failed" and doc.get("error")
                if doc is not None and fatal and report.fatal is None:
                    report.fatal, report.fatal_exit_code = doc["error"], doc.get("exit_code")
                    if not stopping:  # every shard would meet it: the others stop, what they finished is kept
                        stopping = True
                        queue.clear()
                        await asyncio.gather(*[a.stop.remote() for a in actors], return_exceptions=True)
                if on_progress is not None:
                    on_progress(report, done_before + report.seeds_done)
                if queue and not stopping:
                    submit(actor)
    finally:
        for a in actors:
            with contextlib.suppress(Exception):
                await a.close.remote()
            with contextlib.suppress(Exception):
                ray.kill(a)
        for b in budgets.values():
            with contextlib.suppress(Exception):
                ray.kill(b)
        for g in groups:
            with contextlib.suppress(Exception):
                ray.util.remove_placement_group(g)
    if report.shards_done + report.shards_skipped == report.shards and not ex.keep_shards:
        files.remove("")
    return report


def _snapshot(
    store: Store, files: ShardFiles, prep: Any, identities: dict[str, dict[str, Any]], item: _Shard
) -> None:
    """The store's answers to the shard's first-stage requests, for its workers to start from."""
    if files.exists(f"{item.name}/{SNAPSHOT}"):
        return
    from factory.keys import request_key

    pending = [s for s in item.seeds if s.id not in item.done]
    keys = sorted(
        {request_key(identities[role], r.body()) for role, r in first_stage_requests(prep, pending)}
    )
    rows = store.lookup(keys) if keys else {}
    if rows:
        table = pa.Table.from_pylist(
            [{c: r.get(c) for c in CACHE_COLUMNS} for r in rows.values()], schema=CACHE_SCHEMA
        )
        files.write_table(f"{item.name}/{SNAPSHOT}", table)


def _ingest(
    store: Store, files: ShardFiles, shard: str, report: ClusterReport, *, count: bool = True
) -> float:
    """Every part of the shard into the store; rows already there are skipped, so this may run again.
    The files of the filter cache the workers' precompute hooks wrote go into the store's filter cache (each
    copied whole, a name already there skipped)."""
    from factory.curation import filters_dir

    t0 = time.perf_counter()
    parts = read_shard(files, shard)
    target = filters_dir(store)
    for rel in parts.artefacts:
        dest = target.joinpath(*rel.split("/filters/", 1)[1].split("/"))
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(dest.name + ".tmp")
            with files.fs.open_input_stream(files.path(rel)) as f:
                tmp.write_bytes(f.read())
            os.replace(tmp, dest)
    t = parts.tables
    batch = Batch(cache=t["cache"], records=t["records"], seeds_done=t["seeds_done"],
                  verdicts=t["verdicts"], failures=t["failures"])  # fmt: skip
    if len(batch):
        store.commit(batch, known_new=False)
    if count:
        report.seeds_done += len({s for _, s, _ in parts.tables["seeds_done"]})
        report.records += len({r[0] for r in parts.tables["records"]})
    return time.perf_counter() - t0


__all__ = ["ClusterReport", "RateBudget", "ShardFiles", "ShardWorker", "run_on_ray", "shards_of"]
