"""Does curation make better students? Distillation quality on real teacher rationales.

    python benchmarks/quality.py --quick                       # CPU, SmolLM2-135M-Instruct as the student
    python benchmarks/quality.py --device cuda --student DIR   # full mode: both data sets, every variant

The data: rationales that PaLM 540B wrote for SVAMP and CommonsenseQA (``--data``, default
/work/shared/data/palm_rationales), a quarter of which argue for a wrong answer. Each file is imported twice
with `factory import` (curated: agreement with gold and exact dedup; all: no gold field, no filters) and
exported with `factory export`, 20 % of the questions held out by a hash of their ``id``
(benchmarks/quality_data.py). The students are trained with `factory train` (benchmarks/quality_train.py):

  (a) label-only    `[label] question` → answer, curated rows (the baseline of Distilling Step-by-Step)
  (b) all           step-by-step (label + rationale tasks) on every rationale, the teacher's answer as label
  (c) curated       step-by-step on the rationales whose answer agrees with gold
  (d) sft           question → rationale + "The answer is X." of the curated rows
  (e) dpo           preference pairs of the curated run, from (d)'s student (when the tree has the task)
  (f) kd            (d)'s rows and targets plus the KL to a local teacher's top-k at every answer token
                    (``--kd-teacher``, default embedded; benchmarks/quality_kd.py says why and how)

Equal budgets: every variant trains ``--steps`` steps of ``--batch-size`` inputs over the first
``--train-rows`` rows of its export (steps × batch / rows passes over them), with the same learning rate,
max length and seeds. Each student then answers the same validation questions, greedily; the score is exact
match of its final answer against gold (`factory eval`'s reading of an answer). The teacher's own accuracy on
those questions is the reference line. The 95 % interval is a bootstrap over questions that keeps every
seed's answer to one question together (benchmarks/quality_stats.py says why).

Quick mode (``--quick``) is sized by measurement for a shared 2-core CPU box and about half an hour. A
step-by-step step of 8 CommonsenseQA inputs runs two forward and backward passes of SmolLM2-135M (one a
task): 35-37 s a step in the committed quick run, with other work loading the box (load 4-7 on 2 cores);
the results file has the seconds each training and each scoring took. 300 SVAMP inputs for one epoch left label-only and step-by-step at 4-6 % exact
match, within noise of each other. So quick mode spends its time on the comparison the question needs, (b)
all against (c) curated, on CommonsenseQA, whose five choices give a student something to learn in few
steps: 10 steps of 8 inputs, three seeds, the first 100 held-out questions (ordered by record id). Scoring
an sft student generates whole rationales, which costs more than its training here, so (a), (d) and (e) are
left to the full mode (or ``--variants``). Full mode (the default without ``--quick``) runs both data sets,
all variants, every training row of the curated export for ``--epochs`` passes, and every held-out
question: what a GPU runs.

Writes benchmarks/results/quality.json (date, load, versions; see _results.py) and results/quality.svg;
--write-readme also rewrites the README blocks quoting it (benchmarks/figures.py).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import _results  # noqa: E402
import quality_data  # noqa: E402
import quality_kd  # noqa: E402
import quality_stats  # noqa: E402
from quality_train import VARIANTS, Budget, run_variant  # noqa: E402

DATA = Path("/work/shared/data/palm_rationales")
QUICK = {"datasets": "cqa", "variants": "b,c", "seeds": 3, "steps": 10, "batch_size": 8, "train_rows": 80,
         "eval_rows": 100}  # fmt: skip
FULL = {"datasets": "svamp,cqa", "variants": "a,b,c,d,e,f", "seeds": 3, "batch_size": 16, "epochs": 2.0}
COMPARE = (("c", "b", "curation"), ("b", "a", "rationales, uncurated"), ("c", "a", "rationales, curated"),
           ("d", "c", "sft against step-by-step"), ("e", "d", "dpo on top of sft"),
           ("f", "d", "kd against sft"))  # fmt: skip


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the CPU-sized run (see above)")
    ap.add_argument("--data", type=Path, default=DATA, help="folder of svamp_train.jsonl and cqa_train.jsonl")
    ap.add_argument(
        "--student", default="embedded", help="`embedded` (SmolLM2-135M-Instruct) or a model folder"
    )
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--datasets", help="comma-separated: svamp, cqa")
    ap.add_argument("--variants", help="comma-separated letters a-f")
    ap.add_argument("--kd-teacher", default="embedded",
                    help="(f): the teacher whose top-k the kd student learns: `embedded` or a model folder of the "
                    "student's tokenizer")  # fmt: skip
    ap.add_argument("--kd-k", type=int, default=20, help="(f): alternatives per answer token")
    ap.add_argument("--seeds", type=int, help="training seeds (0, 1, ...)")
    ap.add_argument("--steps", type=int, help="optimizer steps of every variant (default: from --epochs)")
    ap.add_argument("--epochs", type=float, help="full mode: passes over the curated train rows")
    ap.add_argument("--batch-size", type=int)
    ap.add_argument(
        "--train-rows", type=int, help="rows of each export trained on (default: the curated train split)"
    )
    ap.add_argument("--eval-rows", type=int, help="held-out questions scored (default: all)")
    ap.add_argument("--lr", type=float, default=1e-4, help="learning rate of every variant")
    ap.add_argument("--max-length", type=int, default=384)
    ap.add_argument("--new-tokens", type=int, default=160, help="tokens an sft / dpo student may generate")
    ap.add_argument("--eval-batch", type=int, default=16)
    ap.add_argument("--work", type=Path, default=HERE.parent / "out" / "quality",
                    help="runs, exports and students (a re-run reuses finished trainings)")  # fmt: skip
    ap.add_argument("--results", default="quality", help="results name: benchmarks/results/NAME.json")
    ap.add_argument("--write-readme", action="store_true", help="rewrite the README blocks after the run")
    a = ap.parse_args(argv)
    for k, v in (QUICK if a.quick else FULL).items():
        if getattr(a, k, None) is None:
            setattr(a, k, v)
    return a


def _device(choice: str) -> str:
    if choice == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import torch

    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit("quality: --device cuda, but torch sees no CUDA device; use --device cpu")
    return "cuda" if torch.cuda.is_available() else "cpu"


def budget_for(a: argparse.Namespace, curated_rows: int) -> Budget:
    rows = min(a.train_rows or curated_rows, curated_rows)
    steps = a.steps or max(1, math.ceil(rows * (a.epochs or 1.0) / a.batch_size))
    return Budget(steps, a.batch_size, rows, a.lr, a.max_length, a.new_tokens)


def one_dataset(
    name: str,
    a: argparse.Namespace,
    variants: list[str],
    out: dict[str, Any],
    checkpoint: Callable[[], object],
) -> None:
    """Build, train and score one data set into ``out``; ``checkpoint`` saves the results so far."""
    work = a.work / name
    src = a.data / quality_data.FILES[name]
    built = quality_data.build(name, src, work, eval_rows=a.eval_rows, preference="e" in variants)
    if "f" in variants and "curated_pc" in built.exports:
        kd_out = work / "exports" / "curated-kd"
        built.exports["curated_kd"] = quality_kd.add_top_k(
            built.exports["curated_pc"], kd_out, a.kd_teacher, a.kd_k, a.device,
            limit=budget_for(a, built.train_rows["curated_pc"]).train_rows,
        )  # fmt: skip
        built.train_rows["curated_kd"] = built.train_rows["curated_pc"]
    rows = built.eval_rows
    budget = budget_for(a, built.train_rows["curated_sbs"])
    log = work / "factory.log"
    teacher = quality_stats.accuracy([[r["teacher_right"] for r in rows]])
    out.update({
        "file": src.name, "funnel": built.funnel, "train_rows": built.train_rows,
        "validation_questions": built.validation_questions, "scored_questions": len(rows),
        "budget": {"steps": budget.steps, "batch_size": budget.batch_size, "train_rows": budget.train_rows,
                   "inputs_seen": budget.steps * budget.batch_size, "learning_rate": budget.learning_rate,
                   "max_length": budget.max_length},
        "teacher": {"name": quality_data.TEACHER, **teacher}, "variants": {}, "differences": {},
    })  # fmt: skip
    seeds = list(range(a.seeds))
    hits: dict[str, list[list[bool]]] = {}
    for key in variants:
        v = VARIANTS[key]
        entry: dict[str, Any] = {"name": v.name, "task": v.task, "trains_on": v.trains_on}
        export = built.exports.get(v.export)
        why = _skip(v, export, built.train_rows.get(v.export, 0), variants, built.failed.get(v.export))
        if why is not None:
            out["variants"][key] = {**entry, "status": "skipped", "reason": why}
            print(f"{name} ({key}) {v.name}: skipped: {why}", flush=True)
            continue
        assert export is not None
        t0 = time.perf_counter()
        res = run_variant(v, export, a.student, seeds, budget, rows, work / "students", log, a.eval_batch)
        hits[key] = res["hits"]
        stats = quality_stats.accuracy(res["hits"])
        out["variants"][key] = {**entry, "status": "done", **stats, "train_s": res["train_s"],
                                "score_s": res["score_s"], "wall_s": round(time.perf_counter() - t0, 1)}  # fmt: skip
        print(f"{name} ({key}) {v.name}: {stats['accuracy']:.3f} {stats['ci95']} per seed {stats['per_seed']}",
              flush=True)  # fmt: skip
        for x, y, what in COMPARE:
            if x in hits and y in hits:
                out["differences"][f"{x}-{y}"] = {"what": what, **quality_stats.difference(hits[x], hits[y])}
        checkpoint()


def _skip(v: Any, export: Path | None, rows: int, chosen: list[str], failed: str | None) -> str | None:
    if v.base is not None and v.base not in chosen:
        return f"it starts from ({v.base})'s student; run ({v.base}) too"
    from trainers.config import TASKS

    if v.task not in TASKS:
        return f"this tree's `factory train` has no {v.task} task"
    if export is None and failed is not None:
        return f"no {v.export.split('_', 1)[1]} export: {failed}"
    if export is None:
        return f"this tree's `factory export` offers no {v.export.split('_', 1)[1]} shape"
    if rows == 0:
        return (f"its export's train split is empty: {export.name} holds no rows (the preference shape pairs a "
                "trusted and a wrong rationale of one question; each question here has one rationale)")  # fmt: skip
    return None


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    variants = [x.strip() for x in a.variants.split(",") if x.strip()]
    bad = [x for x in variants if x not in VARIANTS]
    datasets = [x.strip() for x in a.datasets.split(",") if x.strip()]
    bad_ds = [x for x in datasets if x not in quality_data.FILES]
    if bad or bad_ds:
        print(
            f"quality: unknown --variants {bad} / --datasets {bad_ds}; use a-f and svamp, cqa",
            file=sys.stderr,
        )
        return 2
    missing = [
        str(a.data / quality_data.FILES[d])
        for d in datasets
        if not (a.data / quality_data.FILES[d]).is_file()
    ]
    if missing:
        print(f"quality: no data file at {', '.join(missing)}; pass --data DIR", file=sys.stderr)
        return 2
    ctx = _results.context(["torch", "transformers", "datasets", "duckdb"])
    device = a.device = _device(a.device)
    t0 = time.perf_counter()
    figures: dict[str, Any] = {
        "mode": "quick" if a.quick else "full", "student": a.student, "device": device,
        "seeds": a.seeds, "variants_run": variants,
        **({"kd_teacher": a.kd_teacher, "kd_k": a.kd_k} if "f" in variants else {}),
        "scoring": "exact match of the final answer against gold, greedy decoding, `factory eval`'s reading",
        "ci": "95 % percentile bootstrap over questions (2,000 resamples), every seed's answer to a question "
        "kept together",
        "datasets": {},
    }  # fmt: skip

    def checkpoint(complete: bool = False) -> Path:
        figures.update(complete=complete, wall_s=round(time.perf_counter() - t0, 1))
        return _results.save(a.results, ctx, figures)

    for name in datasets:
        one_dataset(name, a, variants, figures["datasets"].setdefault(name, {}), checkpoint)
    path = checkpoint(complete=True)
    print(f"wrote {path}")
    if a.results == "quality":
        import figures as readme_figures
        import figures_quality

        figures_quality.write_svg()
        readme_figures.show("quality-table", a.write_readme)
    return 0


if __name__ == "__main__":
    sys.exit(main())
