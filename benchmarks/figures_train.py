"""The training-throughput block of benchmarks/README.md, rendered from results/train_throughput.json
(written by bench_train.py); benchmarks/figures.py registers it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _results  # noqa: E402
from figures_read import f0, when  # noqa: E402

NAMES = {"after": "this tree", "before": "before (`{commit}`)", "after_bf16": "this tree, bf16 on the CPU"}


def train_throughput() -> str:
    d = _results.load("train_throughput")
    x: dict[str, Any] = d["figures"]
    v = d["versions"]
    lines = [
        "",
        f"Measured {d['date']} by `bench_train.py` ({when(d)}; torch {v.get('torch')}, transformers "
        f"{v.get('transformers')}). {x['rows']} SVAMP training inputs, one epoch, batch {x['batch']}, a "
        f"SmolLM2-135M-architecture student with random weights and {x['layers']} of its 30 decoder layers "
        f"(width, heads and vocabulary as SmolLM2's). Tokens fed in one epoch (prompt + answer, no padding): "
        f"label-only {f0(x['tokens_fed']['label_only'])}, step_by_step {f0(x['tokens_fed']['step_by_step'])}. "
        f"Medians of {x['reps']} runs, alternating; time is `trainer.train()` only.",
        "",
        "| trainer | label-only tokens/s | step_by_step tokens/s | step_by_step ÷ label-only | runs (s), label-only "
        "/ step_by_step |",
        "|---|---|---|---|---|",
    ]
    for side, row in x["sides"].items():
        name = NAMES.get(side, side).format(commit=str(x.get("before_commit", ""))[:10])
        lo, sbs = row["label_only"], row["step_by_step"]
        runs = (
            f"{', '.join(f'{r:.0f}' for r in lo['runs_s'])} / {', '.join(f'{r:.0f}' for r in sbs['runs_s'])}"
        )
        lines.append(
            f"| {name} | {lo['tokens_per_s']:,.1f} | {sbs['tokens_per_s']:,.1f} | {row['ratio']:.2f} | {runs} |"
        )
    lines.append("")
    gains = [f"{task.replace('_', '-')} {x[k]:.2f}×" for task in ("label_only", "step_by_step")
             if (k := f"after_vs_before_{task}") in x]  # fmt: skip
    if gains:
        lines.append(f"This tree's tokens/s over the earlier commit's: {', '.join(gains)}.")
    verdict = "met" if x["met"] else "missed"
    lines.append(
        f"Target: step_by_step at least {x['target']} × label-only's tokens/s in this tree: {verdict}."
    )
    return "\n" + "\n".join(lines) + "\n"


GPU_CHECKS = {
    "generation": (
        "transformers teacher, fed like the runner feeds it",
        "bare `model.generate`, same batches",
    ),
    "embeddings": ("`factory.embeddings.encode`", "bare `SentenceTransformer.encode`"),
    "training": ("the factory's causal Trainer, bf16 weights", "bare torch loop (own loss, fused AdamW)"),
}


def gpu_check() -> str:
    """The GPU check's table (results/gpu_check.json, written by gpu_check.py), or a line saying it has not
    run on a GPU yet."""
    if not (_results.RESULTS / "gpu_check.json").is_file():
        return (
            "\nNot run on a GPU yet: `results/gpu_check.json` is absent. `python benchmarks/gpu_check.py` on a "
            "GPU machine writes it, and `python benchmarks/figures.py` then puts its table here.\n"
        )
    d = _results.load("gpu_check")
    x: dict[str, Any] = d["figures"]
    v = d["versions"]
    lines = [
        "",
        f"Measured {d['date']} by `gpu_check.py` on {x.get('gpu') or 'no GPU'} ({x['mode']} mode; {when(d)}; "
        f"torch {v.get('torch')}, transformers {v.get('transformers')}, sentence-transformers "
        f"{v.get('sentence-transformers')}). Medians of the repetitions; ratio = ours ÷ bare.",
        "",
        "| check | ours | bare | unit | ours (device) | bare (device) | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, (ours, bare) in GPU_CHECKS.items():
        f = x.get(name)
        if f is None:
            continue
        if "error" in f:
            lines.append(f"| {name} | {ours} | {bare} | failed: {f['error']} | | | |")
            continue
        lines.append(
            f"| {name} | {ours} | {bare} | {f['unit']} | {f['ours']:,.1f} ({f['ours_device']}) | "
            f"{f['bare']:,.1f} ({f['bare_device']}) | {f['ratio']:.3f} |"
        )
    return "\n" + "\n".join(lines) + "\n"
