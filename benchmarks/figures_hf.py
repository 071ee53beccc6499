"""The transformers-teacher block of benchmarks/README.md, rendered from results/hf_teacher.json (written by
bench_hf_teacher.py); benchmarks/figures.py registers it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _results  # noqa: E402
from figures_read import when  # noqa: E402


def hf_teacher() -> str:
    d = _results.load("hf_teacher")
    x: dict[str, Any] = d["figures"]
    v = d["versions"]
    names = {"before": f"before (`{x['before_commit'][:10]}`)", "after": "this tree"}
    lines = [
        "",
        f"Measured {d['date']} by `bench_hf_teacher.py` ({when(d)}; torch {v.get('torch')}, transformers "
        f"{v.get('transformers')}). A `{x['recipe']}` run over {x['questions']} questions, k = {x['k']} "
        f"samples a question (each its own seed), max_tokens {x['max_tokens']}, on `transformers:` with "
        f"{x['model']}, batch_size {x['batch_size']}. Medians of {x['reps']} runs a side, alternating, a fresh "
        "store each; each tree's teacher runs in a process of its own, its model loaded and warmed before "
        "the clock starts.",
        "",
        "| teacher | requests | generate calls | requests/s | runs (s) |",
        "|---|---|---|---|---|",
    ]
    for side, row in x["sides"].items():
        runs = ", ".join(f"{r:.1f}" for r in row["runs_s"])
        lines.append(
            f"| {names.get(side, side)} | {row['requests']} | {row['generate_calls']:g} | "
            f"{row['requests_per_s']:.3f} | {runs} |"
        )
    lines.append("")
    same = x.get("same_text")
    if same:
        lines.append(
            f"Of {same['of']} of this tree's requests generated again one at a time, {same['same']} got the "
            "text they got in the run's batch."
        )
    verdict = "met" if x["met"] else "missed"
    lines.append(
        f"This tree's requests/s over the earlier commit's: {x['speedup']:.2f}×. Target: at least "
        f"{x['target']:g}×: {verdict}."
    )
    return "\n" + "\n".join(lines) + "\n"
