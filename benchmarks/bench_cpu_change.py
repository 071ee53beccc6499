"""Client CPU per request of this tree against an earlier commit, each as a ratio to a bare aiohttp loop
measured in the same run.

    python benchmarks/bench_cpu_change.py --before REF [--levels 64,1024] [--reps 5] [--n 2000]

REF's tree is unpacked from git into a temporary folder (`git archive`), and runs of the bare loop, of
REF and of this tree alternate against one fault server (200 ms latency), so that the load of the box
weighs on all three alike. On a box with two cores or more the server runs on the first core and every
client on the second, so that the server's work does not land in the client's caches and time slices.
Each run is `benchmarks/throughput.py` of its own tree: steady client CPU per request, between a tenth and
nine tenths of the requests.

Each side's figure is its median over ``reps`` runs, as a ratio to the bare loop's median. The change is
the median of the per-round changes: in round i, (after_i / raw_i) / (before_i / raw_i), runs made a few
seconds apart, so a slow minute of the box weighs on both sides of the round alike. (The change of the
medians is recorded beside it.) The target is that this tree's ratio stays within 5 % of REF's. Writes
`benchmarks/results/cpu_change.json`; exits 1 when a level misses the target.
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


def _cores() -> tuple[set[int], set[int]] | None:
    """(server core, client core) on a box with two cores or more that lets us pin; else None."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return None
    return ({cpus[0]}, {cpus[1]}) if len(cpus) >= 2 else None


CORES = _cores()


def _pin_client() -> None:
    if CORES is not None:
        os.sched_setaffinity(0, CORES[1])


def one(tree: Path, client: str, url: str, n: int, c: int, tag: str) -> float:
    cmd = [sys.executable, str(tree / "benchmarks" / "throughput.py"), client, "--url", url,
           "--n", str(n), "--c", str(c), "--tag", tag]  # fmt: skip
    if client == "raw":
        cmd.append("--uvloop")
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, preexec_fn=_pin_client)
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
            if CORES is not None:
                os.sched_setaffinity(srv.pid, CORES[0])
            for rep in range(args.reps):
                for c in levels:
                    n = max(args.n, 20 * c)
                    for side, tree in trees.items():
                        client = "raw" if side == "raw" else "factory"
                        us = one(tree, client, srv.base_url, n, c, f"{side}-{c}-{rep}")
                        runs[side].setdefault(c, []).append(us)
                        print(f"{c:>5} in flight  {side:<6} run {rep + 1}: {us:7.1f} µs/request", flush=True)
    figures: dict[str, object] = {
        "before": before_commit, "after": head, "reps": args.reps, "levels": {},
        "pinned": None if CORES is None else {"server": sorted(CORES[0]), "clients": sorted(CORES[1])},
    }  # fmt: skip
    missed = []
    print(f"\n{'in flight':>9}  {'bare loop':>9}  {'before':>16}  {'after':>16}  change")
    for c in levels:
        raw, before, after = (statistics.median(runs[s][c]) for s in ("raw", "before", "after"))
        sides = (runs["raw"][c], runs["before"][c], runs["after"][c])
        rounds = [(a / r) / (b / r) - 1.0 for r, b, a in zip(*sides, strict=True)]
        change = statistics.median(rounds)
        figures["levels"][str(c)] = {  # type: ignore[index]
            "raw_us": round(raw, 1), "before_us": round(before, 1), "after_us": round(after, 1),
            "before_ratio": round(before / raw, 3), "after_ratio": round(after / raw, 3),
            "change": round(change, 3), "change_of_medians": round((after / raw) / (before / raw) - 1.0, 3),
            "round_changes": [round(x, 3) for x in rounds],
            "runs": {s: [round(x, 1) for x in runs[s][c]] for s in runs},
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
