"""The table of benchmarks/loop.py's rounds (generate → curate → train → eval → focus), from results/loop.json."""

from __future__ import annotations

import _results


def loop_table() -> str:
    d = _results.load("loop")
    f = d["figures"]
    head = ["round", "seeds chosen by", "seeds", "records", "requests sent", "curated", "train rows",
            "test right", "pool failed", "wall s (generate / train / eval)"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in f["rounds"]:
        w = r["wall_s"]
        chosen = (
            "all (the demo config)" if r["focus_from"] is None else f"round {r['round'] - 1}'s pool failures"
        )
        cells = [r["round"], chosen, r["seeds"], r["records"], r["requests_sent"], r["curated"], r["train_rows"],
                 f"{round(r['test_exact_match'] * r['test_inputs'])} of {r['test_inputs']}", f"{r['pool_failed']} of {r['pool_inputs']}",
                 f"{w['generate']:.0f} / {w['train']:.0f} / {w['eval_test'] + w['eval_pool']:.0f}"]  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += [
        "",
        f"`benchmarks/loop.py` (`{f['config']}`, student `{f['student']}` trained {f['max_steps']} steps from "
        f"its base each round, {f['failed_samples']} samples per failed pool seed; {d['date']}, {d['cpus']} CPUs, "
        f"load {d['load_start']:.1f} → {d['load_end']:.1f}; one run, {f['total_s'] / 60:.1f} min in all).",
    ]
    return "\n" + "\n".join(lines) + "\n"
