"""The soft-labels block of benchmarks/README.md, rendered from results/soft_labels.json (written by
bench_soft_labels.py); benchmarks/figures.py registers it."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _results  # noqa: E402
from figures_read import sig, when  # noqa: E402


def soft_labels() -> str:
    d = _results.load("soft_labels")
    f = d["figures"]
    v = d["versions"]
    lines = [
        "",
        f"Measured by `bench_soft_labels.py` ({when(d)}; duckdb {v.get('duckdb')}): {f['answers']:,} answers of "
        f"{f['tokens']} generated tokens each with token ids, committed through the store into three stores: "
        "without logprobs, with them packed, and with the API's JSON text of them in their place; a stored "
        "cost is the difference of the files from the first after a checkpoint, over the answer tokens "
        f"(median of {f['reps']} rounds). Bytes per answer-token:",
        "",
        "| top-k | stored, packed | packed blob | journal line (base64) | the API's JSON text | JSON text "
        "stored the same way (peer) | peer / ours |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in f["by_k"]:
        lines.append(
            f"| {r['k']} | {r['store_bytes_per_token']:.1f} | {r['blob_bytes_per_token']:.1f} | "
            f"{r['journal_bytes_per_token']:.1f} | {r['openai_json_bytes_per_token']:.1f} | "
            f"{r['store_json_bytes_per_token']:.1f} | {sig(r['store_json_bytes_per_token'] / r['store_bytes_per_token'])}× |"
        )
    k5 = next((r for r in f["by_k"] if r["k"] == 5), f["by_k"][0])
    lines += [
        "",
        f"Reading a cached answer's logprobs back into Python lists costs {k5['unpack_us_per_answer']:,.0f} µs "
        f"an answer at k = {k5['k']} ({f['tokens']} tokens; one pass, on the loaded box).",
    ]
    return "\n".join(lines) + "\n"
