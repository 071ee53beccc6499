"""The batch path (`teacher.mode: batch`) against the online path on the same requests: client cost.

    python benchmarks/bench_batch.py [--n 100000] [--reps 1]

Each side is one whole `factory run` process (its own interpreter, this tree on PYTHONPATH) of the
`prompt` recipe (one request a seed, N seeds) against one fault server process: batch_rate 0 (the Batch
API runs every line as fast as its loop goes) for the batch side, no latency and 256 in flight for the
online side, on fresh stores. Measured from the child: CPU seconds (user + system, from `wait4`), peak
resident memory (`ru_maxrss`), and bytes written to storage (`write_bytes` of /proc/self/io, read as the
process exits: the store, its write-ahead log, the journal and the batch upload files). Wall time is
quoted too, but the batch side's includes the server's own batch work and the polls.

Writes `benchmarks/results/batch.json`; README block `batch` (`python benchmarks/figures.py`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from _results import context, save  # noqa: E402

from factory.testing.fault_server import start_subprocess  # noqa: E402

CHILD = """
import atexit, sys
from factory.cli import main
def io():
    with open(sys.argv[2], "w") as f:
        f.write(open("/proc/self/io").read())
atexit.register(io)
sys.exit(main(["run", sys.argv[1], "--json"]))
"""


def write_seeds(path: Path, n: int) -> None:
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            f.write(f'{{"id": "s{i:08d}", "text": "prompt number {i}: say something short"}}\n')


def one(mode: str, seeds: Path, work: Path, url: str) -> dict[str, float]:
    work.mkdir(parents=True)
    store = work / "store.duckdb"
    batch = (
        "batch: {collect_s: 1.0, poll_interval_s: 0.5, poll_max_interval_s: 2.0}" if mode == "batch" else ""
    )
    cfg = work / "bench.yaml"
    cfg.write_text(
        f"name: b\nrecipe: prompt\nseeds: '{seeds}'\nstore: '{store}'\nparams: {{max_tokens: 16}}\n"
        f"teacher: {{spec: 'openai:m@{url}', max_in_flight: 256, mode: {mode}, {batch}}}\n",
        encoding="utf-8",
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    io_file = work / "io.txt"
    t0 = time.perf_counter()
    with (work / "out.txt").open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(cfg), str(io_file)], cwd=work, env=env,
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    text = (work / "out.txt").read_text(encoding="utf-8", errors="replace")
    if os.waitstatus_to_exitcode(status) or '"status": "done"' not in text:
        raise SystemExit(f"the {mode} run failed:\n{text[-3000:]}")
    io = dict(line.split(": ") for line in io_file.read_text().splitlines())
    return {
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_mb": usage.ru_maxrss / 1024,
        "written_mb": int(io["write_bytes"]) / 1e6,
        "store_mb": store.stat().st_size / 1e6,
        "wall_s": wall,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="requests (seeds of the prompt recipe)")
    ap.add_argument("--reps", type=int, default=1, help="runs a side (the median is quoted)")
    args = ap.parse_args()
    ctx = context(["duckdb", "aiohttp", "uvloop"])
    runs: dict[str, list[dict[str, float]]] = {"online": [], "batch": []}
    with tempfile.TemporaryDirectory(prefix="factory-bench-batch-") as tmp:
        seeds = Path(tmp, "seeds.jsonl")
        write_seeds(seeds, args.n)
        for rep in range(args.reps):
            for mode in ("online", "batch"):
                with start_subprocess(batch_rate=0) as srv:
                    r = one(mode, seeds, Path(tmp, f"{mode}-{rep}"), srv.base_url)
                    if mode == "batch":
                        b = srv.stats()["batch"]
                        assert b["requests"] == args.n and srv.stats()["requests"] == 0, b
                        r["batches"] = b["created"]
                runs[mode].append(r)
                print(f"{mode:<6} run {rep + 1}: {r['cpu_s']:6.1f} CPU s, {r['peak_mb']:6.0f} MB peak, "
                      f"{r['written_mb']:7.1f} MB written, {r['wall_s']:6.1f} s", flush=True)  # fmt: skip
    med = {m: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for m, rs in runs.items()}
    figures = {"requests": args.n, "reps": args.reps, "online": med["online"], "batch": med["batch"]}
    print(f"\n{'':<22}{'online':>10}{'batch':>10}{'batch/online':>14}")
    for k, label in (("cpu_s", "client CPU s"), ("peak_mb", "peak RSS MB"), ("written_mb", "MB written")):
        o, b = med["online"][k], med["batch"][k]
        print(f"{label:<22}{o:>10.1f}{b:>10.1f}{b / o:>14.2f}")
    path = save("batch", ctx, figures)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
