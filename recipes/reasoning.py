"""`reasoning`: long chain-of-thought traces from a reasoning teacher, k per question, verified.

The recipe of R1-style distillation: a reasoning model answers each question k times; each trace's final
answer (the last ``\\boxed{}``, else the stated answer) is taken from the answer part, after the thinking, and
checked — against the gold answer as mathematics (``recipes/math_answers.py``: ``\\frac{1}{2}`` is ``0.5``),
by running the seed's tests on the trace's code for a programming question, or, without gold or tests, by the
vote of the k traces (answers grouped by the same check). A trace cut off at ``max_tokens`` has no answer to
trust and is kept with that reason.

The thinking comes apart from the answer when the teacher sends it apart (``reasoning_content``) or inside
``<think>…</think>`` in the text (``think_tags``). Exports: ``prompt_completion`` with the assistant turn as
``<think>\\nreasoning\\n</think>\\n\\nanswer`` (``export_tags`` sets the tags) and ``reasoning_columns``
(prompt, reasoning, answer); both only of trusted traces.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from factory.keys import digest
from factory.sandbox import Limits, run_program
from factory.seeds import Seed
from factory.teachers.reasoning import split as split_reasoning
from factory.types import Completion, Request, Sampling
from recipes.base import Draft, Generate, Params, Recipe, Shape, Template, gather_all, sample_seed
from recipes.math_answers import equivalent, final_answer

STAGE = "trace"
MATH_SUFFIX = "Please reason step by step, and put your final answer within \\boxed{}."
CODE_SUFFIX = "Write your final solution as one Python code block (```python ... ```)."
_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.S)


class ReasoningParams(Params):
    k: int = Field(4, ge=1, le=64, description="Traces per question.")
    temperature: float = Field(0.6, ge=0, le=2, description="Sampling temperature of each trace.")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling mass.")
    max_tokens: int = Field(
        16384, ge=16, le=262144, description="Output token cap per trace (thinking and answer together)."
    )
    seed: int = Field(
        0, description="Base sampling seed; each trace's seed derives from it, the question and i."
    )
    input_field: str = Field("question", description="Seed field holding the question.")
    gold_field: str | None = Field("answer", description="Seed field holding the gold answer (null: none).")
    tests_field: str | None = Field(
        "tests",
        description="Seed field holding Python tests (asserts) for a programming question; a trace passes when "
        "its last code block and the tests run clean in the sandbox. Seeds without the field are checked "
        "by their answer.",
    )
    prompt: str = Field(
        "{{ question }}\n\n" + MATH_SUFFIX,
        description="User turn (Jinja; `question` is the seed's question). Programming questions use "
        "`code_prompt`.",
    )
    code_prompt: str = Field(
        "{{ question }}\n\n" + CODE_SUFFIX, description="User turn of a programming question."
    )
    system: str | None = Field(None, description="System message (reasoning models are usually run without).")
    think_tags: tuple[str, str] = Field(
        ("<think>", "</think>"),
        description="Tags around the thinking inside the text, for teachers that do not send it apart.",
    )
    export_tags: tuple[str, str] = Field(
        ("<think>", "</think>"), description="Tags around the thinking in the exported assistant turn."
    )
    test_timeout_s: float = Field(
        10.0, gt=0, le=300, description="Sandbox time for a trace's code and tests."
    )

    @field_validator("think_tags", "export_tags")
    @classmethod
    def _tags(cls, v: tuple[str, str]) -> tuple[str, str]:
        if not v[0] or not v[1]:
            raise ValueError("give an opening and a closing tag, e.g. ['<think>', '</think>']")
        return v


@dataclass(frozen=True, slots=True)
class State:
    params: ReasoningParams
    prompt: Template
    code_prompt: Template
    limits: Limits

    @property
    def version(self) -> str:
        return digest("reasoning1", [self.prompt.source, self.code_prompt.source], length=12)


def prepare(params: ReasoningParams, resolve: Callable[[str], Path]) -> State:
    limits = Limits(timeout_s=params.test_timeout_s, cpu_s=max(1, int(params.test_timeout_s)))
    return State(
        params, Template(params.prompt, "prompt"), Template(params.code_prompt, "code_prompt"), limits
    )


def split_thinking(c: Completion, tags: tuple[str, str]) -> tuple[str | None, str]:
    """(thinking, answer part) of a completion: the thinking the teacher sent apart, else the text between the
    tags (factory.teachers.reasoning's rules: an opening tag never closed makes all of it thinking and leaves
    no answer part; a closing tag alone ends thinking the chat template opened)."""
    if c.reasoning:
        return c.reasoning.strip(), (c.text or "").strip()
    answer, thought = split_reasoning(c.text or "", tags)
    return thought, answer.strip()


def _is_code(seed: Seed, p: ReasoningParams) -> bool:
    return bool(p.tests_field and seed.data.get(p.tests_field))


def build_requests(seed: Seed, state: State) -> list[Request]:
    p = state.params
    tpl = state.code_prompt if _is_code(seed, p) else state.prompt
    user = tpl.render(question=seed.data[p.input_field])
    msgs = ([{"role": "system", "content": p.system}] if p.system else []) + [
        {"role": "user", "content": user}
    ]
    return [
        Request(
            messages=tuple(msgs),
            sampling=Sampling(
                temperature=p.temperature,
                top_p=p.top_p,
                max_tokens=p.max_tokens,
                seed=sample_seed("reasoning-seed1", p.seed, user, i),
            ),
            sample_index=i,
        )
        for i in range(p.k)
    ]


def last_code_block(text: str) -> str | None:
    blocks = [b.strip() for b in _FENCE.findall(text) if b.strip()]
    return blocks[-1] if blocks else None


async def _passes_tests(code: str, tests: str, limits: Limits) -> tuple[bool, str]:
    source = f"{code}\n\n{tests}\n\n\ndef solution():\n    return 'passed'\n"
    run = await run_program(source, limits)
    return run.ok and run.answer == "passed", run.reason


def _classes(answers: list[str | None]) -> list[int | None]:
    """Each answer's class: the index of the first answer it is equivalent to (None for no answer)."""
    reps: list[int] = []
    out: list[int | None] = []
    for i, a in enumerate(answers):
        if a is None:
            out.append(None)
            continue
        cls = next((r for r in reps if equivalent(answers[r], a)), None)
        if cls is None:
            reps.append(i)
            cls = i
        out.append(cls)
    return out


