"""Score students, and the teacher's own answers, on the same held-out rows of an export.

- rationale tasks (step_by_step, sft on rationales): the final answer, exactly or within a numeric tolerance,
  against gold (or, when the export has no gold, against the teacher's majority answer), per question;
- classifier: accuracy and macro-F1 against the exported labels;
- triples: greedy tails against the reference tails of each (head, relation), teacher-forced loss, samples.

The student's folder holds ``factory_train.json`` (task, prefixes, label names, generation length, export),
so a model and an export are all this needs. Each input's result (its seed id and record id, the answer, right
or wrong, the loss on the reference, agreement with the teacher) is in ``report["per_input"]`` by model folder;
``write_per_input`` writes them as JSONL, the file a ``focus:`` round reads.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any

from factory.errors import ConfigError
from trainers import causal, classifier, data, entity_eval, kd
from trainers.harness import OnProgress, Progress
from trainers.step_by_step import task_input
from trainers.student import read_meta

log = logging.getLogger(__name__)
SAMPLES = 5
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"  # the tags the reasoning recipe exports by default
_FRACTION = re.compile(r"-?\d+\s*/\s*\d+")
_MATHY = re.compile(r"[\d\\]")


def answer_of(text: str | None) -> str | None:
    """The final answer in a generated or exported text (numbers normalized, like the rationales recipe).

    A reasoning trace is scored on its answer only: the text after the last ``</think>`` (a ``<think>`` never
    closed: no answer), and there the last ``\\boxed{}`` when there is one."""
    from recipes.math_answers import final_answer
    from recipes.rationale_answers import normalize_answer, parse_completion

    if text is None or not str(text).strip():
        return None
    text = str(text)
    if THINK_CLOSE in text:
        text = text.rsplit(THINK_CLOSE, 1)[1]
    elif THINK_OPEN in text:
        return None
    if "\\boxed{" in text:
        return final_answer(text)
    if not text.strip():
        return None
    found = parse_completion(text)[1]
    return found if found is not None else normalize_answer(text.strip().split("\n", 1)[0])


def gold_of(gold: str) -> str | None:
    """The reference a gold answer gives: as written when it is mathematics (``\\frac{3}{8}``, ``3/8``,
    ``x^2``), else read like an answer."""
    g = gold.strip()
    if "\\" in g or "{" in g or "^" in g or _FRACTION.fullmatch(g):
        return g
    return answer_of(g)


def agree(a: str | None, b: str | None, rel_tol: float) -> bool:
    """Equal as numbers or text, else (when either holds a digit or LaTeX) as mathematics."""
    from recipes.math_answers import equivalent
    from recipes.rationale_answers import answers_agree

    if answers_agree(a, b, rel_tol=rel_tol):
        return True
    if a is None or b is None or not _MATHY.search(a + b):
        return False
    try:
        return equivalent(a, b)
    except ConfigError:  # Math-Verify not installed: numbers and text only
        return False


def _questions(rows: Any, shape: str) -> dict[str, dict[str, Any]]:
    """Per input, in order: its gold (if any), the teacher's answers, and how to prompt the student."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        q = out.setdefault(data.input_text(r, shape), {"gold": None, "teacher": [], "row": r})
        if r.get("gold") is not None and q["gold"] is None:
            q["gold"] = str(r["gold"])
        if shape == "step_by_step":
            q["teacher"].append(answer_of(r["label"]))
        elif shape == "prompt_completion":
            q["teacher"].append(answer_of(r["completion"]))
        elif shape == "preference":  # the teacher's answer is the chosen one (a rejected one is wrong)
            q["teacher"].append(answer_of(data.turn_text(r["chosen"], answer=True)))
        else:
            q["teacher"].append(answer_of(r["messages"][-1]["content"]))
    return out


def _student_prompt(tok: Any, meta: dict[str, Any], row: dict[str, Any]) -> list[int]:
    chat, shape = bool(meta["chat"]), meta["shape"]
    if meta["task"] == "step_by_step":
        return causal.prompt_ids(tok, task_input(meta["label_prefix"], row["input"]), chat)
    if shape == "messages":
        msgs = list(row["messages"])
        last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
        text = str(tok.apply_chat_template(msgs[:last], add_generation_prompt=True, tokenize=False))
        return list(tok(text, add_special_tokens=False)["input_ids"])
    if shape == "triples":
        return causal.prompt_ids(tok, f"{row['head']} {row['relation']} [GEN]", chat)
    if shape == "preference":
        return causal.prompt_ids(tok, data.turn_text(row["prompt"], answer=False), chat)
    return causal.prompt_ids(tok, str(row["prompt"]), chat)


