"""Export of a large run: ours (streamed from DuckDB, written as it is read) against loading the run into
memory first (the curated table as Python rows, then `datasets.Dataset.from_list(...).to_parquet`).

Builds a store of N ~1 KB records of the `prompt` recipe once per size, then runs each exporter in its own
process and reports wall time, rows/s and peak RSS (medians of --repeats). The claim to check: our peak
memory stays flat as the run grows, the in-memory way grows with it.

    .venv/bin/python benchmarks/bench_export.py [--sizes 100000,300000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def build_store(path: Path, n: int) -> str:
    from factory.keys import record_id
    from factory.store import Batch, Store

    run_id = "bench-export"
    with Store(path) as st:
        st.start_run(
            run_id=run_id, name="bench-export", recipe="prompt", teacher="scripted:x",
            config={"name": "bench-export", "recipe": "prompt", "license": "cc-by-4.0"}, config_hash="x",
            version="bench",
        )  # fmt: skip
        filler = "lorem ipsum dolor sit amet " * 30  # ~800 characters of completion
        for start in range(0, n, 20_000):
            rows = []
            for i in range(start, min(n, start + 20_000)):
                payload = {"prompt": f"question number {i}: what is {i} plus {i}?",
                           "completion": f"{i} {filler}", "finish_reason": "stop"}  # fmt: skip
                rid = record_id(run_id, "completion", f"s{i:08d}", 0)
                rows.append((rid, run_id, "prompt", "completion", f"s{i:08d}", 0, payload["completion"],
                             orjson.dumps(payload).decode(), [], [f"k{i}"], "scripted:x", "v1"))  # fmt: skip
            st.commit(Batch(records=rows))
    return run_id


def child(kind: str, store: str, run_id: str, out: str) -> None:
    from factory.store import Store

    t0 = time.perf_counter()
    with Store(store, read_only=True) as st:
        if kind == "ours":
            from factory.export import export_run

            rows = export_run(st, run_id, Path(out), fmt="hf", shape="prompt_completion").rows
        else:
            import datasets

            table = st.curated_table(run_id)
            records = [dict(orjson.loads(r["payload"]), record_id=r["id"]) for r in table.to_pylist()]
            Path(out, "data").mkdir(parents=True)
            datasets.Dataset.from_list(records).to_parquet(
                str(Path(out, "data", "train-00000-of-00001.parquet"))
            )
            rows = len(records)
    wall = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"kind": kind, "rows": rows, "wall_s": wall, "peak_mb": peak_mb}))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100000,300000")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", nargs=4, metavar=("KIND", "STORE", "RUN", "OUT"))
    a = ap.parse_args()
    if a.child:
        child(*a.child)
        return 0
    lines = ["| records | exporter | wall s (median) | rows/s | peak RSS MB | ours ÷ in-memory (RSS) |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="bench-export-"))
    try:
        for n in [int(x) for x in a.sizes.split(",")]:
            store = work / f"s{n}.duckdb"
            run_id = build_store(store, n)
            got: dict[str, list[dict]] = {"ours": [], "in-memory": []}
            for _ in range(a.repeats):
                for kind in got:
                    out = work / f"out-{kind}"
                    shutil.rmtree(out, ignore_errors=True)
                    res = subprocess.run(
                        [sys.executable, __file__, "--child", kind, str(store), run_id, str(out)],
                        capture_output=True, text=True, check=True,
                    )  # fmt: skip
                    got[kind].append(json.loads(res.stdout.strip().splitlines()[-1]))
            med = {
                k: {m: statistics.median(r[m] for r in v) for m in ("wall_s", "peak_mb")}
                for k, v in got.items()
            }
            for kind in got:
                ratio = med["ours"]["peak_mb"] / med["in-memory"]["peak_mb"] if kind == "ours" else 1.0
                lines.append(f"| {n:,} | {kind} | {med[kind]['wall_s']:.1f} | {n / med[kind]['wall_s']:,.0f} | "
                             f"{med[kind]['peak_mb']:.0f} | {ratio:.2f} |")  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
