"""`rationales`: few-shot chain-of-thought rationales, k samples per question.

After Distilling Step-by-Step (Hsieh et al., 2023) and QCRD-style contrastive rationales: every sample
is kept. With a gold answer each sample is flagged positive (agrees) or negative (disagrees); without
one, the k samples vote and each records the majority answer and its vote share (self-consistency).
"""

from __future__ import annotations

import ast
import math
import operator
import re
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
    pair_up,
    sample_seed,
    template_path,
)

STAGE = "rationale"


class RationalesParams(Params):
    k: int = Field(4, ge=1, le=64, description="Samples per question.")
    temperature: float = Field(0.7, ge=0, le=2, description="Sampling temperature of each sample.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    max_tokens: int = Field(256, ge=1, le=32768, description="Output token cap per sample.")
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


_MARKER = re.compile(
    r"(?:so,?\s+)?(?:the (?:final )?answer is|final answer\s*:|answer\s*:|####)\s*", re.IGNORECASE
)
_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")


_OPTION = re.compile(r"^\(?[a-j]\)\s+(?=\S)", re.IGNORECASE)  # "(d) math problem": a choice's letter
_EXPR = re.compile(r"([-+*/().\d ]*\d[-+*/().\d ]*?)\s*\.?\s*(?:\n|$)")
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def normalize_answer(value: Any) -> str:
    """Canonical answer text: numbers without commas, currency or trailing zeros; other text lowercased, a
    multiple-choice letter before it dropped ("(d) Math problem" is "math problem")."""
    s = str(value).strip().rstrip(".").strip()
    s = _OPTION.sub("", s)
    m = _NUMBER.fullmatch(s.replace(" ", ""))
    if m:
        num = s.replace(",", "").replace("$", "").replace(" ", "")
        f = float(num)
        if math.isfinite(f) and f == int(f):
            return str(int(f))
        return repr(f)
    return re.sub(r"\s+", " ", s).lower()


def parse_completion(text: str) -> tuple[str, str | None]:
    """Split a completion into (rationale, answer).

    The answer follows the first marker ("The answer is", "Answer:", "####") that a number (or an arithmetic
    expression that is the whole sentence: "The answer is (84 / 2).") follows, else the last marker's line,
    else the last number in the text. Text after the answer's sentence is dropped.
    """
    text = text.strip()
    matches = list(_MARKER.finditer(text))
    for m in matches:
        value = _arithmetic(text[m.end() :])
        if value is not None:
            return text[: m.start()].strip(), value
        num = _NUMBER.match(text[m.end() :].lstrip())
        if num:
            return text[: m.start()].strip(), normalize_answer(num.group(0))
    if matches:
        m = matches[-1]
        answer = text[m.end() :].strip().split("\n", 1)[0].strip().rstrip(".")
        if answer:
            return text[: m.start()].strip(), normalize_answer(answer)
    numbers = _NUMBER.findall(text)
    if numbers:
        return text, normalize_answer(numbers[-1])
    return text, None


def _arithmetic(rest: str) -> str | None:
    """The value of an arithmetic expression that makes up the whole answer sentence, else None."""
    m = _EXPR.match(rest.lstrip())
    if not m or not any(op in m.group(1).lstrip().lstrip("-") for op in "+-*/"):
        return None
    try:
        value = _evaluate(ast.parse(m.group(1).strip(), mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError):
        return None
    return normalize_answer(repr(value)) if math.isfinite(value) else None


def _evaluate(node: ast.AST) -> float:
    if (
        isinstance(node, ast.Constant)
        and isinstance(node.value, int | float)
        and not isinstance(node.value, bool)
    ):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        v = _evaluate(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return float(_OPS[type(node.op)](_evaluate(node.left), _evaluate(node.right)))
    raise ValueError("not arithmetic")


def answers_agree(a: str | None, b: str | None, rel_tol: float = 1e-6) -> bool:
    if a is None or b is None:
        return False
    try:
        return math.isclose(float(a), float(b), rel_tol=rel_tol, abs_tol=1e-9)
    except ValueError:
        return a == b


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
            Draft(stage=STAGE, sample_index=i, payload=payload, text=_answer_text(payload),
                  request_keys=(res.key,), reject=reject, score=record_score(payload))
        )  # fmt: skip
    return drafts


def gold_fields(answer: str | None, gold: str | None) -> dict[str, Any]:
    """``agrees_with_gold`` and ``label`` (positive | negative; both null without gold)."""
    agrees = answers_agree(answer, gold) if gold is not None else None
    return {
        "agrees_with_gold": agrees,
        "label": None if gold is None else ("positive" if agrees else "negative"),
    }


def vote_fields(answer: str | None, votes: Counter[str], n: int) -> dict[str, Any]:
    """The self-consistency vote of a question's ``n`` samples as one sample sees it."""
    majority = votes.most_common(1)[0][0] if votes else None
    return {
        "majority_answer": majority,
        "vote_share": (votes[answer] / n) if answer is not None and n else 0.0,
        "agrees_with_majority": answer is not None and answer == majority,
    }


def record_score(payload: dict[str, Any]) -> float:
    """1/0 for agreement with gold where there is gold, else the vote share."""
    if payload["gold"] is not None:
        return 1.0 if payload["agrees_with_gold"] else 0.0
    return float(payload["vote_share"])


def _answer_text(p: dict[str, Any]) -> str:
    return f"{p['rationale']}\nThe answer is {p['answer']}."


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
                "chosen": [{"role": "assistant", "content": _answer_text(p)}],
                "rejected": [{"role": "assistant", "content": _answer_text(n)}],
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
            "completion": _answer_text(p),
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


# Last: the import module uses the functions above.
from recipes.rationales_import import IMPORTER  # noqa: E402

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
