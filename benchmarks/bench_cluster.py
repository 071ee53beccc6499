"""The Ray executor against the single-process runner, on one box: the same run config with 1 and 2 shard
workers, and with executor local, against the fault server (its own process) at a fixed latency.

Reports wall time, records/s, the driver's ingest time, and the per-record costs the 100-million-record
estimate in benchmarks/README.md is built from (worker CPU per record, ingest per record, store bytes per
record). Each variant gets a fresh store; medians of --repeats.

    .venv/bin/python benchmarks/bench_cluster.py [--seeds 20000] [--in-flight 512] [--repeats 3]

Writes benchmarks/results/cluster.json (with the date, load average and versions).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import _results  # noqa: E402


def write(work: Path, url: str, n: int, in_flight: int, executor: str) -> Path:
    seeds = work / "seeds.jsonl"
    if not seeds.exists():
        seeds.write_text("".join(json.dumps({"id": f"s{i:07d}", "text": f"Write one line about the number {i}."}) + "\n"
                                 for i in range(n)))  # fmt: skip
    cfg = work / "bench.yaml"
    cfg.write_text(
        f"name: bench\nrecipe: prompt\nseeds: seeds.jsonl\nstore: bench.duckdb\nparams: {{max_tokens: 64}}\n"
        f"teacher: {{spec: 'openai:m@{url}', max_in_flight: {in_flight}}}\n"
        + (f"executor: {executor}\n" if executor else "")
    )
    return cfg


def one(url: str, n: int, in_flight: int, executor: str, shard_seeds: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="factory-bench-cluster-"))
    cfg = write(work, url, n, in_flight, executor)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "factory.cli", "run", str(cfg), "--json"], cwd=work, env=env,
                       capture_output=True, text=True)  # fmt: skip
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise SystemExit(f"run failed ({executor or 'local'}): {p.stderr[-2000:]}")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    store = work / "bench.duckdb"
    return {
        "wall_s": wall, "records": out["records_added"], "elapsed_s": out["elapsed_s"],
        "driver_cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "store_bytes": store.stat().st_size, "log": p.stderr,
    }  # fmt: skip


def ingest_cost(n: int) -> dict:
    """Driver-side ingestion alone: n records as shard parts → checked commit into a fresh store."""
    from factory.cluster import ClusterReport, ShardFiles, _batch_tables, _ingest
    from factory.keys import record_id
    from factory.store import Batch, Store

    work = Path(tempfile.mkdtemp(prefix="factory-bench-ingest-"))
    files = ShardFiles(str(work / "shards"))
    run = "bench-ingest"
    text = "x" * 300
    for shard in range(n // 10_000):
        b = Batch()
        for i in range(shard * 10_000, (shard + 1) * 10_000):
            key = f"k{i:012d}"
            b.cache.append((key, "t", "ok", '{"messages": []}', text, "stop", 20, 64, 200.0, None, run))
            b.records.append((record_id(run, "generate", f"s{i}", 0), run, "prompt", "generate", f"s{i}", 0, text,
                              "{}", [], [key], "t", "v1"))  # fmt: skip
            b.seeds_done.append((run, f"s{i}", 1))
        for name, table in _batch_tables(b):
            files.write_table(f"{shard:05d}/a/part-000001.{name}.parquet", table)
    with Store(work / "s.duckdb") as st:
        t0 = time.perf_counter()
        rep = ClusterReport()
        for shard in range(n // 10_000):
            _ingest(st, files, f"{shard:05d}", rep)
        dt = time.perf_counter() - t0
    size = (work / "s.duckdb").stat().st_size
    return {"records": n, "ingest_s": dt, "rows_per_s": n / dt, "store_bytes_per_record": size / n}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=20_000)
    ap.add_argument("--in-flight", type=int, default=512, help="total; each worker gets its share")
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--shard-seeds", type=int, default=1_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ingest", type=int, default=200_000, help="records for the ingest-alone measure")
    a = ap.parse_args()
    from factory.testing.fault_server import FaultConfig, start_subprocess

    variants = [
        ("local (one process)", ""),
        ("ray, 1 worker", f"{{kind: ray, workers: 1, shard_seeds: {a.shard_seeds}}}"),
        ("ray, 2 workers", f"{{kind: ray, workers: 2, shard_seeds: {a.shard_seeds}}}"),
    ]
    results: dict[str, list[dict]] = {v: [] for v, _ in variants}
    ctx = _results.context(["ray", "duckdb", "pyarrow"])
    load0 = os.getloadavg()[0]
    with start_subprocess(FaultConfig(latency=a.latency)) as srv:
        for r in range(a.repeats):
            for name, ex in variants:
                res = one(srv.base_url, a.seeds, a.in_flight, ex, a.shard_seeds)
                results[name].append(res)
                print(f"  {name:<20} run {r + 1}: {res['wall_s']:6.1f} s  {res['records'] / res['wall_s']:7.0f} records/s",
                      file=sys.stderr, flush=True)  # fmt: skip
    load1 = os.getloadavg()[0]
    ing = ingest_cost(a.ingest)

    def med(name: str, key: str) -> float:
        return statistics.median(x[key] for x in results[name])

    base = med("ray, 1 worker", "wall_s")
    figs = {"seeds": a.seeds, "latency_s": a.latency, "in_flight": a.in_flight, "shard_seeds": a.shard_seeds,
            "runs": a.repeats, "ingest": {k: round(v, 3) for k, v in ing.items()},
            "variants": {name: {k: round(med(name, k), 3) for k in ("wall_s", "driver_cpu_s", "store_bytes")}
                         for name, _ in variants}}  # fmt: skip
    print(f"written: {_results.save('cluster', ctx, figs)}", file=sys.stderr)
    print(f"{a.seeds:,} seeds of the `prompt` recipe, {a.latency * 1000:.0f} ms server latency, {a.in_flight} in flight "
          f"in all, {a.shard_seeds:,} seeds a shard; medians of {a.repeats}; load average {load0:.1f} at the start, "
          f"{load1:.1f} at the end.\n")  # fmt: skip
    print("| executor | wall s | records/s | records/s ÷ ray, 1 worker | CPU s of all processes | store MB |")
    print("|---|---|---|---|---|---|")
    for name, _ in variants:
        w = med(name, "wall_s")
        print(
            f"| {name} | {w:.1f} | {a.seeds / w:,.0f} | {base / w:.2f} | {med(name, 'driver_cpu_s'):.1f} | "
            f"{med(name, 'store_bytes') / 1e6:.1f} |"
        )
    print(f"\nDriver ingest alone ({ing['records']:,} records of ~300 characters, from parquet parts into the store, "
          f"checked inserts): {ing['ingest_s']:.1f} s, {ing['rows_per_s']:,.0f} records/s; "
          f"{ing['store_bytes_per_record']:.0f} store bytes per record.")  # fmt: skip


if __name__ == "__main__":
    main()
