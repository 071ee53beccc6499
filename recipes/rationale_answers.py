"""What the `rationales` recipe and its importer share: the answer read from a rationale, normalised and
compared, and the fields a sample gets from gold or from its question's vote."""

from __future__ import annotations

import ast
import math
import operator
import re
from collections import Counter
from typing import Any

STAGE = "rationale"

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


def answer_text(p: dict[str, Any]) -> str:
    return f"{p['rationale']}\nThe answer is {p['answer']}."
