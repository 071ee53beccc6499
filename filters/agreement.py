"""`agreement`: keep what the teacher agreed on. Rationales that agree with gold (or, without gold, whose
answer won the vote by a given share); programs whose executed answer was verified; relabels whose voters
agreed by a given share; PromptMix utterances whose relabel agreed with the intended class (optional)."""

from __future__ import annotations

from pydantic import Field

from filters.base import Context, Filter, FilterParams, Row, Scored


class AgreementParams(FilterParams):
    require_gold: bool = Field(
        True, description="Where a gold answer exists, keep only samples that agree with it."
    )
    min_vote_share: float = Field(
        0.5, ge=0, le=1, description="Without gold: the share of samples that must give the record's answer."
    )
    min_confidence: float = Field(0.5, ge=0, le=1, description="relabel: the voters' agreement share needed.")
    require_relabel_agreement: bool = Field(
        False, description="boundary: keep only utterances the teacher relabelled as their intended class."
    )


async def score(rows: list[Row], params: AgreementParams, ctx: Context) -> list[Scored]:
    out = []
    for r in rows:
        p = r.payload
        detail: dict[str, object] = {}
        value: float | None = None
        if "agrees_with_gold" in p or "vote_share" in p:  # rationales
            detail = {"gold": p.get("gold") is not None, "agrees_with_gold": p.get("agrees_with_gold")}
            value = float(p.get("vote_share") or 0.0)
        elif "verified" in p:  # program_rationales; null: no gold to check against
            detail = {"verified": p.get("verified")}
            value = None if p.get("verified") is None else (1.0 if p.get("verified") else 0.0)
        elif "confidence" in p:  # relabel
            value = float(p.get("confidence") or 0.0)
        elif "relabel_agreed" in p:  # boundary
            detail = {"relabel_agreed": bool(p.get("relabel_agreed"))}
            value = 1.0 if p.get("relabel_agreed") else 0.0
        out.append(Scored(r.id, value, detail or None))
    return out


def decide(s: Scored, params: AgreementParams) -> tuple[bool, str | None]:
    d = s.detail or {}
    if "gold" in d:
        if d["gold"] and params.require_gold:
            return (True, None) if d.get("agrees_with_gold") else (False, "disagrees with gold")
        if not d["gold"] and (s.score or 0.0) < params.min_vote_share:
            return False, f"vote share below {params.min_vote_share:g}"
        return True, None
    if "verified" in d:
        return (False, "executed answer not verified") if d["verified"] is False else (True, None)
    if "relabel_agreed" in d:
        if params.require_relabel_agreement and not d["relabel_agreed"]:
            return False, "teacher relabelled it as another class"
        return True, None
    if s.score is not None and (s.score or 0.0) < params.min_confidence:
        return False, f"voter agreement below {params.min_confidence:g}"
    return True, None


FILTER = Filter(
    slug="agreement",
    summary="Keep what agrees: gold or majority vote, verified programs, relabel votes.",
    params=AgreementParams,
    code_version="a1",
    score=score,
    decide=decide,
    thresholds=tuple(AgreementParams.model_fields),
)
