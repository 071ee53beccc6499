"""``factory.run``: a run from a notebook or a script, with seeds and a recipe given as Python objects.

    import factory
    from recipes.functions import recipe

    simplify = recipe("simplify", prompt, parse, required=["text"])
    run = factory.run({"name": "simple", "recipe": simplify, "teacher": "openai:gpt-4o-mini"}, seeds=ds)
    run.funnel()            # generated, parsed, each filter's kept/dropped with top reasons, curated
    run.to_dataset()        # the curated records as a datasets.Dataset (the same columns as `factory export`)
    run.to_polars()

Seeds may be a ``datasets.Dataset``, the folder of one saved with ``save_to_disk``, a polars or pandas frame,
a list of dicts, or (as in a config) a seed file. In-memory seeds are written once to a file named by their
content, in a folder beside the store (``STORE.seeds/``), and the run reads that file like any other: the
same seeds give the same run, so running a cell again resumes it and sends nothing twice. The store is the
config's ``store:`` (default ``./data/factory.duckdb``) and holds everything a CLI run would, so `factory
status`, `factory report`, `factory filter` and `factory export` work on it too. A recipe that lives only in
the notebook cannot be loaded by another process: what needs its code there (a shaped export, a judge that
scores again) says so, naming the run and the fix (see :mod:`factory.stored_recipe`).
"""

from __future__ import annotations

import asyncio
import functools
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from factory.config import RunConfig, load_config, parse_config
from factory.errors import ConfigError
from factory.seed_sources import materialize

if TYPE_CHECKING:
    import pyarrow as pa

    from factory.plan import Progress


@dataclass
class Run:
    """A finished (or stopped) run: what ``factory.run`` returns."""

    run_id: str
    status: str  # done | interrupted | budget | failed
    progress: Progress
    store_path: Path
    error: str | None = None

    def funnel(self) -> dict[str, Any]:
        """Records generated, parsed, each filter's kept and dropped (with the top reasons), curated."""
        from factory.store import Store

        with Store(self.store_path, read_only=True) as st:
            return st.funnel(self.run_id)

    def _table(self, shape: str, include_rejected: bool) -> pa.Table:
        import pyarrow.parquet as pq

        from factory.export import export_run
        from factory.store import Store

        with (
            tempfile.TemporaryDirectory(prefix="factory-export-") as tmp,
            Store(self.store_path, read_only=True) as st,
        ):
            out = Path(tmp) / "export"
            export_run(st, self.run_id, out, fmt="parquet", shape=shape, include_rejected=include_rejected)
            files = sorted(out.rglob("*.parquet"))
            if not files:  # nothing curated
                import pyarrow as pa

                return pa.table({})
            return pq.ParquetDataset(files).read()

    def to_dataset(self, shape: str = "records", *, include_rejected: bool = False) -> Any:
        """The curated records (all of them, with why each was dropped, with ``include_rejected``) as a
        ``datasets.Dataset``, in a training shape if asked (``messages``, ``prompt_completion`` ...): the rows
        `factory export --as SHAPE` writes."""
        import datasets

        return datasets.Dataset(datasets.table.InMemoryTable(self._table(shape, include_rejected)))

    def to_polars(self, shape: str = "records", *, include_rejected: bool = False) -> Any:
        """As ``to_dataset``, as a polars DataFrame."""
        import polars as pl

        return pl.from_arrow(self._table(shape, include_rejected))


def run(
    config: str | os.PathLike[str] | dict[str, Any] | RunConfig,
    seeds: Any = None,
    *,
    store: str | os.PathLike[str] | None = None,
    on_progress: Callable[[Any], None] | None = None,
) -> Run:
    """Run (or resume) a config given as a file, a dict or a RunConfig. A dict's ``recipe`` may be a
    :class:`recipes.base.Recipe` object (e.g. from :func:`recipes.functions.recipe`); ``seeds`` (see the
    module docstring) replaces the config's ``seeds``. Bad input is a ConfigError naming what to fix."""
    from factory.api import interrupted, prepare, run_async, run_sync

    cfg = _config(config)
    if seeds is not None:
        cfg.seeds = str(materialize(seeds, cfg.store_path(str(store) if store else None)))
    elif not cfg.seeds:
        raise ConfigError("factory.run: no seeds: pass seeds=... or give the config a `seeds` file")
    prep = prepare(cfg, store=str(store) if store else None)
    held: dict[str, Any] = {}

    def hold(runner: Any) -> None:
        held.update(runner=runner, loop=asyncio.get_running_loop())
        if held.get("early"):  # a Ctrl+C came while the run was being set up: stop before the first request
            runner.stop("interrupted", drain=True)

    def on_interrupt(n: int) -> None:
        """Ctrl+C (a kernel interrupt) lands in this thread while the run goes on in another: tell it."""
        runner, loop = held.get("runner"), held.get("loop")
        if runner is None or loop is None:
            held["early"] = True
            interrupted(1, "Ctrl+C", lambda: None, None)
            return
        stop = functools.partial(
            loop.call_soon_threadsafe, functools.partial(runner.stop, "interrupted", drain=True)
        )
        if not interrupted(n, "Ctrl+C", stop, functools.partial(loop.call_soon_threadsafe, runner.abandon)):
            raise KeyboardInterrupt

    res = run_sync(run_async(prep, on_progress=on_progress, on_runner=hold), on_interrupt=on_interrupt)
    return Run(res.run_id, res.status, res.progress, prep.store_path, res.error)


def _config(config: Any) -> RunConfig:
    if isinstance(config, RunConfig):
        return config
    if isinstance(config, dict):
        data = dict(config)
        obj = data.get("recipe")
        if obj is not None and not isinstance(obj, str):
            from factory import plugins
            from recipes.base import Recipe

            if not isinstance(obj, Recipe):
                raise ConfigError(
                    f"config 'recipe': a {type(obj).__name__}; give a recipe name, a reference "
                    "(package.module:OBJECT) or a Recipe (e.g. recipes.functions.recipe(name, prompt, parse))"
                )
            plugins.register_object("recipe", obj.slug, obj)
            data["recipe"] = obj.slug
        data.setdefault("seeds", "")
        return parse_config(data, source="config", base_dir=Path.cwd())
    return load_config(config)