def _progress(on_progress: OnProgress | None, total: int) -> Any:
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        if on_progress is not None:
            on_progress(Progress("eval", done[0], total))

    return tick


def reference_table(rows: Any, shape: str, rel_tol: float, max_examples: int | None = None
                    ) -> tuple[dict[str, dict[str, Any]], str, dict[str, Any]]:  # fmt: skip
    """The questions scored (at most ``max_examples``), the reference each is scored against (gold, else the
    teacher's majority answer), and the teacher's own scores on those questions (only against gold)."""
    questions = dict(list(_questions(rows, shape).items())[: max_examples or None])
    if any(v["gold"] is not None for v in questions.values()):
        reference = "gold"
        for v in questions.values():
            v["ref"] = gold_of(v["gold"])
    else:
        reference = "teacher majority answer"
        for v in questions.values():
            v["ref"] = _majority(v["teacher"])
    teacher: dict[str, Any] = {}
    scored = [v for v in questions.values() if v["ref"] is not None]
    if reference == "gold" and scored:
        hits = [agree(_majority(v["teacher"]), v["ref"], rel_tol) for v in scored]
        each = [agree(a, v["ref"], rel_tol) for v in scored for a in v["teacher"]]
        teacher = {"exact_match": round(sum(hits) / len(hits), 4), "n": len(hits),
                   "exact_match_per_sample": round(sum(each) / len(each), 4), "samples": len(each)}  # fmt: skip
    return questions, reference, teacher


def _majority(answers: list[str | None]) -> str | None:
    votes = Counter(a for a in answers if a is not None)
    return votes.most_common(1)[0][0] if votes else None


def eval_model(model_dir: Path, meta: dict[str, Any], split: Any, *, max_examples: int | None, batch_size: int,
               rel_tol: float, questions: dict[str, dict[str, Any]] | None = None,
               on_progress: OnProgress | None = None, device: str = "auto") -> dict[str, Any]:  # fmt: skip
    """One student's metrics and samples on ``split``."""
    from trainers import student

    task, shape = meta["task"], meta["shape"]
    dev = student.resolve_device(device)
    if task == "classifier":
        return _eval_classifier(model_dir, meta, data.take(split, max_examples), batch_size, on_progress, dev)
    tok = student.load_tokenizer(model_dir, causal=True)
    model = student.load_causal(model_dir).to(dev)
    if task == "triples":
        questions = _tails(split, shape)
    elif questions is None:
        questions = reference_table(split, shape, rel_tol, max_examples)[0]
    keys = list(questions)[: max_examples or None]
    prompts = [_student_prompt(tok, meta, questions[k]["row"]) for k in keys]
    outs = causal.generate(model, tok, prompts, max_new_tokens=meta["max_new_tokens"], batch_size=batch_size,
                           on_batch=_progress(on_progress, len(prompts)))  # fmt: skip
    loss = causal.eval_loss(model, _loss_examples(_rows_of(split, shape, set(keys)), meta, tok), tok.pad_token_id,
                            batch_size)  # fmt: skip
    metrics: dict[str, Any] = {"eval_loss": None if loss is None else round(loss, 4)}
    if task == "kd" and all(
        c in split.column_names for c in kd.KD_COLUMNS
    ):  # the held-out rows' teacher top-k
        examples = kd.encode_rows(_rows_of(split, shape, set(keys)), shape, tok, bool(meta["chat"]),
                                  meta["max_length"], strict=False)  # fmt: skip
        kl = kd.eval_kl(model, examples, tok.pad_token_id, batch_size)
        metrics["kd_kl"] = None if kl is None else round(kl, 4)
    if task == "triples":
        norm = [_tail(o) for o in outs]
        hits = [n in questions[k]["tails"] for n, k in zip(norm, keys, strict=True)]
        metrics.update(exact_match=round(sum(hits) / len(hits), 4) if hits else None, n=len(hits))
        samples: list[dict[str, Any]] = [
            {"prompt": k, "generated": o, "references": sorted(questions[k]["tails"])[:5]}
            for k, o in zip(keys[: 3 * SAMPLES], outs, strict=False)
        ]
        return {"metrics": metrics, "samples": samples}
    answers = {k: answer_of(o) for k, o in zip(keys, outs, strict=True)}
    scored = [k for k in keys if questions[k].get("ref") is not None]
    hits = [agree(answers[k], questions[k]["ref"], rel_tol) for k in scored]
    metrics.update(exact_match=round(sum(hits) / len(hits), 4) if hits else None, n=len(hits))
    samples = [{"input": k, "reference": questions[k].get("ref"), "output": o[:400], "answer": answers[k],
                "teacher": questions[k]["teacher"][:4]} for k, o in zip(keys[:SAMPLES], outs, strict=False)]  # fmt: skip
    losses = _input_losses(model, tok, meta, split, shape, keys, batch_size)
    per_input = []
    for k, o in zip(keys, outs, strict=True):
        q, ref = questions[k], questions[k].get("ref")
        said = _majority(q["teacher"])
        per_input.append({
            **_lineage_of(q["row"]), "input": k, "reference": ref, "output": o, "answer": answers[k],
            "correct": None if ref is None else agree(answers[k], ref, rel_tol), "loss": losses.get(k),
            "teacher_answer": said, "agrees_with_teacher": None if said is None else agree(answers[k], said, rel_tol),
        })  # fmt: skip
    return {"metrics": metrics, "samples": samples, "per_input": per_input}


