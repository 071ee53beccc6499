"""`traces`: what goes wrong in long reasoning traces. A trace caught in a loop (the same words over and over,
or a tail that repeats one piece until the token cap), thinking that drifts into another script (an English
trace with Chinese in it), and length bounds in tokens.

Each record's text (for the `reasoning` recipe: the whole completion, thinking and answer) is measured once:

* ``repeated_share``: the share of its word 8-grams that occur more than once (natural reasoning stays
  well under 0.3; a loop pushes it towards 1);
* ``tail_period``: the shortest period (1–512 characters) that the last characters repeat at least
  ``min_tail_repeats`` times, or null;
* ``foreign_share``: the share of its letters outside the Latin and Greek scripts (Greek letters are
  mathematics), counted only when ``script`` is ``latin``;
* ``tokens``: the payload's ``completion_tokens`` (else words).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from pydantic import Field

from filters.base import Context, Filter, FilterParams, Row, Scored

NGRAM = 8
MAX_PERIOD = 512


class TracesParams(FilterParams):
    max_repeated_share: float = Field(
        0.5, ge=0, le=1, description="Drop traces whose share of repeated word 8-grams is above this."
    )
    min_tail_repeats: int = Field(
        8,
        ge=2,
        le=1000,
        description="A tail repeating one piece (up to 512 chars) this many times is a loop.",
    )
    script: str | None = Field(
        "latin", description="'latin': drop traces mixing in other scripts; null: no check."
    )
    max_foreign_share: float = Field(
        0.01, ge=0, le=1, description="Share of letters outside Latin and Greek a 'latin' trace may hold."
    )
    min_tokens: int = Field(0, ge=0, description="Drop traces shorter than this many output tokens.")
    max_tokens: int | None = Field(None, ge=1, description="Drop traces longer than this many output tokens.")


def repeated_share(text: str) -> float:
    words = text.split()
    grams = [tuple(words[i : i + NGRAM]) for i in range(len(words) - NGRAM + 1)]
    if not grams:
        return 0.0
    counts = Counter(grams)
    return sum(c for c in counts.values() if c > 1) / len(grams)


def tail_period(text: str, repeats: int) -> int | None:
    """The shortest period p (at most MAX_PERIOD) such that the text's last ``repeats`` * p characters are
    one piece of p characters repeated, or None."""
    tail = text.rstrip()
    for p in range(1, MAX_PERIOD + 1):
        span = p * repeats
        if span > len(tail):
            return None
        w = tail[-span:]
        if w[:-p] == w[p:] and w[:p].strip():
            return p
    return None


def foreign_share(text: str) -> float:
    letters = foreign = 0
    for ch in text:
        if ch.isalpha():
            letters += 1
            o = ord(ch)
            if o > 0x24F and not 0x370 <= o <= 0x3FF and not 0x1D400 <= o <= 0x1D7FF:  # Greek, math letters
                foreign += 1
    return foreign / letters if letters else 0.0


async def score(rows: list[Row], params: TracesParams, ctx: Context) -> list[Scored]:
    out = []
    for r in rows:
        tokens = r.payload.get("completion_tokens")
        detail: dict[str, Any] = {
            "repeated_share": round(repeated_share(r.text), 4),
            "tail_period": tail_period(r.text, params.min_tail_repeats),
            "foreign_share": round(foreign_share(r.text), 4) if params.script == "latin" else None,
            "tokens": int(tokens) if isinstance(tokens, int) and tokens > 0 else len(r.text.split()),
        }
        out.append(Scored(r.id, detail["repeated_share"], detail))
    return out


def decide(s: Scored, params: TracesParams) -> tuple[bool, str | None]:
    d = s.detail or {}
    if d.get("tail_period") is not None:
        return False, f"ends in a loop (a {d['tail_period']}-character piece repeated)"
    if (d.get("repeated_share") or 0.0) > params.max_repeated_share:
        return False, f"repeats itself ({d['repeated_share']:.0%} of its 8-grams repeated)"
    if params.script == "latin" and (d.get("foreign_share") or 0.0) > params.max_foreign_share:
        return False, f"mixes scripts ({d['foreign_share']:.1%} of its letters not Latin)"
    if d.get("tokens", 0) < params.min_tokens:
        return False, f"shorter than {params.min_tokens} tokens"
    if params.max_tokens is not None and d.get("tokens", 0) > params.max_tokens:
        return False, f"longer than {params.max_tokens} tokens"
    return True, None


FILTER = Filter(
    slug="traces",
    summary="Reasoning traces: loops (repeated 8-grams, a repeating tail), mixed scripts, token length bounds.",
    params=TracesParams,
    code_version="t1",
    score=score,
    decide=decide,
    thresholds=("max_repeated_share", "max_foreign_share", "min_tokens", "max_tokens"),
)
