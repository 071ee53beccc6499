"""The card's "Answer quality" section: how far an export's targets can be trusted. The teacher's accuracy
against gold, what a shape that teaches an answer set aside, and a warning when exported rows carry answers
that are wrong or that nothing checked (a records export, an opted-out run, seeds without gold)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from factory.accuracy import gold_accuracy
from factory.export_shapes import soft_labels_note
from factory.store import Store

if TYPE_CHECKING:
    from factory.card import ExportFacts
    from factory.card_facts import Exported


def answer_quality(
    store: Store, run_id: str, f: ExportFacts, cfg: dict[str, Any], rows: Exported
) -> list[str]:
    """How far the targets can be trusted: the teacher's accuracy against gold, what the export set
    aside, and a warning when rows carry answers that are wrong or were never checked."""
    out: list[str] = []
    acc = gold_accuracy(store, run_id, f.stage)
    if acc is not None:
        out.append(acc.sentence())
    if f.set_aside:
        parts = ", ".join(
            f"{n:,} ({why})" for why, n in sorted(f.set_aside.items(), key=lambda x: (-x[1], x[0]))
        )
        out.append(f"Only samples whose answer is trusted (agrees with gold, or without gold with the majority "
                   f"vote) are targets here: {sum(f.set_aside.values()):,} samples were set aside: "
                   f"{parts}. `factory export --as preference` pairs them with trusted ones.")  # fmt: skip
    note = soft_labels_note(f.soft_labels)
    if note:
        out.append(
            note[0].upper() + note[1:] + ": per generated token of the teacher's answer (the text the ids "
            "decode to), k alternatives each, best first, natural-log probabilities."
        )
    if f.shape == "preference":
        out.append(f"Each pair's `chosen` answer is trusted and its `rejected` answer is not; {f.skipped:,} "
                   "samples were left out of every pair (a question needs both kinds).")  # fmt: skip
    warn = []
    if not (cfg.get("curation") or {}).get("recipe_filters", True):
        warn.append(
            "the run opted out of the recipe's default curation (`curation: {recipe_filters: false}`)"
        )
    if rows.distrusted and f.shape == "records":  # the other shapes set these aside
        parts = ", ".join(f"{n:,} {why}" for why, n in sorted(rows.distrusted.items()))
        warn.append(f"{sum(rows.distrusted.values()):,} exported rows carry an answer that is not trusted "
                    f"({parts}); filter on their gold / vote fields before training on them")  # fmt: skip
    elif f.shape == "records" and f.include_rejected:
        warn.append("rejected records are included")
    if rows.no_gold:
        warn.append(f"{rows.no_gold:,} exported rows have no gold answer to check their target against "
                    "(rationales: only the majority vote backs it; programs: it was not checked)")  # fmt: skip
    if warn:
        text = "; ".join(warn)
        out.append(f"> **Warning: not every target here is verified.** {text[:1].upper()}{text[1:]}.")
    if not out:
        return []
    return ["## Answer quality", "", *(x for line in out for x in (line, ""))]
