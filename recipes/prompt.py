"""`prompt`: one templated prompt per seed, n samples, the completion kept as is.

The plainest recipe: a Jinja template over the seed's fields. Useful for quick text generation and as
the workload of the throughput benchmarks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from factory.seeds import Seed
from factory.types import Request, Sampling
from recipes.base import (
    Draft,
    Generate,
    Params,
    Recipe,
    Shape,
    Template,
    logprobs_field,
    sample_seed,
    template_path,
)

STAGE = "completion"


class SampledParams(Params):
    """What a recipe of one prompt per seed, n samples, gets: sampling, the system message, the teacher role
    (also the params of recipes made from two functions, recipes.functions)."""

    n: int = Field(1, ge=1, le=64, description="Samples per seed.")
    temperature: float = Field(0.7, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(256, ge=1, le=32768)
    seed: int = Field(
        0, description="Base sampling seed; each sample's seed derives from it, the prompt and i."
    )
    system: str | None = Field(None, description="System message.")
    teacher: str = Field("default", description="Teacher role the prompts go to (a key of `teachers:`).")
    logprobs: int | None = logprobs_field()


class PromptParams(SampledParams):
    template: str = Field("{{ text }}", description="Inline Jinja template over the seed's fields.")
    template_file: str | None = Field(None, description="Template file instead of the inline template.")
    required: list[str] = Field(
        default_factory=lambda: ["text"], description="Seed fields every row must have."
    )


@dataclass(frozen=True, slots=True)
class State:
    params: PromptParams
    template: Template

    @property
    def version(self) -> str:
        return self.template.version


def prepare(params: PromptParams, resolve: Callable[[str], Path]) -> State:
    if params.template_file:
        return State(params, Template.load(template_path(params.template_file, "", resolve)))
    return State(params, Template(params.template, "inline"))


async def process(seed: Seed, state: State, generate: Generate) -> list[Draft]:
    p = state.params
    prompt = state.template.render(**seed.data)
    msgs = ([{"role": "system", "content": p.system}] if p.system else []) + [
        {"role": "user", "content": prompt}
    ]
    reqs = [
        Request(
            tuple(msgs),
            Sampling(
                p.temperature, p.top_p, p.max_tokens, seed=sample_seed("prompt-seed1", p.seed, prompt, i)
            ),
            sample_index=i,
            logprobs=p.logprobs,
        )
        for i in range(p.n)
    ]
    if len(reqs) == 1:
        results = [await generate(reqs[0], teacher=p.teacher)]
    else:
        results = list(await asyncio.gather(*(generate(r, teacher=p.teacher) for r in reqs)))
    return [
        Draft(
            stage=STAGE, sample_index=i, text=c.text, request_keys=(c.key,),
            payload={"prompt": prompt, "completion": c.text, "finish_reason": c.finish_reason,
                     **({"reasoning": c.reasoning} if c.reasoning is not None else {})},
            reject=None if c.text.strip() else "empty completion",
        )
        for i, c in enumerate(results)
    ]  # fmt: skip


SHAPES = {"prompt_completion": Shape(lambda p: {"prompt": p["prompt"], "completion": p["completion"]})}


RECIPE = Recipe(
    slug="prompt",
    summary="One templated prompt per seed, n samples; the completion kept as is.",
    params=PromptParams,
    prepare=prepare,
    process=process,
    required_fields=lambda p: list(p.required),
    seed_format="any fields the template uses (default: {text})",
    record_format="prompt, completion, finish_reason, reasoning (a reasoning model's, when it gave one)",
    stages=(STAGE,),
    teacher_roles=lambda p: [p.teacher] if p.teacher != "default" else [],
    shapes=SHAPES,
)
