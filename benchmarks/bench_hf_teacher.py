"""A seeded recipe run on the transformers teacher: this tree against an earlier commit, requests per second.

    python benchmarks/bench_hf_teacher.py --before REF [--questions 2] [--k 4] [--max-tokens 24]
                                          [--batch-size 16] [--reps 3] [--same-text 4] [--write-readme]

The run is the `rationales` recipe (its few-shot prompt, ``--k`` samples a question at temperature 0.7,
each sample its own seed, as the recipe derives them) over the first ``--questions`` questions of
``data/seeds/arithmetic.jsonl``, with ``transformers:`` on the embedded SmolLM2-135M-Instruct folder
(float32, the CPU, ``batch_size`` ``--batch-size``), its recipe filters off. Each tree's teacher runs in
a process of its own, its model loaded and warmed with one request before any run; each run has a fresh
store, and ``api.run`` is timed: requests/s = the run's requests / that time (the modules a run imports are
imported before). The earlier commit's tree (``--before``) is unpacked by ``git archive``; the two trees'
runs alternate, ``--reps`` each, and the figures are medians. The generate calls each run made are
counted (a wrapper around the teacher's ``_generate``).

``--same-text N``: after this tree's last run, N of its requests are generated again one at a time; the
figure is how many got the text they got in the run's batches (see factory/teachers/hf.py for what the
seed promises). Writes ``benchmarks/results/hf_teacher.json``; target: this tree at least 2× the earlier
commit's requests/s (exit 1 when missed).
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
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from _results import context, save  # noqa: E402
from _trees import unpack  # noqa: E402

TARGET = 2.0
RUN = r"""
import asyncio, json, sys, time
from pathlib import Path
import factory
import factory.runner, factory.store, recipes.rationales  # imported (and compiled) before the clock starts
from factory import api
from factory.teachers import build_teacher
from factory.teachers.embedded import ensure_safetensors
from factory.teachers.hf import TransformersTeacher
from factory.types import Completion, Request, Sampling

assert Path(factory.__file__).resolve().is_relative_to(Path.cwd().resolve()), factory.__file__
calls = []
inner = TransformersTeacher._generate
def counted(self, *args):
    calls.append(len(args[-1]))
    return inner(self, *args)
TransformersTeacher._generate = counted

t = build_teacher(f"transformers:{ensure_safetensors()}", {"batch_size": int(sys.argv[1]), "dtype": "float32"})
warm = Request.chat("Hello", sampling=Sampling(temperature=0.0, max_tokens=4))
asyncio.run(t.complete([warm]))
plain = t.complete
print("ready", flush=True)
for line in sys.stdin:
    v = json.loads(line)
    calls.clear()
    seen = []
    async def recording(reqs):
        out = await plain(reqs)
        seen.extend(zip(reqs, out))
        return out
    t.complete = recording
    t0 = time.perf_counter()
    res = api.run(v["config"], teacher=t)
    wall = time.perf_counter() - t0
    t.complete = plain
    assert res.status == "done", res.error
    out = {"wall_s": wall, "requests": len(seen), "generate_calls": len(calls), "rows_per_call": list(calls),
           "completion_tokens": sum(c.completion_tokens for _, c in seen if isinstance(c, Completion))}
    if v["same_text"]:
        pick = seen[: v["same_text"]]
        alone = [asyncio.run(t.complete([r]))[0] for r, _ in pick]
        out["same_text"] = sum(a.text == c.text for a, (_, c) in zip(alone, pick))
        out["same_text_of"] = len(pick)
    print(json.dumps(out), flush=True)
