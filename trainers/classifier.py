"""Sequence classification on a text/label export (boundary, relabel): encode, train, predict, score.

The label names come from the export's ClassLabel feature, so label ids mean the same in training, in the
saved model's config (id2label) and in evaluation. Scores: accuracy and macro-F1 (the mean of the per-class
F1 over the classes that occur in the references or the predictions).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def encode_rows(rows: Any, tok: Any, max_length: int) -> list[dict[str, Any]]:
    texts = [str(r["text"]) for r in rows]
    enc = tok(texts, truncation=True, max_length=max_length)
    return [
        {"input_ids": ids, "attention_mask": mask, "labels": int(r["label"])}
        for ids, mask, r in zip(enc["input_ids"], enc["attention_mask"], rows, strict=True)
    ]


def build_trainer(model: Any, tok: Any, examples: list[dict[str, Any]], args: Any) -> Any:
    from transformers import DataCollatorWithPadding, Trainer

    return Trainer(
        model=model, args=args, train_dataset=examples, data_collator=DataCollatorWithPadding(tok),
        processing_class=tok,
    )  # fmt: skip


def predict(
    model: Any, tok: Any, texts: list[str], *, max_length: int, batch_size: int,
    on_batch: Callable[[int], None] | None = None,
) -> list[int]:  # fmt: skip
    """The argmax class id of each text."""
    import torch

    model.eval()
    dev = next(model.parameters()).device
    out: list[int] = []
    for i in range(0, len(texts), batch_size):
        chunk = texts[i : i + batch_size]
        enc = tok(chunk, truncation=True, max_length=max_length, padding=True, return_tensors="pt").to(dev)
        with torch.no_grad():
            logits = model(**enc).logits
        out += [int(x) for x in logits.argmax(-1).tolist()]
        if on_batch is not None:
            on_batch(len(chunk))
    return out


def scores(refs: list[int], preds: list[int], names: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 and each class's precision / recall / F1 / support."""
    n = len(refs)
    correct = sum(r == p for r, p in zip(refs, preds, strict=True))
    per_class: dict[str, dict[str, float | int]] = {}
    f1s = []
    for c in sorted(set(refs) | set(preds)):
        tp = sum(r == c and p == c for r, p in zip(refs, preds, strict=True))
        fp = sum(r != c and p == c for r, p in zip(refs, preds, strict=True))
        fn = sum(r == c and p != c for r, p in zip(refs, preds, strict=True))
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        f1s.append(f1)
        name = names[c] if 0 <= c < len(names) else str(c)
        per_class[name] = {"precision": round(prec, 4), "recall": round(rec, 4), "f1": round(f1, 4),
                           "support": sum(r == c for r in refs)}  # fmt: skip
    return {
        "accuracy": round(correct / n, 4) if n else None,
        "macro_f1": round(sum(f1s) / len(f1s), 4) if f1s else None,
        "n": n,
        "per_class": per_class,
    }
