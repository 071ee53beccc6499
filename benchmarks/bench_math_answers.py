"""How well each answer check tells equal answers from different ones, on our table of answer pairs.

The table (`tests/data/math_answer_pairs.jsonl`) holds pairs a reasoning teacher's final answer and a gold
answer can form — fractions against decimals, surds, intervals, sets, units, percent, equations — each
marked equal or not. Three checks are scored on it, both orders of every pair:

* `answers_agree` (recipes/rationale_answers.py): numbers compared as floats, anything else as strings;
  what the `rationales` recipe uses for its one-number answers.
* Math-Verify alone (`parse` + `verify`, each answer wrapped in `$...$` unless it holds LaTeX delimiters).
* `equivalent` (recipes/math_answers.py): plain numbers first, then Math-Verify.

For each: wrong verdicts (false "equal", false "different"), and the median time per comparison over
`--reps` passes of the table (the first pass, which imports SymPy and fills Math-Verify's parse cache, is
left out). Writes results/math_answers.json.

    python benchmarks/bench_math_answers.py [--reps 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import _results  # noqa: E402

from recipes.math_answers import equivalent  # noqa: E402
from recipes.rationale_answers import answers_agree  # noqa: E402

TABLE = HERE.parent / "tests" / "data" / "math_answer_pairs.jsonl"


def math_verify_alone(a: str, b: str) -> bool:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    configs = [LatexExtractionConfig(), ExprExtractionConfig()]

    def p(s: str) -> list[object]:
        return parse(s if "$" in s or "\\boxed" in s else f"${s}$", extraction_config=configs)

    try:
        return bool(verify(p(a), p(b)))
    except Exception:
        return False


CHECKS: dict[str, Callable[[str, str], bool]] = {
    "answers_agree": answers_agree,
    "math_verify": math_verify_alone,
    "equivalent": equivalent,
}


def score(check: Callable[[str, str], bool], rows: list[dict[str, object]], reps: int) -> dict[str, object]:
    wrong: list[dict[str, object]] = []
    for r in rows:
        a, b, same = str(r["a"]), str(r["b"]), bool(r["same"])
        for x, y in ((a, b), (b, a)):
            if check(x, y) != same:
                wrong.append({"a": x, "b": y, "same": same, "note": r["note"]})
    per_pass = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for r in rows:
            check(str(r["a"]), str(r["b"]))
            check(str(r["b"]), str(r["a"]))
        per_pass.append((time.perf_counter() - t0) / (2 * len(rows)))
    return {
        "comparisons": 2 * len(rows),
        "false_equal": sum(1 for w in wrong if not w["same"]),
        "false_different": sum(1 for w in wrong if w["same"]),
        "wrong": wrong,
        "median_us": round(statistics.median(per_pass) * 1e6, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    ctx = _results.context(["math-verify", "sympy"])
    rows = [json.loads(line) for line in TABLE.read_text(encoding="utf-8").splitlines() if line.strip()]
    figures: dict[str, object] = {
        "pairs": len(rows),
        "equal_pairs": sum(1 for r in rows if r["same"]),
        "reps": args.reps,
        "checks": {name: score(fn, rows, args.reps) for name, fn in CHECKS.items()},
    }
    path = _results.save("math_answers", ctx, figures)
    for name, s in figures["checks"].items():  # type: ignore[attr-defined]
        print(
            f"{name}: false equal {s['false_equal']}, false different {s['false_different']}, {s['median_us']} µs"
        )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
