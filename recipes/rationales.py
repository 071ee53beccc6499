"""`rationales`: few-shot chain-of-thought rationales, k samples per question.

After Distilling Step-by-Step (Hsieh et al., 2023) and QCRD-style contrastive rationales: every sample
is kept. With a gold answer each sample is flagged positive (agrees) or negative (disagrees); without
one, the k samples vote and each records the majority answer and its vote share (self-consistency).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from pydantic import Field

from factory.errors import ConfigError
from factory.keys import digest
from factory.seeds import Seed
from factory.types import Request, Sampling
from recipes.base import (
    TEMPLATES,
    Draft,
    Generate,
    Params,
    Rec,
    Recipe,
    Shape,
    Template,
    gather_all,
    logprobs_field,
    pair_up,
    sample_seed,
    template_path,
)
from recipes.rationale_answers import (
    STAGE,
    answer_text,
    gold_fields,
    normalize_answer,
    parse_completion,
    record_score,
    vote_fields,
)
from recipes.rationales_import import IMPORTER


class RationalesParams(Params):
    k: int = Field(4, ge=1, le=64, description="Samples per question.")
    temperature: float = Field(0.7, ge=0, le=2, description="Sampling temperature of each sample.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    max_tokens: int = Field(256, ge=1, le=32768, description="Output token cap per sample.")
    logprobs: int | None = logprobs_field()
    seed: int = Field(
        0, description="Base sampling seed; each sample's seed derives from it, the question and i."
    )
    stop: list[str] = Field(
        default_factory=lambda: ["\nQuestion:"],
        description="Stop sequences; the default ends the answer before a model invents the next few-shot question.",
    )
    input_field: str = Field("question", description="Seed field holding the question.")
    gold_field: str | None = Field(
        "answer", description="Seed field holding the gold answer (null: no gold, vote)."
    )
    template: str | None = Field(None, description="Prompt template file (Jinja); default: rationales.j2.")
    fewshot: str | None = Field(
        None,
        description="JSONL of few-shot examples {question, rationale, answer}; default: rationales_fewshot.jsonl.",
    )
    system: str | None = Field(
        "You are a careful tutor. Reason step by step and end with 'The answer is X.'",
        description="System message (null for none).",
    )


@dataclass(frozen=True, slots=True)
class State:
    params: RationalesParams
    template: Template
    examples: list[dict[str, Any]]

    @property
    def version(self) -> str:
        return digest("tplset1", [self.template.source, self.examples], length=12)


def prepare(params: RationalesParams, resolve: Callable[[str], Path]) -> State:
    template = Template.load(template_path(params.template, "rationales.j2", resolve))
    fewshot = resolve(params.fewshot) if params.fewshot else TEMPLATES / "rationales_fewshot.jsonl"
    if not fewshot.is_file():
        raise ConfigError(f"params.fewshot: file {fewshot} not found")
    examples = [
        orjson.loads(line) for line in fewshot.read_text(encoding="utf-8").splitlines() if line.strip()
    ]
    return State(params, template, examples)


def build_requests(seed: Seed, state: State) -> list[Request]:
    p = state.params
    prompt = state.template.render(question=seed.data[p.input_field], examples=state.examples)
    msgs = ([{"role": "system", "content": p.system}] if p.system else []) + [
        {"role": "user", "content": prompt}
    ]
    return [
        Request(
            messages=tuple(msgs),
            sampling=Sampling(
                temperature=p.temperature,
                top_p=p.top_p,
                max_tokens=p.max_tokens,
                stop=tuple(p.stop),
                seed=sample_seed("rat-seed1", p.seed, prompt, i),
            ),
            sample_index=i,
            logprobs=p.logprobs,
        )
        for i in range(p.k)
    ]


async def process(seed: Seed, state: State, generate: Generate) -> list[Draft]:
    p = state.params
    question = seed.data[p.input_field]
    gold_raw = seed.data.get(p.gold_field) if p.gold_field else None
    gold = normalize_answer(gold_raw) if gold_raw not in (None, "") else None
    results = await gather_all(generate(r) for r in build_requests(seed, state))
    parsed = [parse_completion(r.text) for r in results]
    votes = Counter(a for x in parsed if x is not None for a in [x[1]] if a is not None)
    drafts: list[Draft] = []
    for i, (res, par) in enumerate(zip(results, parsed, strict=True)):
        rationale, answer = par
        payload = {
            "input": question,
            "rationale": rationale,
            "answer": answer,
            "gold": gold,
            **gold_fields(answer, gold),
            **vote_fields(answer, votes, len(results)),
            "completion": res.text,
            "finish_reason": res.finish_reason,
        }
        reject = None
        if answer is None:
            reject = "no answer found in the completion"
        elif not rationale:
            reject = "empty rationale"
        drafts.append(
            Draft(stage=STAGE, sample_index=i, payload=payload, text=answer_text(payload),
                  request_keys=(res.key,), reject=reject, score=record_score(payload))
        )  # fmt: skip
    return drafts


def distrust(p: dict[str, Any]) -> str | None:
    """Why a sample's answer is not to be taught: it disagrees with gold, or (no gold) with the vote."""
    if p.get("answer") is None:
        return "no answer"
    if p.get("gold") is not None:
        return None if p.get("agrees_with_gold") else "disagree with gold"
    return None if p.get("agrees_with_majority") else "disagree with the majority vote"


