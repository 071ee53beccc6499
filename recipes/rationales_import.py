"""`rationales` records from rows that already hold a teacher's rationales (`factory import`).

A row gives a question, the teacher's rationale and, optionally, its answer (else the answer is parsed from
the rationale as a completion's would be), a gold answer, the teacher's name and answer choices. Agreement
with gold, the label and the vote among the rows of one question are computed by the same functions as for
generated samples.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from recipes.base import Draft, Importer
from recipes.rationale_answers import (
    STAGE,
    answer_text,
    gold_fields,
    normalize_answer,
    parse_completion,
    record_score,
    vote_fields,
)

if TYPE_CHECKING:
    from recipes.rationales import RationalesParams

LETTERS = "abcdefghij"


def fields(params: RationalesParams) -> dict[str, str | None]:
    return {
        "id": "id",
        "input": params.input_field,
        "rationale": "rationale",
        "answer": None,  # parsed from the rationale unless a column is mapped
        "gold": params.gold_field,
        "teacher": "teacher",
        "choices": "choices",
    }


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def with_choices(question: str, choices: Any) -> str:
    """The question followed by its lettered answer choices, as the teacher saw them."""
    if not isinstance(choices, list | tuple) or not choices or len(choices) > len(LETTERS):
        return question
    listed = " ".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(choices))
    return f"{question}\nAnswer choices: {listed}"


def import_row(values: dict[str, Any], params: RationalesParams) -> Draft:
    question = values.get("input")
    raw = values.get("rationale")
    gold_raw = values.get("gold")
    gold = None if _blank(gold_raw) else normalize_answer(gold_raw)
    rationale, answer = ("", None) if _blank(raw) else parse_completion(str(raw))
    if "answer" in values:  # a column holds the teacher's answer: it wins over the parse
        answer = None if _blank(values["answer"]) else normalize_answer(values["answer"])
    text_in = "" if _blank(question) else with_choices(str(question), values.get("choices"))
    payload = {
        "input": text_in,
        "rationale": rationale,
        "answer": answer,
        "gold": gold,
        **gold_fields(answer, gold),
        **vote_fields(answer, Counter([answer] if answer is not None else []), 1),
        "completion": None if raw is None else str(raw),
        "finish_reason": None,
    }
    reject = None
    if not text_in:
        reject = "missing input"
    elif _blank(raw):
        reject = "no rationale"
    elif answer is None:
        reject = "no answer parsed"
    elif not rationale:
        reject = "empty rationale"
    return Draft(stage=STAGE, sample_index=0, payload=payload, text=answer_text(payload), reject=reject,
                 score=record_score(payload))  # fmt: skip


def vote(draft: Draft) -> str | None:
    answer: str | None = draft.payload["answer"]
    return answer


def settle(draft: Draft, votes: Counter[str], n: int) -> None:
    draft.payload.update(vote_fields(draft.payload["answer"], votes, n))
    draft.score = record_score(draft.payload)


IMPORTER = Importer(
    fields=fields,
    required=("input", "rationale"),
    row=import_row,
    vote=vote,
    settle=settle,
    filters=("agreement", "exact_dedup"),
    lists=("choices",),
)
