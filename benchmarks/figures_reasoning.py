"""The answer-check block of benchmarks/README.md, rendered from results/math_answers.json (written by
bench_math_answers.py); benchmarks/figures.py registers it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _results  # noqa: E402
from figures_read import when  # noqa: E402

NAMES = {
    "answers_agree": "`answers_agree` (numbers as floats, else strings)",
    "math_verify": "Math-Verify alone",
    "equivalent": "`equivalent` (plain numbers, words as text, then Math-Verify)",
}


def math_answers() -> str:
    d = _results.load("math_answers")
    x: dict[str, Any] = d["figures"]
    v = d["versions"]
    lines = [
        "",
        f"Measured {d['date']} by `bench_math_answers.py` ({when(d)}; math-verify {v.get('math-verify')}, sympy "
        f"{v.get('sympy')}). {x['pairs']} pairs ({x['equal_pairs']} equal, {x['pairs'] - x['equal_pairs']} "
        "different), each compared both ways; time per comparison is the median of "
        f"{x['reps']} passes over the table after a first one.",
        "",
        "| check | comparisons | wrongly equal | wrongly different | µs per comparison |",
        "|---|---|---|---|---|",
    ]
    for name, s in x["checks"].items():
        lines.append(
            f"| {NAMES.get(name, name)} | {s['comparisons']} | {s['false_equal']} | {s['false_different']} | "
            f"{s['median_us']:,.1f} |"
        )
    missed = sorted({w["note"] for w in x["checks"]["math_verify"]["wrong"]})
    if missed:
        lines += ["", "Math-Verify alone gets wrong: " + "; ".join(missed) + "."]
    lines.append("")
    return "\n".join(lines)
