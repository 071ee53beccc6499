"""Training throughput of `factory train --task step_by_step` against its label-only baseline.

    python benchmarks/bench_train.py [--rows 96] [--batch 8] [--layers 4] [--reps 3] [--before main]

The rows are SVAMP questions with a teacher's rationale (``/work/shared/data/palm_rationales/svamp_train.jsonl``
or ``--data``), written as a step_by_step export (input, label, rationale, gold) into a temporary folder. The
student is the SmolLM2-135M architecture (its config from the embedded model's converted folder) with random
weights and ``--layers`` decoder layers (fewer than its 30 keep a run short on a CPU; width, vocabulary and
heads are SmolLM2's). Each run is one epoch over the same rows at the same batch size, in its own process;
the figure is training tokens per second: the prompt and answer tokens of every example fed (both tasks for
step_by_step), padding not counted, over the time spent in ``trainer.train()``. Runs alternate between the
two tasks (and, with ``--before``, the trainer of that commit, unpacked by ``git archive``); the figures are
medians of ``--reps`` runs. Target: step_by_step's tokens/s at least 0.8 × label-only's in this tree.
Writes ``benchmarks/results/train_throughput.json``; exits 1 when the target is missed.
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
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from _results import context, save  # noqa: E402
from _trees import unpack  # noqa: E402

DATA = Path("/work/shared/data/palm_rationales/svamp_train.jsonl")
TARGET = 0.8
RUN = """
import json, sys
from trainers.config import make_config
from trainers.run import train
values = json.loads(sys.argv[1])
res = train(make_config(values))
t = res.metrics["train"]
print(json.dumps({"train_s": t["train_s"], "steps": res.global_step, "final_loss": t["final_loss"]}))
"""


def write_export(src: Path, rows: int, into: Path) -> Path:
    out = into / "svamp-sbs"
    out.mkdir()
    found = [json.loads(x) for x in src.read_text(encoding="utf-8").splitlines() if x.strip()]
    lines = [r for r in found if r.get("teacher_answer") is not None and r.get("teacher_rationale")][
        : rows + 8
    ]
    recs = [{"input": r["question"], "label": str(r["teacher_answer"]), "rationale": r["teacher_rationale"],
             "gold": str(r["answer"])} for r in lines]  # fmt: skip
    for name, part in (("train", recs[:rows]), ("test", recs[rows:])):
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
    return out


def write_student(layers: int, into: Path) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from factory.teachers.embedded import ensure_safetensors

    real = ensure_safetensors()
    cfg = AutoConfig.from_pretrained(str(real))
    cfg.num_hidden_layers = layers
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    out = into / f"smollm2-arch-{layers}l"
    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(real)).save_pretrained(str(out))
    return out


def fed_tokens(export: Path, student: Path, label_only: bool, max_length: int) -> int:
    """Prompt + answer tokens of one epoch's examples (what is fed, without padding)."""
    from trainers import data, step_by_step
    from trainers import student as st
    from trainers.causal import uses_chat
    from trainers.config import make_config

    cfg = make_config({"export": export, "task": "step_by_step", "student": str(student),
                       "label_only": label_only, "max_length": max_length})  # fmt: skip
    tok = st.load_tokenizer(student, causal=True)
    split = data.pick_splits(data.load_export(export), None, 0.1)
    examples = step_by_step.encode_rows(split.train, tok, uses_chat(tok, "step_by_step"), cfg)
    return sum(len(t["input_ids"]) for ex in examples for t in ex.values())