asyncio.run(t.aclose())
"""


def write_config(tmp: Path, questions: int, k: int, max_tokens: int, tag: str) -> Path:
    seeds = tmp / "seeds.jsonl"
    lines = (ROOT / "data" / "seeds" / "arithmetic.jsonl").read_text(encoding="utf-8").splitlines()
    seeds.write_text("\n".join(lines[:questions]) + "\n", encoding="utf-8")
    cfg = tmp / f"{tag}.yaml"
    cfg.write_text(
        f"name: bench-{tag}\nrecipe: rationales\nseeds: '{seeds}'\nstore: '{tmp / tag}.duckdb'\n"
        f"params: {{k: {k}, temperature: 0.7, max_tokens: {max_tokens}}}\n"
        "curation: {recipe_filters: false}\n",
        encoding="utf-8",
    )
    return cfg


class Worker:
    """One tree's teacher in a process of its own, loaded once; each run is a line in, a line out."""

    def __init__(self, tree: Path, batch_size: int, tag: str):
        env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        self.tag = tag
        self.proc = subprocess.Popen([sys.executable, "-c", RUN, str(batch_size)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env, cwd=tree)  # fmt: skip
        self._line("ready")

    def _line(self, what: str) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(
                f"{self.tag} stopped before {what} (exit {self.proc.wait()}); its stderr is above"
            )
        return line

    def run(self, values: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(values) + "\n")
        self.proc.stdin.flush()
        return dict(json.loads(self._line("answering")))

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", required=True, help="the earlier commit to compare with (a ref or a hash)")
    ap.add_argument("--questions", type=int, default=2)
    ap.add_argument("--k", type=int, default=4, help="samples a question, each its own seed")
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--same-text", type=int, default=4, help="requests generated again alone (0: none)")
    ap.add_argument("--write-readme", action="store_true", help="rewrite the READMEs' figures blocks")
    args = ap.parse_args()
    from factory.teachers.embedded import ensure_safetensors

    ensure_safetensors()  # converted once, before anything is timed
    ctx = context(["torch", "transformers"])
    figures: dict[str, Any] = {
        "recipe": "rationales", "questions": args.questions, "k": args.k, "max_tokens": args.max_tokens,
        "batch_size": args.batch_size, "reps": args.reps, "model": "SmolLM2-135M-Instruct (float32, CPU)",
    }  # fmt: skip
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    figures["after_commit"] = head.stdout.strip()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        tree, figures["before_commit"] = unpack(args.before, tmp)
        workers = {
            "before": Worker(tree, args.batch_size, "before"),
            "after": Worker(ROOT, args.batch_size, "after"),
        }
        runs: dict[str, list[dict[str, Any]]] = {s: [] for s in workers}
        try:
            for rep in range(args.reps):
                for side, worker in workers.items():
                    cfg = write_config(tmp, args.questions, args.k, args.max_tokens, f"{side}-{rep}")
                    last = side == "after" and rep == args.reps - 1
                    r = worker.run({"config": str(cfg), "same_text": args.same_text if last else 0})
                    runs[side].append(r)
                    print(f"{side} run {rep + 1}: {r['requests']} requests in {r['wall_s']:.1f} s, "
                          f"{r['generate_calls']} generate calls", flush=True)  # fmt: skip
        finally:
            for w in workers.values():
                w.close()
    out: dict[str, Any] = {}
    for side, rs in runs.items():
        walls = [r["wall_s"] for r in rs]
        out[side] = {
            "requests": rs[0]["requests"],
            "runs_s": [round(w, 2) for w in walls],
            "requests_per_s": round(rs[0]["requests"] / statistics.median(walls), 3),
            "generate_calls": statistics.median(r["generate_calls"] for r in rs),
            "completion_tokens": statistics.median(r["completion_tokens"] for r in rs),
        }
    figures["sides"] = out
    figures["speedup"] = round(out["after"]["requests_per_s"] / out["before"]["requests_per_s"], 2)
    last = runs["after"][-1]
    if "same_text" in last:
        figures["same_text"] = {"same": last["same_text"], "of": last["same_text_of"]}
    figures["target"] = TARGET
    figures["met"] = figures["speedup"] >= TARGET
    path = save("hf_teacher", ctx, figures)
    print(json.dumps(figures, indent=1))
    print(f"wrote {path}")
    if args.write_readme:
        from figures import show

        show("hf-teacher", True)
    return 0 if figures["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
