"""Our side of `benchmarks/peers.py`, in the project venv: the factory runner, and the bare aiohttp bound.

    python ours_client.py factory|raw --url URL --n N --c C [--e2e OUT_DIR] [--rpm RPM]

`factory`: `factory.api` with the `prompt` recipe over N seeds (the same prompt texts as every client),
persistence and the request cache on, a fresh DuckDB store per run: what `factory run` does. With --e2e
the config also lists `minhash_dedup` (its defaults: word 5-grams, 128 permutations, 32 bands × 4 rows,
drop at Jaccard ≥ 0.8) and the three stages are timed apart, each as its CLI command runs it: generation
(`factory run`), the filter pass (`factory filter`, store opened again), the parquet export
(`factory export --format parquet`).
`raw`: one aiohttp session, a semaphore, orjson, on uvloop (`benchmarks/throughput.py raw`): the bound.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent), str(HERE.parent.parent)]
from _measure import MAX_TOKENS, Monitor, Stages, emit, prompts  # noqa: E402


def config(work: Path, url: str, n: int, c: int, dedup: bool, rpm: float | None = None) -> Path:
    import orjson

    seeds = work / "seeds.jsonl"
    seeds.write_bytes(
        b"".join(orjson.dumps({"id": f"s{i}", "text": t}) + b"\n" for i, t in enumerate(prompts(n)))
    )
    cfg = work / "bench.yaml"
    cfg.write_text(
        f"name: bench\nrecipe: prompt\nseeds: {seeds}\nstore: {work / 'bench.duckdb'}\n"
        f"params: {{max_tokens: {MAX_TOKENS}}}\nteacher: {{spec: 'openai:m@{url}', max_in_flight: {c}"
        + (f", max_requests_per_minute: {rpm:g}" if rpm else "")
        + "}\n"
        + ("filters:\n  - minhash_dedup\n" if dedup else "")
    )
    return cfg


def run_factory(url: str, n: int, c: int, e2e: str | None, rpm: float | None = None) -> dict:
    from factory import api
    from factory.export import export_configured
    from factory.store import Store

    work = Path(tempfile.mkdtemp(prefix="factory-peers-"))
    cfg = config(work, url, n, c, dedup=bool(e2e), rpm=rpm)
    mon = Monitor(url, n).begin()
    stages = Stages()
    prep = api.prepare(cfg)
    steps, prep.filters = prep.filters, []  # generation alone; the filter pass is timed on its own below
    res = api.run_sync(api.run_async(prep))
    stages.done("generate")
    out: dict = {"ok": res.progress.records, "status": res.status, "seeds_failed": res.progress.seeds_failed}
    if e2e:
        with Store(prep.store_path) as st:
            cur = api.run_sync(api.filter_run(st, prep.run_id, steps))
        stages.done("dedup")
        with Store(prep.store_path, read_only=True) as st:
            exp = export_configured(st, prep.run_id, e2e, overwrite=True, fmt="parquet")
        stages.done("export")
        out.update(kept=cur.funnel["curated"], rows=exp.rows)
    out.update(stages.out)
    return mon.finish(client="factory", c=c, **out)


def run_raw(url: str, n: int, c: int) -> dict:
    import uvloop
    from throughput import raw as raw_loop

    mon = Monitor(url, n).begin()
    ok = uvloop.run(raw_loop(url, n, c, "bench"))
    return mon.finish(client="raw", c=c, ok=ok)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("client", choices=["factory", "raw"])
    ap.add_argument("--url", required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--c", type=int, required=True)
    ap.add_argument("--e2e", default=None, help="export folder: run generation, dedup and export")
    ap.add_argument("--rpm", type=float, default=None, help="teacher.max_requests_per_minute")
    a = ap.parse_args()
    os.environ.setdefault("OPENAI_API_KEY", "bench-dummy-key")
    # Libraries imported before the clock starts, as for every client.
    if a.client == "factory":
        mods = ["factory.api", "factory.export", "factory.teachers.openai", "recipes.prompt"]
        for mod in mods + (["filters.minhash_dedup"] if a.e2e else []):
            importlib.import_module(mod)
        emit(run_factory(a.url, a.n, a.c, a.e2e, a.rpm))
    else:
        importlib.import_module("aiohttp")
        emit(run_raw(a.url, a.n, a.c))


if __name__ == "__main__":
    main()
