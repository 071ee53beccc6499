"""`truncated`: drop records made from an answer the teacher cut off, by the finish_reason stored with that
answer (``length``: ``max_tokens`` ran out, often in the middle of a long reasoning trace). A record made
from several answers is dropped when any of them was cut. Records whose answers are no longer cached
(``factory cache forget``) are kept: nothing says they were cut."""

from __future__ import annotations

from pydantic import Field

from filters.base import Context, Filter, FilterParams, Row, Scored


class TruncatedParams(FilterParams):
    finish_reasons: list[str] = Field(
        default_factory=lambda: ["length"],
        min_length=1,
        description="Finish reasons that mean an answer was cut (OpenAI-compatible servers and vLLM say "
        "'length'; add others a server uses, e.g. 'max_tokens').",
    )


async def score(rows: list[Row], params: TruncatedParams, ctx: Context) -> list[Scored]:
    cut_by = set(params.finish_reasons)
    out = []
    for r in rows:
        cut = [a for a in r.answers if a.finish_reason in cut_by]
        detail = {"cut": [a.key for a in cut], "finish_reason": cut[0].finish_reason} if cut else None
        out.append(Scored(r.id, float(len(cut)), detail))
    return out


def decide(s: Scored, params: TruncatedParams) -> tuple[bool, str | None]:
    d = s.detail or {}
    cut = d.get("cut") or []
    if not cut:
        return True, None
    what = "an answer" if len(cut) == 1 else f"{len(cut)} answers"
    return False, f"{what} cut off (finish_reason {d.get('finish_reason')!r}): raise params.max_tokens"


FILTER = Filter(
    slug="truncated",
    summary="Drop records whose teacher answer was cut off by max_tokens (finish_reason 'length').",
    params=TruncatedParams,
    code_version="t1",
    score=score,
    decide=decide,
)
