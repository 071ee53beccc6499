"""`program_rationales`: the teacher writes a Python program that computes the answer; the sandbox runs it.

After PaL (Gao et al., 2023, "Program-aided Language Models") and program distillation for numerical
reasoning: the rationale is code, and an answer is checked by executing it, not by trusting the text.
Each of the k programs runs in factory.sandbox (no network, no secrets, limited time and memory); its
``solution()`` return value is compared with the gold answer within a tolerance. Every sample is kept:
one that does not parse, run or agree carries the reason in ``reject``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from pydantic import Field

from factory.errors import ConfigError
from factory.keys import digest
from factory.sandbox import SANDBOX_VERSION, Limits, SandboxResult, run_program
from factory.seeds import Seed
from factory.types import Request, Sampling
from recipes.base import (
    TEMPLATES,
    Draft,
    Generate,
    Params,
    Recipe,
    Shape,
    Template,
    gather_all,
    logprobs_field,
    template_path,
)
from recipes.rationale_answers import answers_agree, normalize_answer

STAGE = "program"


class ProgramRationalesParams(Params):
    k: int = Field(2, ge=1, le=64, description="Programs sampled per question.")
    temperature: float = Field(0.7, ge=0, le=2, description="Sampling temperature of each sample.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    max_tokens: int = Field(256, ge=1, le=32768, description="Output token cap per sample.")
    logprobs: int | None = logprobs_field()
    seed: int = Field(0, description="Base sampling seed; sample i uses seed + i.")
    stop: list[str] = Field(
        default_factory=list, description="Stop sequences (none by default: a reply ends with its chat turn)."
    )
    input_field: str = Field("question", description="Seed field holding the question.")
    gold_field: str | None = Field(
        "answer", description="Seed field holding the gold answer (null: programs are run, not verified)."
    )
    template: str | None = Field(
        None,
        description="Template of one user turn (Jinja, gets `question`); default: program_rationales.j2.",
    )
    fewshot: str | None = Field(
        None,
        description="JSONL of few-shot examples {question, program, answer}, sent as earlier chat turns; "
        "default: program_rationales_fewshot.jsonl.",
    )
    system: str | None = Field(
        "You write short, correct Python programs. Answer with one ```python block that defines solution().",
        description="System message (null for none).",
    )
    rel_tol: float = Field(1e-6, ge=0, description="Relative tolerance of the executed answer against gold.")
    abs_tol: float = Field(1e-9, ge=0, description="Absolute tolerance of the executed answer against gold.")
    timeout_s: float = Field(5.0, gt=0, le=120, description="Sandbox wall-clock limit per program, seconds.")
    cpu_s: int = Field(2, ge=1, le=120, description="Sandbox CPU-time limit per program, seconds.")
    memory_mb: int = Field(256, ge=64, le=16384, description="Sandbox address-space limit per program, MB.")


@dataclass(frozen=True, slots=True)
class State:
    params: ProgramRationalesParams
    template: Template
    examples: list[dict[str, Any]]
    limits: Limits

    @property
    def version(self) -> str:
        return digest("progset1", [self.template.source, self.examples, SANDBOX_VERSION], length=12)


_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)
_CODE_START = re.compile(r"^(?:import |from \S+ import |def |[A-Za-z_]\w* *=)", re.MULTILINE)
_FRACTION = re.compile(r"(-?\d+)/(\d+)")


def extract_program(text: str) -> str | None:
    """The program in a completion: the first fenced block that defines solution() (else the first fenced
    block), else the text from the first line that looks like code, when it defines solution(). Nothing
    here parses or runs the code."""
    blocks = [b.strip() for b in _FENCE.findall(text) if b.strip()]
    if blocks:
        return next((b for b in blocks if "def solution" in b), blocks[0])
    if "def solution" not in text:
        return None
    m = _CODE_START.search(text)
    return text[m.start() if m else text.index("def solution") :].strip()


def _number(answer: str) -> str:
    """A fraction the program returned (str of a Fraction, e.g. '7/2') as a decimal; other answers as they are."""
    m = _FRACTION.fullmatch(answer.strip())
    if m and int(m.group(2)) != 0:
        return normalize_answer(int(m.group(1)) / int(m.group(2)))
    return normalize_answer(answer)


def agrees(answer: str | None, gold: str | None, rel_tol: float, abs_tol: float) -> bool:
    """answers_agree with both tolerances: numbers within rel_tol or abs_tol, other answers equal as text."""
    if answer is None or gold is None:
        return False
    try:
        return math.isclose(float(answer), float(gold), rel_tol=rel_tol, abs_tol=abs_tol)
    except ValueError:
        return answers_agree(answer, gold)


def prepare(params: ProgramRationalesParams, resolve: Callable[[str], Path]) -> State:
    template = Template.load(template_path(params.template, "program_rationales.j2", resolve))
    fewshot = resolve(params.fewshot) if params.fewshot else TEMPLATES / "program_rationales_fewshot.jsonl"
    if not fewshot.is_file():
        raise ConfigError(f"params.fewshot: file {fewshot} not found")
    examples = [
        orjson.loads(line) for line in fewshot.read_text(encoding="utf-8").splitlines() if line.strip()
    ]
    if params.cpu_s > params.timeout_s:
        raise ConfigError(
            f"params.cpu_s ({params.cpu_s}) must not exceed params.timeout_s ({params.timeout_s})"
        )
    limits = Limits(timeout_s=params.timeout_s, cpu_s=params.cpu_s, memory_mb=params.memory_mb)
    return State(params, template, examples, limits)


def build_requests(seed: Seed, state: State) -> list[Request]:
    """System message, then each few-shot example as a user turn and the assistant's program, then the
    question. The template renders user turns; seed values go in as data."""
    p = state.params
    msgs = [{"role": "system", "content": p.system}] if p.system else []
    for ex in state.examples:
        msgs.append({"role": "user", "content": state.template.render(question=ex["question"])})
        msgs.append({"role": "assistant", "content": f"```python\n{ex['program'].strip()}\n```"})
    msgs.append({"role": "user", "content": state.template.render(question=seed.data[p.input_field])})
    sampling = [
        Sampling(p.temperature, p.top_p, p.max_tokens, tuple(p.stop), seed=p.seed + i) for i in range(p.k)
    ]
    return [
        Request(messages=tuple(msgs), sampling=s, sample_index=i, logprobs=p.logprobs)
        for i, s in enumerate(sampling)
    ]


async def process(seed: Seed, state: State, generate: Generate) -> list[Draft]:
    p = state.params
    question = seed.data[p.input_field]
    gold_raw = seed.data.get(p.gold_field) if p.gold_field else None
    gold = normalize_answer(gold_raw) if gold_raw not in (None, "") else None

    async def sample(req: Request) -> Draft:
        res = await generate(req)
        program = extract_program(res.text)
        run: SandboxResult | None = await run_program(program, state.limits) if program else None
        answer = _number(run.answer) if run is not None and run.ok and run.answer is not None else None
        verified = agrees(answer, gold, p.rel_tol, p.abs_tol) if gold is not None else None
        if program is None:
            reject: str | None = "no program found in the completion"
        elif run is not None and not run.ok:
            reject = f"program {run.status}: {run.reason}"
        elif answer is None:
            reject = "solution() returned None"
        elif verified is False:
            reject = f"executed answer {answer} != gold {gold}"
        else:
            reject = None
        payload = {
            "input": question, "program": program, "executed_answer": answer, "gold": gold,
            "verified": verified, "sandbox_status": run.status if run else None,
            "sandbox_reason": run.reason if run else None, "stdout": run.stdout[:1000] if run else None,
            "completion": res.text, "finish_reason": res.finish_reason,
        }  # fmt: skip
        score = None if gold is None else float(bool(verified))
        return Draft(stage=STAGE, sample_index=req.sample_index, payload=payload, text=program or "",
                     request_keys=(res.key,), reject=reject, score=score)  # fmt: skip

    return await gather_all(sample(r) for r in build_requests(seed, state))


def distrust(p: dict[str, Any]) -> str | None:
    """A program whose executed answer differs from gold is not taught. Without gold there is nothing to
    check against (and no vote: each program computes its answer); such programs count as trusted, and the
    card says the targets were not checked against gold."""
    if p.get("executed_answer") is None:
        return "no executed answer"
    return "disagree with gold" if p.get("verified") is False else None


SHAPES = {
    "prompt_completion": Shape(lambda p: {"prompt": p["input"], "completion": p["program"]}
                               if p["program"] else None, trusted_only=True),
    "step_by_step": Shape(
        lambda p: {"input": p["input"], "label": str(p["executed_answer"]), "rationale": p["program"],
                   "gold": None if p["gold"] is None else str(p["gold"])}
        if p["program"] and p["executed_answer"] is not None else None,
        trusted_only=True,
    ),
}  # fmt: skip


RECIPE = Recipe(
    slug="program_rationales",
    summary="PaL-style programs: the teacher writes Python that computes the answer; a sandbox runs and checks it.",
    params=ProgramRationalesParams,
    prepare=prepare,
    process=process,
    required_fields=lambda p: [p.input_field],
    seed_format="one row per question: {id?, question, answer?} (field names set by input_field / gold_field)",
    record_format="input, program, executed_answer, gold, verified, sandbox_status, sandbox_reason, stdout, "
    "completion, finish_reason",
    stages=(STAGE,),
    shapes=SHAPES,
    # The recipe already rejects programs whose answer is not gold's; `agreement` puts the verdict on each
    # record in the ledger beside the other filters' (and keeps programs without gold).
    default_filters=lambda p: ["agreement"] if p.gold_field else [],
    distrust=distrust,
)
