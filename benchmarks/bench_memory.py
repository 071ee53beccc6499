"""Peak memory of `factory run` as the run grows, this tree against an earlier commit.

    python benchmarks/bench_memory.py --before REF [--after REF] [--sizes 10000,100000,1000000]
                                      [--before-up-to 100000] [--c 1024]

Each run is the whole `factory run CONFIG.yaml` process (`python -m factory.cli run`, its own interpreter,
the tree on PYTHONPATH) with a trivial recipe (`prompt`, one request a seed, a JSONL seed file of N rows)
against one fault server (5 ms latency, C requests in flight); its peak resident memory is the child's
`ru_maxrss` from `wait4`. REF's tree is unpacked from git (`git archive`), and so is --after's when
given (else this working tree is measured); at each size the two trees run
one after the other, on seed files alike and fresh stores. The figure is the slope of peak memory over
requests (least squares over the sizes, bytes per request) on each side, and the ratio, taken over the
sizes both sides ran (``--before-up-to`` leaves REF out of the larger ones: a million requests take
20 minutes a side here); this tree's slope over all its sizes is reported too. Target: this tree's slope
under 10 % of REF's. Writes `benchmarks/results/memory.json`; exits 1 when the target is
missed.
"""

from __future__ import annotations

import argparse
import os
import shutil
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
from _trees import unpack  # noqa: E402

from factory.testing.fault_server import start_subprocess  # noqa: E402

TARGET = 0.10  # this tree's bytes per request, as a share of the earlier commit's


def write_seeds(path: Path, n: int) -> None:
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            f.write(f'{{"id": "s{i:08d}", "text": "prompt number {i}: say something short"}}\n')


def one(tree: Path, seeds: Path, work: Path, url: str, c: int) -> dict[str, float]:
    """One `factory run` of ``tree``: its peak RSS (MB), wall time and requests per second."""
    work.mkdir(parents=True)
    cfg = work / "bench.yaml"
    cfg.write_text(
        f"name: mem\nrecipe: prompt\nseeds: '{seeds}'\nstore: '{work / 'store.duckdb'}'\n"
        f"params: {{max_tokens: 16}}\nteacher: {{spec: 'openai:m@{url}', max_in_flight: {c}}}\n",
        encoding="utf-8",
    )
    env = {**os.environ, "PYTHONPATH": str(tree)}
    t0 = time.perf_counter()
    with (work / "out.txt").open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "factory.cli", "run", str(cfg), "--json"],
            cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    text = (work / "out.txt").read_text(encoding="utf-8", errors="replace")
    if proc.returncode or '"status": "done"' not in text:
        raise SystemExit(f"{tree} failed (exit {proc.returncode}):\n{text[-3000:]}")
    n = sum(1 for _ in seeds.open("rb"))
    return {"peak_mb": usage.ru_maxrss / 1024, "wall_s": wall, "rps": n / wall}


def slope(xs: list[int], ys: list[float]) -> float:
    """Least-squares slope of ys over xs."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", required=True, help="the commit to compare with (a ref or a hash)")
    ap.add_argument("--after", help="a commit to measure instead of this working tree")
    ap.add_argument("--sizes", default="10000,100000,1000000", help="requests a run, comma-separated")
    ap.add_argument("--before-up-to", type=int, default=None, help="run REF only at sizes up to this")
    ap.add_argument("--c", type=int, default=1024, help="requests in flight")
    ap.add_argument("--reps", type=int, default=1, help="runs a side and size (the median is quoted)")
    ap.add_argument("--latency", type=float, default=0.005, help="the fault server's latency, seconds")
    args = ap.parse_args()
    sizes = sorted(int(x) for x in args.sizes.split(","))
    ctx = context(["duckdb", "aiohttp", "uvloop"])
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    runs: dict[str, dict[int, list[dict[str, float]]]] = {"before": {}, "after": {}}
    with tempfile.TemporaryDirectory(prefix="factory-bench-mem-") as tmp:
        for side in ("before", "after"):
            Path(tmp, side).mkdir()
        before_tree, before_commit = unpack(args.before, Path(tmp, "before"))
        after_tree = ROOT
        if args.after:
            after_tree, head = unpack(args.after, Path(tmp, "after"))
        trees = {"before": before_tree, "after": after_tree}
        with start_subprocess(latency=args.latency) as srv:
            for n in sizes:
                seeds = Path(tmp, f"seeds-{n}.jsonl")
                write_seeds(seeds, n)
                for rep in range(args.reps):
                    for side, tree in trees.items():
                        if side == "before" and args.before_up_to is not None and n > args.before_up_to:
                            continue
                        work = Path(tmp, f"{side}-{n}-{rep}")
                        r = one(tree, seeds, work, srv.base_url, args.c)
                        shutil.rmtree(work)
                        runs[side].setdefault(n, []).append(r)
                        print(f"{n:>9,} requests  {side:<6} run {rep + 1}: {r['peak_mb']:7.1f} MB peak, "
                              f"{r['wall_s']:6.1f} s ({r['rps']:,.0f}/s)", flush=True)  # fmt: skip
                seeds.unlink()
    figures: dict[str, object] = {
        "before": before_commit, "after": head, "reps": args.reps, "in_flight": args.c,
        "latency_s": args.latency, "sizes": {},
    }  # fmt: skip
    peaks: dict[str, list[float]] = {"before": [], "after": []}
    print(f"\n{'requests':>10}  {'before':>9}  {'after':>9}")
    for n in sizes:
        row = {}
        for side in ("before", "after"):
            if n not in runs[side]:
                continue
            med = {k: statistics.median(r[k] for r in runs[side][n]) for k in ("peak_mb", "wall_s", "rps")}
            peaks[side].append(med["peak_mb"])
            row[side] = {k: round(v, 1) for k, v in med.items()}
        figures["sizes"][str(n)] = row  # type: ignore[index]
        before = f"{row['before']['peak_mb']:6.1f} MB" if "before" in row else "        –"
        print(f"{n:>10,}  {before}  {row['after']['peak_mb']:6.1f} MB")
    both = [n for n in sizes if n in runs["before"]]
    per_request = {
        "before": slope(both, peaks["before"]) * 2**20,
        "after": slope(both, peaks["after"][: len(both)]) * 2**20,
    }
    ratio = per_request["after"] / per_request["before"]
    figures["bytes_per_request"] = {side: round(v, 1) for side, v in per_request.items()}
    figures["after_all_sizes"] = round(slope(sizes, peaks["after"]) * 2**20, 1)
    figures["ratio"] = round(ratio, 3)
    missed = [] if ratio < TARGET else [f"after's slope is {ratio:.1%} of before's (target < {TARGET:.0%})"]
    figures["missed"] = missed
    print(f"bytes per request (slope): before {per_request['before']:,.0f}, after {per_request['after']:,.0f} "
          f"({ratio:.1%}); after over all sizes {figures['after_all_sizes']:,.0f}")  # fmt: skip
    path = save("memory", ctx, figures)
    print(f"wrote {path}" + ("; missed: " + "; ".join(missed) if missed else "; target met"))
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
