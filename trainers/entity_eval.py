"""Entity-level precision, recall and F1 (UniversalNER's strict measure): a prediction is a (passage, type,
mention) triple and counts only when the reference holds exactly that triple (types compared in lower case
with ``_``/``-`` as spaces, mentions with runs of spaces as one).

The reference is a labeled file (``--gold``: JSONL rows ``{id?, text, entities: {type: [mentions]}}``; a
type with ``[]`` is asked and must be answered with nothing) or the held-out rows of an ``entities``
conversation export (the teacher's answers). What is scored is a student (asked each type of each passage in
the conversation it was trained on, one question at a time) or a predictions file in the same form as the
labeled one (``--predictions``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from factory.errors import ConfigError
from recipes.entity_spans import (
    READ,
    conversation_prefix,
    norm_mention,
    norm_type,
    question,
    student_mentions,
)
from trainers.student import read_meta

FORMAT = "JSONL rows {id?, text, entities: {type: [mention, ...]}} (see data/seeds/entities_gold.jsonl)"
SAMPLES = 5


@dataclass(slots=True)
class Passage:
    id: str | None
    text: str
    types: dict[str, list[str]]  # normalized type -> mentions (empty: asked, none expected)


def _entities(value: Any, where: str) -> dict[str, list[str]]:
    """``{type: [mentions]}``, or ``[{type, mentions}]``, or spans ``[{type, text, ...}]``."""
    out: dict[str, list[str]] = {}
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list) and all(
        isinstance(x, dict) and isinstance(x.get("type"), str) for x in value
    ):
        items = []
        for x in value:
            got = x.get("mentions", [x["text"]] if isinstance(x.get("text"), str) else None)
            items.append((x["type"], got))
    else:
        raise ConfigError(
            f"{where}: field 'entities' must be an object {{type: [mentions]}}; each row is {FORMAT}"
        )
    for t, mentions in items:
        if not isinstance(mentions, list) or not all(isinstance(m, str) for m in mentions):
            raise ConfigError(
                f"{where}: entities[{t!r}] must be a list of strings (mentions); use [] for none"
            )
        seen = out.setdefault(norm_type(t), [])
        seen.extend(m for m in (norm_mention(x) for x in mentions) if m and m not in seen)
    return out


def load_passages(path: str | Path, flag: str) -> list[Passage]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"{flag} {p}: no such file; give {FORMAT}")
    out: list[Passage] = []
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ConfigError(f"{flag} {p}: not UTF-8 text; give {FORMAT}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{flag} {p} line {n}"
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"{where}: not JSON ({exc}); each row is {FORMAT}") from None
        if not isinstance(row, dict):
            raise ConfigError(f"{where}: not a JSON object; each row is {FORMAT}")
        pid = None if row.get("id") is None else str(row["id"])
        text = row.get("text")
        if pid is None and not isinstance(text, str):
            raise ConfigError(f"{where}: needs 'text' (or 'id'); each row is {FORMAT}")
        field = "entities" if "entities" in row else "spans" if "spans" in row else None
        if field is None:
            raise ConfigError(f"{where}: no field 'entities'; each row is {FORMAT}")
        out.append(Passage(pid, str(text or ""), _entities(row[field], where)))
    if not out:
        raise ConfigError(f"{flag} {p}: no rows; give {FORMAT}")
    return out


def passages_of_conversations(rows: Iterable[dict[str, Any]]) -> list[Passage]:
    """The reference an ``entities`` conversation export holds: per passage, each asked type's answer."""
    out: dict[str, Passage] = {}
    for r in rows:
        msgs = list(r["messages"])
        text = str(msgs[0]["content"]).removeprefix("Text: ")
        got = out.setdefault(text, Passage(None, text, {}))
        for q, a in zip(msgs[2::2], msgs[3::2], strict=False):
            etype = str(q["content"]).removeprefix("What describes ").removesuffix(" in the text?")
            got.types.setdefault(norm_type(etype), list(student_mentions(str(a["content"])) or []))
    return list(out.values())


def is_entity_conversation(row: dict[str, Any]) -> bool:
    msgs = row.get("messages") or []
    return (
        len(msgs) >= 4
        and str(msgs[0].get("content", "")).startswith("Text: ")
        and msgs[1].get("content") == READ
        and str(msgs[2].get("content", "")).startswith("What describes ")
    )


def score(gold: list[Passage], pred: dict[int, dict[str, list[str]]]) -> dict[str, Any]:
    """Micro precision / recall / F1 over (passage, type, mention); ``pred`` by index into ``gold``.
    Predicted types the reference does not ask count as false positives."""
    tp = fp = fn = 0
    per_type: dict[str, list[int]] = {}
    for i, g in enumerate(gold):
        got = pred.get(i, {})
        for t in set(g.types) | set(got):
            ref, hyp = set(g.types.get(t, [])), set(got.get(t, []))
            c = per_type.setdefault(t, [0, 0, 0])
            c[0] += len(ref & hyp)
            c[1] += len(hyp - ref)
            c[2] += len(ref - hyp)
            tp, fp, fn = tp + len(ref & hyp), fp + len(hyp - ref), fn + len(ref - hyp)
    out = _prf(tp, fp, fn)
    out["per_type_f1"] = {t: _prf(*c)["f1"] for t, c in sorted(per_type.items()) if c[0] + c[2]}
    out["passages"] = len(gold)
    return out


