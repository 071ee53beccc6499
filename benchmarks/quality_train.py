"""The variants of the quality benchmark: what each trains on, training through `factory train`, and each
student's answer to every scored question (so that seeds can be paired question by question).

Every variant of a data set gets the same budget: the first ``train_rows`` rows of its own export's train
split, ``steps`` optimizer steps of ``batch_size`` inputs, the same learning rate, max length and seeds. (a)
and (c) read the same export, so they see the very same inputs; (b) reads the uncurated export, whose first
rows include the teacher's wrong answers; (d) reads the curated run's prompt/completion export, the same
records as (c). (e) starts from (d)'s student (its prompts and answers have the shape DPO compares) and
adds its own steps. (f) reads (d)'s export with a teacher's top-k added (quality_kd.py): the same rows.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quality_data import factory


@dataclass(frozen=True, slots=True)
class Variant:
    key: str
    name: str
    task: str
    export: str  # a key of Built.exports
    trains_on: str
    label_only: bool = False
    base: str | None = None  # a variant whose student this one starts from


VARIANTS = {
    "a": Variant(
        "a",
        "label-only",
        "step_by_step",
        "curated_sbs",
        "`[label] question` → the teacher's answer, curated rows only (it agrees with gold); no rationale",
        label_only=True,
    ),
    "b": Variant(
        "b",
        "step-by-step, all rationales",
        "step_by_step",
        "all_sbs",
        "the label and rationale tasks on every rationale that states an answer, the teacher's answer "
        "as label, wrong ones (about a quarter) included",
    ),
    "c": Variant(
        "c",
        "step-by-step, curated",
        "step_by_step",
        "curated_sbs",
        "the label and rationale tasks on the rationales whose answer agrees with gold (then exact dedup)",
    ),
    "d": Variant(
        "d",
        "sft rationale + answer",
        "sft",
        "curated_pc",
        "question → `rationale` + `The answer is X.` of the curated rationales, through the chat template",
    ),
    "e": Variant(
        "e",
        "dpo after sft",
        "dpo",
        "curated_pref",
        "preference pairs of the curated run (a trusted and a wrong rationale of one question), "
        "starting from (d)'s student",
        base="d",
    ),
    "f": Variant(
        "f",
        "kd on sft's rows",
        "kd",
        "curated_kd",
        "(d)'s rows and targets, the rationale's tokens, plus the KL to a local teacher's top-k at each token "
        "(benchmarks/quality_kd.py)",
    ),
}


@dataclass(frozen=True, slots=True)
class Budget:
    steps: int
    batch_size: int
    train_rows: int
    learning_rate: float
    max_length: int
    new_tokens_sft: int  # generated at scoring by sft / dpo students (a rationale, then its answer)


def train(v: Variant, export: Path, student: str, seed: int, budget: Budget, out: Path, log: Path) -> float:
    """Train (or find already trained) one student; its training seconds as `factory train` measured them."""
    cfg = {
        "export": str(export), "task": v.task, "student": student, "max_steps": budget.steps,
        "batch_size": budget.batch_size, "learning_rate": budget.learning_rate, "max_length": budget.max_length,
        "seed": seed, "max_train_examples": budget.train_rows, "eval_split": "validation",
        "max_eval_examples": 1,  # the variants are scored below, on the questions they share
    }  # fmt: skip
    if v.label_only:
        cfg["label_only"] = True
    if v.task in ("sft", "dpo", "kd"):
        cfg["max_new_tokens"] = budget.new_tokens_sft
    out.mkdir(parents=True, exist_ok=True)
    yaml_path = out.with_suffix(".yaml")
    yaml_path.write_text(json.dumps(cfg, indent=1) + "\n", encoding="utf-8")  # JSON is YAML
    factory("train", str(export), "--config", str(yaml_path), "--out", str(out), log=log)
    metrics = json.loads((out / "metrics.json").read_text("utf-8"))
    return float(metrics["train"].get("train_s") or 0.0)


def answers(model_dir: Path, task: str, rows: list[dict[str, Any]], batch_size: int) -> list[str | None]:
    """The student's final answer to each row's question, read as `factory eval` reads it."""
    from trainers import causal, student
    from trainers.evaluate import answer_of, read_meta
    from trainers.step_by_step import task_input

    meta = read_meta(model_dir)
    with student.quiet():
        tok = student.load_tokenizer(model_dir, causal=True)
        model = student.load_causal(model_dir).to(student.device())
    chat = bool(meta["chat"])
    if task == "step_by_step":
        users = [task_input(meta["label_prefix"], r["input"]) for r in rows]
    else:  # sft, dpo and kd students answer the bare question, as their prompt/completion rows ask it
        users = [str(r["input"]) for r in rows]
    prompts = [causal.prompt_ids(tok, u, chat) for u in users]
    outs = causal.generate(
        model, tok, prompts, max_new_tokens=int(meta["max_new_tokens"]), batch_size=batch_size
    )
    return [answer_of(o) for o in outs]


def hits(found: list[str | None], rows: list[dict[str, Any]]) -> list[bool]:
    from trainers.evaluate import agree, answer_of

    return [agree(a, answer_of(str(r["gold"])), 1e-4) for a, r in zip(found, rows, strict=True)]


def run_variant(v: Variant, export: Path, student: str, seeds: list[int], budget: Budget, rows: list[dict[str, Any]],
                work: Path, log: Path, eval_batch: int) -> dict[str, Any]:  # fmt: skip
    """Train and score one variant for every seed: per-seed hits on ``rows`` and the times."""
    per_seed, train_s, score_s = [], [], []
    for seed in seeds:
        out = work / f"{v.key}-seed{seed}"
        base = student if v.base is None else str(work / f"{v.base}-seed{seed}")
        train_s.append(train(v, export, base, seed, budget, out, log))
        t0 = time.perf_counter()
        per_seed.append(hits(answers(out, v.task, rows, eval_batch), rows))
        score_s.append(round(time.perf_counter() - t0, 1))
    return {"hits": per_seed, "train_s": [round(x, 1) for x in train_s], "score_s": score_s}