def _lineage_of(row: dict[str, Any]) -> dict[str, Any]:
    """What maps an evaluated input back to its seed (absent from a --slim export) and its focus round."""
    return {"seed_id": row.get("seed_id"), "record_id": row.get("record_id"),
            "round": int(row.get("focus_round") or 1)}  # fmt: skip


def _input_losses(model: Any, tok: Any, meta: dict[str, Any], split: Any, shape: str, keys: list[str],
                  batch_size: int) -> dict[str, float]:  # fmt: skip
    """The student's teacher-forced loss on each input's reference answers (the exported ones)."""
    found: dict[str, list[int]] = {}
    for i, r in enumerate(split):
        found.setdefault(data.input_text(r, shape), []).append(i)
    out: dict[str, float] = {}
    for k in keys:
        loss = causal.eval_loss(model, _loss_examples(split.select(found.get(k, [])), meta, tok),
                                tok.pad_token_id, batch_size)  # fmt: skip
        if loss is not None:
            out[k] = round(loss, 4)
    return out


def _eval_classifier(model_dir: Path, meta: dict[str, Any], rows: Any, batch_size: int,
                     on_progress: OnProgress | None, dev: str) -> dict[str, Any]:  # fmt: skip
    from trainers import student

    tok = student.load_tokenizer(model_dir, causal=False)
    model = student.load_classifier(model_dir, meta["label_names"], tok.pad_token_id).to(dev)
    preds = classifier.predict(model, tok, [str(t) for t in rows["text"]], max_length=meta["max_length"],
                               batch_size=batch_size, on_batch=_progress(on_progress, len(rows)))  # fmt: skip
    names = meta["label_names"]
    samples = [{"text": r["text"], "label": names[r["label"]], "predicted": names[p]}
               for r, p in zip(rows.select(range(min(SAMPLES, len(rows)))), preds, strict=False)]  # fmt: skip
    per_input = [{**_lineage_of(r), "input": r["text"], "reference": names[r["label"]], "answer": names[p],
                  "correct": r["label"] == p, "loss": None, "teacher_answer": names[r["label"]],
                  "agrees_with_teacher": r["label"] == p} for r, p in zip(rows, preds, strict=True)]  # fmt: skip
    return {"metrics": classifier.scores(list(rows["label"]), preds, names), "samples": samples,
            "per_input": per_input}  # fmt: skip


def _tail(text: str) -> str:
    return " ".join(str(text).strip().split("\n", 1)[0].lower().rstrip(".").split())