def _prf(tp: int, fp: int, fn: int) -> dict[str, Any]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(f, 4), "tp": tp, "fp": fp, "fn": fn}


def match_predictions(
    gold: list[Passage], preds: list[Passage]
) -> tuple[dict[int, dict[str, list[str]]], int]:
    """Predictions by gold index (by id where both rows have one, else by text), and how many matched none."""
    by_id = {g.id: i for i, g in enumerate(gold) if g.id is not None}
    by_text = {g.text: i for i, g in enumerate(gold)}
    out: dict[int, dict[str, list[str]]] = {}
    unmatched = 0
    for p in preds:
        i = by_id.get(p.id) if p.id is not None else None
        i = by_text.get(p.text) if i is None else i
        if i is None:
            unmatched += 1
        else:
            out[i] = p.types
    return out, unmatched


def student_predictions(model_dir: Path, meta: dict[str, Any], gold: list[Passage], *, batch_size: int,
                        device: str = "auto") -> tuple[dict[int, dict[str, list[str]]], dict[str, Any]]:  # fmt: skip
    """Ask a student every type of every passage (a fresh conversation per question, as it was trained)."""
    from trainers import causal, student

    tok = student.load_tokenizer(model_dir, causal=True)
    model = student.load_causal(model_dir).to(student.resolve_device(device))
    asks = [(i, t) for i, g in enumerate(gold) for t in g.types]
    prompts = []
    for i, t in asks:
        msgs = [*conversation_prefix(gold[i].text), {"role": "user", "content": question(t)}]
        text = str(tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False))
        prompts.append(list(tok(text, add_special_tokens=False)["input_ids"]))
    outs = causal.generate(model, tok, prompts, max_new_tokens=meta["max_new_tokens"], batch_size=batch_size)
    pred: dict[int, dict[str, list[str]]] = {}
    unreadable, samples = 0, list[dict[str, Any]]()
    for (i, t), o in zip(asks, outs, strict=True):
        got = student_mentions(o)
        unreadable += got is None
        pred.setdefault(i, {})[t] = got or []
        if len(samples) < SAMPLES:
            samples.append({"text": gold[i].text, "type": t, "reference": gold[i].types[t], "output": o[:200],
                            "mentions": got})  # fmt: skip
    return pred, {"questions": len(asks), "unreadable_answers": unreadable, "samples": samples}


def evaluate_entities(models: list[Path], *, gold_path: str | Path | None = None,
                      predictions: str | Path | None = None, reference: list[Passage] | None = None,
                      reference_name: str = "", batch_size: int = 16, device: str = "auto") -> dict[str, Any]:  # fmt: skip
    """Entity P/R/F1 of students and/or a predictions file against a labeled file or an export's rows."""
    if reference is None:
        if gold_path is None:
            raise ConfigError("--predictions needs --gold FILE (the labeled passages to score them against)")
        reference, reference_name = load_passages(gold_path, "--gold"), str(Path(gold_path).expanduser())
    report: dict[str, Any] = {
        "export": reference_name, "task": "entities", "split": "labeled passages", "rows": len(reference),
        "inputs": sum(len(g.types) for g in reference), "reference": f"entity labels of {reference_name}",
        "notes": ["inputs are (passage, type) questions; scores are micro P/R/F1 over exact (type, mention)"],
        "models": [], "samples": {},
    }  # fmt: skip
    if predictions is not None:
        preds, unmatched = match_predictions(reference, load_passages(predictions, "--predictions"))
        if unmatched:
            report["notes"].append(f"{unmatched} prediction rows match no labeled passage (by id or text)")
        name = f"predictions: {Path(predictions).name}"
        report["models"].append({"name": name, "kind": "predictions", "metrics": score(reference, preds)})
    for path in models:
        meta = read_meta(path)
        if meta["task"] not in ("sft", "kd"):
            raise ConfigError(
                f"MODEL {path}: trained for {meta['task']}; entity scores need a student trained with --task sft "
                "on an entities conversation export (factory export RUN --as conversation)"
            )
        pred, extra = student_predictions(Path(path), meta, reference, batch_size=batch_size, device=device)
        metrics = {**score(reference, pred), "unreadable_answers": extra["unreadable_answers"]}
        name = f"student: {Path(path).name}"
        report["models"].append({"name": name, "kind": "student", "path": str(Path(path).resolve()),
                                 "metrics": metrics})  # fmt: skip
        report["samples"][name] = extra["samples"]
    return report
