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


STREAM_NAMES = {
    "ours_plain": "ours, plain (one JSON body)",
    "ours_stream": "ours, streamed (server-sent events)",
    "sdk_stream": "stock `AsyncOpenAI`, streamed",
}


def stream() -> str:
    d = _results.load("stream")
    x: dict[str, Any] = d["figures"]
    v = d["versions"]
    lines = [
        "",
        f"Measured {d['date']} by `bench_stream.py` ({when(d)}; openai {v.get('openai')}, aiohttp "
        f"{v.get('aiohttp')}). {x['n']} answers a client, each a reasoning trace of {x['tokens']:,} tokens "
        f"({x['events_per_answer']:,} events when streamed), {x['in_flight']} in flight, against the fault "
        f"server in its own process; CPU is the median of {x['repeats']} runs, memory the most the client's "
        "Python objects held at once (one more run under tracemalloc), per request in flight.",
        "",
        "| client | CPU ms per answer | answers/s | peak KB per request in flight |",
        "|---|---|---|---|",
    ]
    for kind, name in STREAM_NAMES.items():
        f = x[kind]
        lines.append(
            f"| {name} | {f['cpu_ms_per_answer']:,.1f} | {f['answers_per_s']:,.1f} | "
            f"{f['peak_kb_per_request_in_flight']:,.0f} |"
        )
    lines += [
        "",
        f"Streamed, ours costs {x['stream_over_sdk_cpu']:.3f}× the SDK's CPU per answer; streaming itself costs "
        f"{x['stream_over_plain_cpu']:.0f}× the plain path's (one event a token against one body).",
        "",
    ]
    return "\n".join(lines)
