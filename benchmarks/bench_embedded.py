"""Output tokens per second of the embedded teacher (SmolLM2-135M) on each local engine.

    .venv/bin/python benchmarks/bench_embedded.py [--engines vllm,transformers] [--sizes 16,64]
                                                  [--max-tokens 64] [--hf-batch-size 16] [--vllm-dtype auto]

Each engine is started once (start-up time printed separately) and warmed with one small batch; then
every size runs as one ``complete`` call of that many distinct prompts. tok/s = completion tokens of the
batch / its wall time. Prompts ask for stories so that most answers run to max_tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

from factory.teachers import build_teacher
from factory.teachers.embedded import ensure_safetensors
from factory.types import Completion, Request, Sampling

TOPICS = [
    "a lighthouse keeper", "a lost cat", "a robot chef", "a winter market", "a desert train",
    "a clockmaker", "a shy dragon", "a city garden", "an old violin", "a rainy harbour",
    "a mountain school", "a moon base", "a paper boat", "a night bakery", "a forgotten key", "a tiny island",
]  # fmt: skip


def prompts(n: int, max_tokens: int) -> list[Request]:
    return [
        Request.chat(
            f"Write a long story about {TOPICS[i % len(TOPICS)]} (version {i}).",
            sampling=Sampling(temperature=0.0, max_tokens=max_tokens),
        )
        for i in range(n)
    ]


async def bench(
    engine: str, sizes: list[int], max_tokens: int, hf_batch: int, vllm_dtype: str
) -> list[tuple]:
    options: dict = {"engine": engine}
    if engine == "transformers":
        options["batch_size"] = hf_batch
    else:
        options["dtype"] = vllm_dtype
    teacher = build_teacher("embedded", options)
    t0 = time.perf_counter()
    await teacher.complete(prompts(2, 8))  # engine start + warm-up
    start_s = time.perf_counter() - t0
    rows = []
    for n in sizes:
        t0 = time.perf_counter()
        out = await teacher.complete(prompts(n, max_tokens))
        wall = time.perf_counter() - t0
        done = [c for c in out if isinstance(c, Completion)]
        tokens = sum(c.completion_tokens for c in done)
        rows.append((engine, n, len(done), tokens, wall, tokens / wall, start_s))
    await teacher.aclose()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engines", default="vllm,transformers")
    ap.add_argument("--sizes", default="16,64")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--hf-batch-size", type=int, default=16)
    ap.add_argument(
        "--vllm-dtype",
        default="auto",
        help="auto (float32 on an x86 CPU without native bf16), bfloat16 or float32",
    )
    ap.add_argument("--json", action="store_true", help="print the rows as one JSON line at the end")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    folder = ensure_safetensors()
    print(f"model folder: {folder} (ready in {time.perf_counter() - t0:.1f}s)")
    sizes = [int(x) for x in args.sizes.split(",")]
    rows = []
    for engine in args.engines.split(","):
        rows += asyncio.run(
            bench(engine.strip(), sizes, args.max_tokens, args.hf_batch_size, args.vllm_dtype)
        )
    print(f"\nmax_tokens={args.max_tokens}, greedy, {os.cpu_count()} CPUs")
    print(f"{'engine':<13}{'prompts':>8}{'ok':>5}{'out tok':>9}{'wall s':>9}{'tok/s':>9}{'start s':>9}")
    for engine, n, ok, tokens, wall, rate, start_s in rows:
        print(f"{engine:<13}{n:>8}{ok:>5}{tokens:>9}{wall:>9.1f}{rate:>9.1f}{start_s:>9.1f}")
    if args.json:
        keys = ("engine", "prompts", "ok", "tokens", "wall_s", "tokens_per_s", "load_s")
        print(json.dumps([dict(zip(keys, r, strict=True)) for r in rows]))


if __name__ == "__main__":  # vLLM's CPU engine starts its worker by spawn: keep the guard
    main()