def preference_pairs(
    pos: list[Rec], neg: list[Rec], cap: int
) -> list[tuple[dict[str, Any], tuple[str, ...]]]:
    """QCRD's contrastive signal in TRL's conversational preference format: the question as the user turn,
    a trusted rationale as ``chosen`` and a wrong one of the same question as ``rejected``."""
    return [
        (
            {
                "prompt": [{"role": "user", "content": p["input"]}],
                "chosen": [{"role": "assistant", "content": answer_text(p)}],
                "rejected": [{"role": "assistant", "content": answer_text(n)}],
                "gold": None if p["gold"] is None else str(p["gold"]),
            },
            (pid, nid),
        )
        for (pid, p), (nid, n) in pair_up(pos, neg, cap)
    ]


SHAPES = {
    "prompt_completion": Shape(
        lambda p: {
            "prompt": p["input"],
            "completion": answer_text(p),
            "gold": None if p["gold"] is None else str(p["gold"]),
        },
        trusted_only=True,
    ),
    # Distilling Step-by-Step: one input, two targets (the trainer adds the task prefixes).
    # `gold` (null without one) lets an evaluation score student and teacher on the same rows.
    "step_by_step": Shape(
        lambda p: {
            "input": p["input"],
            "label": str(p["answer"]),
            "rationale": p["rationale"],
            "gold": None if p["gold"] is None else str(p["gold"]),
        },
        trusted_only=True,
    ),
    "preference": Shape(group=preference_pairs),
}


RECIPE = Recipe(
    slug="rationales",
    summary="Few-shot chain-of-thought rationales, k samples per question, checked against gold or by vote.",
    params=RationalesParams,
    prepare=prepare,
    process=process,
    required_fields=lambda p: [p.input_field],
    seed_format="one row per question: {id?, question, answer?} (field names set by input_field / gold_field)",
    record_format="input, rationale, answer, gold, agrees_with_gold, label (positive|negative), majority_answer, "
    "vote_share, agrees_with_majority, completion, finish_reason",
    stages=(STAGE,),
    shapes=SHAPES,
    importer=IMPORTER,
    # With a gold field configured, samples that disagree with gold are not curated by default; seeds
    # without a gold answer then keep the samples whose answer won at least half the vote.
    default_filters=lambda p: ["agreement"] if p.gold_field else [],
    distrust=distrust,
)
