"""Client CPU per request of this tree against an earlier commit, each as a ratio to a bare aiohttp loop
measured in the same run.

    python benchmarks/bench_cpu_change.py --before REF [--levels 64,1024] [--reps 5] [--n 2000]

REF's tree is unpacked from git into a temporary folder (`git archive`), and runs of the bare loop, of
REF and of this tree alternate against one fault server (200 ms latency), so that the load of the box
weighs on all three alike. Each run is `benchmarks/throughput.py` of its own tree: steady client CPU per
request, between a tenth and nine tenths of the requests. The figure is the median of ``reps`` runs on
each side, as a ratio to the bare loop's median; the target is that this tree's ratio stays within 5 % of
REF's. Writes `benchmarks/results/cpu_change.json`; exits 1 when a level misses the target.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from _results import context, save  # noqa: E402
from _trees import unpack  # noqa: E402

from factory.testing.fault_server import start_subprocess  # noqa: E402

TARGET = 0.05


def one(tree: Path, client: str, url: str, n: int, c: int, tag: str) -> float:
    cmd = [sys.executable, str(tree / "benchmarks" / "throughput.py"), client, "--url", url,
           "--n", str(n), "--c", str(c), "--tag", tag]  # fmt: skip
    if client == "raw":
        cmd.append("--uvloop")
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if out.returncode:
        raise SystemExit(f"{tree.name} {client} at {c} in flight failed:\n{out.stderr[-2000:]}")
    return float(json.loads(out.stdout.strip().splitlines()[-1])["steady_cpu_us"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", required=True, help="the commit to compare with (a ref or a hash)")
    ap.add_argument("--levels", default="64,1024", help="requests in flight, comma-separated")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--n", type=int, default=2000, help="requests a run (at least 20 per request in flight)")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    ctx = context(["aiohttp", "uvloop"])
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    runs: dict[str, dict[int, list[float]]] = {"raw": {}, "before": {}, "after": {}}
    with tempfile.TemporaryDirectory() as tmp:
        before_tree, before_commit = unpack(args.before, Path(tmp))
        trees = {"raw": ROOT, "before": before_tree, "after": ROOT}
        with start_subprocess(latency=0.2) as srv:
            for rep in range(args.reps):
                for c in levels:
                    n = max(args.n, 20 * c)
                    for side, tree in trees.items():
                        client = "raw" if side == "raw" else "factory"
                        us = one(tree, client, srv.base_url, n, c, f"{side}-{c}-{rep}")
                        runs[side].setdefault(c, []).append(us)
                        print(f"{c:>5} in flight  {side:<6} run {rep + 1}: {us:7.1f} µs/request", flush=True)
    figures: dict[str, object] = {"before": before_commit, "after": head, "reps": args.reps, "levels": {}}
    missed = []
    print(f"\n{'in flight':>9}  {'bare loop':>9}  {'before':>16}  {'after':>16}  change")
    for c in levels:
        raw, before, after = (statistics.median(runs[s][c]) for s in ("raw", "before", "after"))
        change = (after / raw) / (before / raw) - 1.0
        figures["levels"][str(c)] = {  # type: ignore[index]
            "raw_us": round(raw, 1), "before_us": round(before, 1), "after_us": round(after, 1),
            "before_ratio": round(before / raw, 3), "after_ratio": round(after / raw, 3),
            "change": round(change, 3), "runs": {s: [round(x, 1) for x in runs[s][c]] for s in runs},
        }  # fmt: skip
        print(f"{c:>9}  {raw:7.1f} µs  {before:6.1f} µs ({before / raw:.3f})  "
              f"{after:6.1f} µs ({after / raw:.3f})  {change:+.1%}")  # fmt: skip
        if change > TARGET:
            missed.append(f"{c} in flight: {change:+.1%} > +{TARGET:.0%}")
    figures["missed"] = missed
    path = save("cpu_change", ctx, figures)
    print(f"\nwrote {path}" + ("; missed: " + "; ".join(missed) if missed else "; target met at every level"))
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