def _tails(rows: Any, shape: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for (user, tail), r in zip(causal.pairs(rows, shape), rows, strict=True):
        out.setdefault(user, {"tails": set(), "row": r})["tails"].add(_tail(tail))
    return out


def _rows_of(split: Any, shape: str, keys: set[str]) -> Any:
    """The rows of ``split`` whose input is one of ``keys`` (the inputs scored)."""
    if shape == "triples":  # keyed like the prompts: "head relation [GEN]"
        found = [u for u, _ in causal.pairs(split, shape)]
    else:
        found = [data.input_text(r, shape) for r in split]
    return split.select([i for i, k in enumerate(found) if k in keys])


def _loss_examples(split: Any, meta: dict[str, Any], tok: Any) -> list[dict[str, list[int]]]:
    chat, n = bool(meta["chat"]), meta["max_length"]
    if meta["task"] == "step_by_step":  # the label task, the one run at inference
        found = [causal.encode_pair(tok, task_input(meta["label_prefix"], r["input"]), str(r["label"]), chat, n)
                 for r in split]  # fmt: skip
        return [x for x in found if x is not None]
    if meta["task"] == "dpo":  # the chosen answers: the ones the policy should make likely
        found = [causal.encode_pair(tok, data.turn_text(r["prompt"], answer=False),
                                    data.turn_text(r["chosen"], answer=True), chat, n) for r in split]  # fmt: skip
        return [x for x in found if x is not None]
    return causal.encode_rows(split, meta["shape"], tok, chat, n)


def evaluate(model_dirs: list[Path], export_dir: Path | None = None, *, split_name: str | None = None,
             max_examples: int | None = None, batch_size: int = 16, rel_tol: float = 1e-4,
             on_progress: OnProgress | None = None, device: str = "auto") -> dict[str, Any]:  # fmt: skip
    """Students side by side (and the teacher when the export holds its answers) on one held-out split,
    on ``device`` (auto: the GPU when there is one)."""
    metas = [read_meta(m) for m in model_dirs]
    tasks = {m["task"] for m in metas}
    if len(tasks) > 1:
        raise ConfigError(f"MODEL: the models were trained for different tasks ({', '.join(sorted(tasks))})")
    meta0 = metas[0]
    export = data.load_export(export_dir or meta0["export"])
    data.check_task(export, meta0["task"])
    split = data.pick_splits(export, split_name or meta0.get("eval_split"), float(meta0.get("holdout", 0.1)))
    if export.shape == "messages" and len(split.eval) and entity_eval.is_entity_conversation(split.eval[0]):
        return entity_eval.evaluate_entities(  # an entities export: entity P/R/F1 against the teacher's labels
            model_dirs, reference=entity_eval.passages_of_conversations(data.take(split.eval, max_examples)),
            reference_name=f"{export.path} ({split.name})", batch_size=batch_size, device=device)  # fmt: skip
    report: dict[str, Any] = {
        "export": str(export.path), "task": meta0["task"], "split": split.name, "rows": len(split.eval),
        "notes": [split.note] if split.note else [], "models": [], "samples": {},
    }  # fmt: skip
    questions: dict[str, dict[str, Any]] = {}
    teacher: dict[str, Any] = {}
    if meta0["task"] in ("step_by_step", "sft", "dpo", "kd"):
        questions, reference, teacher = reference_table(split.eval, export.shape, rel_tol, max_examples)
        report.update(reference=reference, inputs=len(questions))
        if not any(v.get("ref") for v in questions.values()):
            report["notes"].append(
                "no final answer could be read from the exported answers; exact match skipped"
            )
    elif meta0["task"] == "classifier":
        report.update(reference="exported labels (the teacher's)", inputs=len(split.eval))
        report["notes"].append("the labels are the teacher's own, so the teacher has no separate score here")
    else:
        report.update(
            reference="exported tails (the teacher's)", inputs=len(_tails(split.eval, export.shape))
        )
    for path, meta in zip(model_dirs, metas, strict=True):
        res = eval_model(Path(path), {**meta, "shape": export.shape}, split.eval, max_examples=max_examples,
                         batch_size=batch_size, rel_tol=rel_tol, questions=questions or None,
                         on_progress=on_progress, device=device)  # fmt: skip
        name = f"student{' (label-only)' if meta.get('label_only') else ''}: {Path(path).name}"
        report["models"].append({"name": name, "kind": "student", "path": str(Path(path).resolve()),
                                 "metrics": res["metrics"]})  # fmt: skip
        report["samples"][name] = res["samples"]
        if "per_input" in res:
            report.setdefault("per_input", {})[str(Path(path).resolve())] = [
                {"model": name, **row} for row in res["per_input"]
            ]
    if teacher:
        report["models"].append({"name": f"teacher: {_teacher_name(split.eval)}", "kind": "teacher",
                                 "metrics": teacher})  # fmt: skip
    if max_examples is not None:
        report["notes"].append(f"scored on the first {max_examples} inputs of the split (--max-examples)")
    return report


PER_INPUT = "eval_inputs.jsonl"  # in each model folder, unless --per-input names a file


def write_per_input(report: dict[str, Any], path: Path | None = None) -> list[Path]:
    """Write the per-input rows of ``report`` (and drop them from it): to ``path`` (every model's rows, a
    ``model`` field tells them apart), or to each model folder's ``eval_inputs.jsonl``. Returns the files."""
    by_model: dict[str, list[dict[str, Any]]] = report.pop("per_input", {}) or {}
    if path is not None:
        groups = {path: [r for rows in by_model.values() for r in rows]} if by_model else {}
    else:
        groups = {Path(m) / PER_INPUT: rows for m, rows in by_model.items()}
    for p, rows in groups.items():
        if p.is_dir():
            raise ConfigError(f"--per-input {p} is a folder; give a file path (e.g. {p / PER_INPUT})")
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text("".join(json.dumps(r, default=str) + "\n" for r in rows), "utf-8")
        tmp.replace(p)
    report["per_input_files"] = [str(p) for p in groups]
    return list(groups)


def _teacher_name(rows: Any) -> str:
    if "teacher" in rows.column_names:
        names = Counter(str(t) for t in rows["teacher"])
        return ", ".join(n for n, _ in names.most_common(2))
    return "the export's answers"
