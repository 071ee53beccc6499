"""`critic`: an LLM judge through any teacher role. A rubric template per recipe (filters/rubrics/) asks for
`{"score": 1-10, "reason": ...}`; the record is kept when the score reaches `min_score`.

Scores like "7.5", "7/10" or "8 out of 10" parse. Malformed output is re-asked, up to `max_attempts`, in the
same conversation; after that the record carries a recorded failure, not a crash. Every judgement goes
through the run's request cache, so re-running a pass or changing `min_score` pays for nothing.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

from pydantic import Field

from factory.errors import ConfigError, TeacherRejected
from factory.types import Request, Sampling
from filters.base import Context, Filter, FilterParams, Row, Scored
from recipes.base import Template

RUBRICS = Path(__file__).parent / "rubrics"
RE_ASK = 'Reply with JSON only, for example {"score": 7, "reason": "the steps are right but terse"}.'
_SCORE = re.compile(r"(?:score\W{0,3})?(\d+(?:\.\d+)?)\s*(?:/\s*10|out of 10)?", re.IGNORECASE)
CHUNK = 512


class CriticParams(FilterParams):
    teacher: str = Field(
        "default", description="Teacher role that judges (a key of `teachers:`, or default)."
    )
    rubric: str | None = Field(
        None,
        description="Rubric template file (Jinja over text, payload, recipe); default: the recipe's rubric.",
    )
    min_score: float = Field(7.0, ge=1, le=10, description="Keep records scored at least this.")
    max_attempts: int = Field(
        3, ge=1, le=10, description="Asks per record before a malformed answer is a failure."
    )
    max_tokens: int = Field(128, ge=8, le=4096, description="Output cap per judgement.")
    temperature: float = Field(0.0, ge=0, le=2, description="Judge sampling temperature.")
    system: str | None = Field("You are a strict, fair grader.", description="System message (null: none).")
    json_schema: bool = Field(False, description="Also send a JSON schema (teachers that enforce it).")


SCHEMA = {
    "type": "object",
    "properties": {"score": {"type": "number", "minimum": 1, "maximum": 10}, "reason": {"type": "string"}},
    "required": ["score", "reason"],
}


def parse_judgement(text: str) -> tuple[float, str] | None:
    """(score, reason) from a judge's answer, or None when no score in 1..10 can be read."""
    reason = ""
    value: Any = None
    m = re.search(r"\{.*\}", text, re.DOTALL)
    if m:
        try:
            doc = json.loads(m.group(0))
            if isinstance(doc, dict):
                value, reason = doc.get("score"), str(doc.get("reason") or "")
        except json.JSONDecodeError:
            pass
    if value is None:
        value = text
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        score = float(value)
    else:
        found = _SCORE.search(str(value))
        if not found:
            return None
        score = float(found.group(1))
    if not 1.0 <= score <= 10.0:
        return None
    return score, reason.strip()


def _rubric(params: CriticParams, recipe: str) -> Template:
    if params.rubric:
        p = Path(params.rubric).expanduser()
        if not p.is_file():
            raise ConfigError(f"critic.rubric: file {p} not found")
        return Template.load(p)
    path = RUBRICS / f"{recipe}.j2"
    return Template.load(path if path.is_file() else RUBRICS / "default.j2")


async def _judge(row: Row, params: CriticParams, ctx: Context, rubric: Template) -> Scored:
    assert ctx.generate is not None
    try:
        prompt = rubric.render(text=row.text, payload=row.payload, recipe=ctx.recipe)
    except Exception as exc:  # a rubric that does not fit this record: recorded, not a crash
        return Scored(row.id, None, {"error": f"rubric: {exc}"}, fail="rubric does not fit the record")
    msgs: list[dict[str, str]] = ([{"role": "system", "content": params.system}] if params.system else []) + [
        {"role": "user", "content": prompt}
    ]
    answers = []
    for attempt in range(params.max_attempts):
        req = Request(
            messages=tuple(msgs),
            sampling=Sampling(temperature=params.temperature, max_tokens=params.max_tokens, seed=attempt),
            sample_index=attempt,
            json_schema=SCHEMA if params.json_schema else None,
        )
        try:
            c = await ctx.generate(req, teacher=params.teacher)
        except TeacherRejected as exc:
            return Scored(row.id, None, {"error": str(exc)[:300]}, fail="the judge refused the request")
        answers.append(c.text)
        got = parse_judgement(c.text)
        if got is not None:
            return Scored(row.id, got[0], {"reason": got[1], "attempts": attempt + 1})
        msgs = [*msgs, {"role": "assistant", "content": c.text}, {"role": "user", "content": RE_ASK}]
    return Scored(row.id, None, {"answers": [a[:200] for a in answers]},
                  fail=f"no readable score after {params.max_attempts} attempts")  # fmt: skip


async def score(rows: list[Row], params: CriticParams, ctx: Context) -> list[Scored]:
    if ctx.generate is None:
        raise ConfigError(
            "the critic filter needs a teacher; run it through `factory run` or `factory filter`"
        )
    rubric = _rubric(params, ctx.recipe)
    out: list[Scored] = []
    for i in range(0, len(rows), CHUNK):
        out += await asyncio.gather(*(_judge(r, params, ctx, rubric) for r in rows[i : i + CHUNK]))
    return out


def decide(s: Scored, params: CriticParams) -> tuple[bool, str | None]:
    if s.score is not None and s.score >= params.min_score:
        return True, None
    return False, f"critic score below {params.min_score:g}"


FILTER = Filter(
    slug="critic",
    summary="An LLM judge with a rubric per recipe; keeps records scored at least min_score (1-10).",
    params=CriticParams,
    code_version="c1",
    score=score,
    decide=decide,
    thresholds=("min_score",),
    uses_teacher=True,
    path_params=("rubric",),
    # a user rubric's text is part of the version: editing it judges again (shipped ones follow code_version)
    fingerprint=lambda p: (
        Path(p.rubric).read_text(encoding="utf-8") if p.rubric and Path(p.rubric).is_file() else None
    ),
)