async def process(seed: Seed, state: State, generate: Generate) -> list[Draft]:
    p = state.params
    question = seed.data[p.input_field]
    gold_raw = seed.data.get(p.gold_field) if p.gold_field else None
    gold = None if gold_raw in (None, "") else str(gold_raw).strip()
    tests = str(seed.data[p.tests_field]) if _is_code(seed, p) and p.tests_field else None
    results = await gather_all(generate(r) for r in build_requests(seed, state))
    parts = [split_thinking(r, p.think_tags) for r in results]
    cut = [r.finish_reason == "length" for r in results]
    codes: list[str | None] = [None] * len(results)
    answers: list[str | None] = [None] * len(results)
    for i, (_, answer_part) in enumerate(parts):
        if cut[i]:
            continue
        if tests is not None:
            codes[i] = last_code_block(answer_part)
        else:
            answers[i] = final_answer(answer_part)
    passed: list[bool | None] = [None] * len(results)
    why: list[str] = [""] * len(results)
    if tests is not None:
        for i, code in enumerate(codes):
            if code is not None:
                passed[i], why[i] = await _passes_tests(code, tests, state.limits)
    classes = _classes(answers)
    sizes = {c: classes.count(c) for c in set(classes) if c is not None}
    majority = max(sizes, key=lambda c: (sizes[c], -c)) if sizes else None
    drafts = []
    for i, (res, (thinking, answer_part)) in enumerate(zip(results, parts, strict=True)):
        a = answers[i]
        agrees = (
            equivalent(a, gold) if gold is not None and a is not None else (None if gold is None else False)
        )
        cls = classes[i]
        payload: dict[str, Any] = {
            "kind": "code" if tests is not None else "answer",
            "input": question,
            "reasoning": thinking,
            "answer_text": answer_part,
            "final_answer": a,
            "gold": gold,
            "agrees_with_gold": agrees if tests is None else None,
            "label": None if gold is None or tests is not None else ("positive" if agrees else "negative"),
            "majority_answer": answers[majority] if majority is not None else None,
            "vote_share": (sizes[cls] / len(results)) if cls is not None else 0.0,
            "agrees_with_majority": cls is not None and cls == majority,
            "code": codes[i],
            "verified": passed[i] if tests is not None else None,
            "finish_reason": res.finish_reason,
            "completion_tokens": res.completion_tokens,
            "export_tags": list(p.export_tags),
        }
        if tests is not None:  # programming questions are checked by their tests, not by a vote
            for k in ("agrees_with_gold", "vote_share", "majority_answer", "agrees_with_majority", "label"):
                payload.pop(k)
        reject = None
        if cut[i]:
            reject = "cut off at max_tokens (finish_reason length)"
        elif tests is not None and codes[i] is None:
            reject = "no code block in the answer"
        elif tests is not None and not passed[i]:
            reject = f"tests failed: {why[i]}"
        elif tests is None and a is None:
            reject = "no final answer (no \\boxed{} and no stated answer)"
        score = (1.0 if passed[i] else 0.0) if tests is not None else _score(payload)
        drafts.append(
            Draft(stage=STAGE, sample_index=i, payload=payload, text=res.text or "", request_keys=(res.key,),
                  reject=reject, score=score)
        )  # fmt: skip
    return drafts


