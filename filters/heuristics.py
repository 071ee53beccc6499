"""`heuristics`: cheap checks on each record: length bounds, the fields its recipe must fill, refusal and
boilerplate phrases, and a language check by stopword share. Lengths and the language check are thresholds
over what is measured; a new phrase list or field list measures again (a new version)."""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field

from filters.base import Context, Filter, FilterParams, Row, Scored

# The fields each recipe's training records must fill (its answer format).
RECIPE_FIELDS: dict[str, tuple[str, ...]] = {
    "rationales": ("rationale", "answer"),
    "program_rationales": ("program", "executed_answer"),
    "boundary": ("text", "teacher_label"),
    "commonsense": ("tail",),
    "relabel": ("label",),
    "prompt": ("completion",),
    "reasoning": ("answer_text",),
}

REFUSALS = (
    "as an ai", "i'm sorry", "i am sorry", "i cannot", "i can't help", "i can not", "as a language model",
    "i'm unable to", "i am unable to", "i apologize", "cannot assist", "not able to provide",
)  # fmt: skip

_EN_STOPWORDS_TEXT = (
    "the a an and or of to in on at for with is are was were be been it this that he she they we you i his her "
    "their our my your not no by from as but if so then than there what which who when how do does did has have "
    "had will would can could should may might"
)
_EN_STOPWORDS = frozenset(_EN_STOPWORDS_TEXT.split())
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)


class HeuristicsParams(FilterParams):
    min_chars: int = Field(1, ge=0, description="Drop records whose text is shorter than this.")
    max_chars: int = Field(20_000, ge=1, description="Drop records whose text is longer than this.")
    required: list[str] | None = Field(
        None, description="Payload fields that must be non-empty (default: the recipe's answer fields)."
    )
    refusals: list[str] = Field(
        default_factory=lambda: list(REFUSALS), description="Phrases (case-insensitive) that mark a refusal."
    )
    language: str | None = Field(
        None, description="'en' drops texts of 8+ words with too few English stopwords; null: no check."
    )
    min_stopword_share: float = Field(0.15, ge=0, le=1, description="Stopword share an 'en' text needs.")


def _stopword_share(text: str) -> tuple[float, int]:
    words = [w.lower() for w in _WORD.findall(text)]
    if not words:
        return 0.0, 0
    return sum(w in _EN_STOPWORDS for w in words) / len(words), len(words)


async def score(rows: list[Row], params: HeuristicsParams, ctx: Context) -> list[Scored]:
    out = []
    for r in rows:
        low = r.text.lower()
        share, words = _stopword_share(r.text)
        fields = params.required or RECIPE_FIELDS.get(ctx.recipe, ())
        detail: dict[str, Any] = {
            "chars": len(r.text),
            "missing": [f for f in fields if r.payload.get(f) in (None, "", [], {})],
            "refusal": next((p for p in params.refusals if p.lower() in low), None),
            "stopword_share": round(share, 4),
            "words": words,
        }
        out.append(Scored(r.id, float(len(r.text)), detail))
    return out


def decide(s: Scored, params: HeuristicsParams) -> tuple[bool, str | None]:
    d = s.detail or {}
    missing = d.get("missing") or []
    if missing:
        return False, f"missing field: {', '.join(missing)}"
    if d.get("chars", 0) < params.min_chars:
        return False, f"shorter than {params.min_chars} chars"
    if d.get("chars", 0) > params.max_chars:
        return False, f"longer than {params.max_chars} chars"
    if d.get("refusal"):
        return False, f"refusal phrase {d['refusal']!r}"
    if (
        params.language == "en"
        and d.get("words", 0) >= 8
        and d.get("stopword_share", 0) < params.min_stopword_share
    ):
        return False, "not English (too few stopwords)"
    return True, None


FILTER = Filter(
    slug="heuristics",
    summary="Length bounds, required fields, refusal phrases, a cheap language check.",
    params=HeuristicsParams,
    code_version="h1",
    score=score,
    decide=decide,
    thresholds=("min_chars", "max_chars", "language", "min_stopword_share"),
)