def one(tree: Path, values: dict[str, object], tag: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", RUN, json.dumps(values, default=str)], capture_output=True,
                         text=True, env=env, cwd=tree, timeout=3600)  # fmt: skip
    if out.returncode:
        raise SystemExit(f"{tag} failed:\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA, help="SVAMP rows with teacher rationales (jsonl)")
    ap.add_argument("--rows", type=int, default=96, help="training inputs (one epoch)")
    ap.add_argument("--batch", type=int, default=8, help="inputs per step, both tasks")
    ap.add_argument(
        "--layers", type=int, default=4, help="decoder layers of the SmolLM2-architecture student"
    )
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--before", help="also run the trainer of this commit (a ref or a hash), alternating")
    ap.add_argument("--bf16", action="store_true", help="also run this tree with precision bf16 (a CPU's)")
    args = ap.parse_args()
    if not args.data.is_file():
        raise SystemExit(f"--data {args.data}: no such file")
    ctx = context(["torch", "transformers"])
    figures: dict[str, Any] = {"rows": args.rows, "batch": args.batch, "layers": args.layers,
                               "max_length": args.max_length, "reps": args.reps, "data": str(args.data)}  # fmt: skip
    tasks = {"label_only": True, "step_by_step": False}
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        export = write_export(args.data, args.rows, tmp)
        student = write_student(args.layers, tmp)
        sides: dict[str, tuple[Path, dict[str, Any]]] = {"after": (ROOT, {})}
        if args.bf16:
            sides["after_bf16"] = (ROOT, {"precision": "bf16"})
        if args.before:
            tree, figures["before_commit"] = unpack(args.before, tmp)
            sides["before"] = (tree, {})
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        figures["after_commit"] = head.stdout.strip()
        tokens = {t: fed_tokens(export, student, lo, args.max_length) for t, lo in tasks.items()}
        runs: dict[str, list[dict[str, float]]] = {f"{side}/{t}": [] for side in sides for t in tasks}
        for rep in range(args.reps):
            for side, (tree, extra) in sides.items():
                for task, label_only in tasks.items():
                    values = {"export": str(export), "task": "step_by_step", "student": str(student),
                              "label_only": label_only, "batch_size": args.batch, "epochs": 1,
                              "max_length": args.max_length, "max_eval_examples": 1, "max_new_tokens": 1,
                              "out": str(tmp / f"out-{side}-{task}-{rep}"), **extra}  # fmt: skip
                    got = one(tree, values, f"{side} {task} run {rep + 1}")
                    runs[f"{side}/{task}"].append(got)
                    print(f"{side:<10} {task:<12} run {rep + 1}: {got['train_s']:7.1f} s "
                          f"{tokens[task] / got['train_s']:8.1f} tokens/s  final loss {got['final_loss']:.4f}",
                          flush=True)  # fmt: skip
    figures["tokens_fed"] = tokens
    table: dict[str, dict[str, Any]] = {}
    for side in sides:
        row: dict[str, Any] = {}
        for task in tasks:
            got = runs[f"{side}/{task}"]
            med = statistics.median(g["train_s"] for g in got)
            row[task] = {"train_s": round(med, 2), "tokens_per_s": round(tokens[task] / med, 1),
                         "runs_s": [g["train_s"] for g in got],
                         "final_loss": round(statistics.median(g["final_loss"] for g in got), 4)}  # fmt: skip
        row["ratio"] = round(row["step_by_step"]["tokens_per_s"] / row["label_only"]["tokens_per_s"], 3)
        table[side] = row
    figures["sides"] = table
    print(f"\n{'tree':<10} {'label-only tok/s':>17} {'step_by_step tok/s':>19} {'ratio':>6}")
    for side, row in table.items():
        lo, sbs = row["label_only"]["tokens_per_s"], row["step_by_step"]["tokens_per_s"]
        print(f"{side:<10} {lo:>17} {sbs:>19} {row['ratio']:>6}")
    for a, b in (("after", "before"), ("after_bf16", "after")):
        if a in table and b in table:
            for task in tasks:
                gain = table[a][task]["tokens_per_s"] / table[b][task]["tokens_per_s"]
                figures[f"{a}_vs_{b}_{task}"] = round(gain, 2)
                print(f"{task}: {a} at {gain:.2f}x the tokens/s of {b}")
    ratio = float(table["after"]["ratio"])
    figures.update(target=TARGET, met=ratio >= TARGET)
    path = save("train_throughput", ctx, figures)
    print(f"\nwrote {path}; target step_by_step >= {TARGET} x label-only tokens/s: "
          f"{'met' if ratio >= TARGET else 'MISSED'} ({ratio})")  # fmt: skip
    return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    raise SystemExit(main())