def _score(p: dict[str, Any]) -> float:
    if p.get("gold") is not None:
        return 1.0 if p.get("agrees_with_gold") else 0.0
    return float(p.get("vote_share") or 0.0)


def distrust(p: dict[str, Any]) -> str | None:
    if p.get("finish_reason") == "length":
        return "cut off at max_tokens"
    if p.get("kind") == "code":
        return None if p.get("verified") else "tests failed"
    if p.get("final_answer") is None:
        return "no final answer"
    if p.get("gold") is not None:
        return None if p.get("agrees_with_gold") else "disagree with gold"
    return None if p.get("agrees_with_majority") else "disagree with the majority vote"


def assistant_turn(p: dict[str, Any]) -> str:
    open_tag, close_tag = p.get("export_tags") or ("<think>", "</think>")
    thinking = p.get("reasoning") or ""
    return f"{open_tag}\n{thinking}\n{close_tag}\n\n{p.get('answer_text') or ''}".rstrip()


SHAPES = {
    "prompt_completion": Shape(
        lambda p: {"prompt": p["input"], "completion": assistant_turn(p), "gold": p.get("gold")},
        trusted_only=True,
    ),
    "reasoning_columns": Shape(
        lambda p: {
            "prompt": p["input"],
            "reasoning": p.get("reasoning") or "",
            "answer": p.get("answer_text") or "",
            "final_answer": p.get("final_answer"),
            "gold": p.get("gold"),
        },
        trusted_only=True,
    ),
}


RECIPE = Recipe(
    slug="reasoning",
    summary="Long chain-of-thought traces from a reasoning teacher, k per question, verified by math-aware "
    "answer checks, tests, or vote.",
    params=ReasoningParams,
    prepare=prepare,
    process=process,
    required_fields=lambda p: [p.input_field],
    seed_format="one row per question: {id?, question, answer?, tests?} (names set by input_field / gold_field / "
    "tests_field; tests: Python asserts for a programming question)",
    record_format="kind (answer|code), input, reasoning, answer_text, final_answer, gold, agrees_with_gold, label, majority_answer, "
    "vote_share, agrees_with_majority, code, verified, finish_reason, completion_tokens, export_tags",
    stages=(STAGE,),
    shapes=SHAPES,
    default_filters=lambda p: ["agreement"],
    distrust=distrust,
)
