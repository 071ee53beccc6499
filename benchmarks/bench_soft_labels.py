"""Bytes per answer-token that soft labels (top-k logprobs) cost in the store, and in the journal.

Two stores get the same answers through the store's own commit path, one without logprobs and one with
them packed (factory.logprobs); the difference of their file sizes (after a checkpoint) over the answer
tokens is the stored cost per token. Beside it: the packed blob alone, the journal line's base64 text, and
what the OpenAI-style JSON text of the same logprobs (``logprobs.content`` with ids as ``token_id:N``) would
take, the form the API sends, and what that text costs stored the same way (DuckDB compresses it): the
peer. Ids and logprobs are drawn at random (they compress as badly as real
ones do).

    python benchmarks/bench_soft_labels.py            # 1,000 answers of 256 tokens, k = 5 and 20
    python benchmarks/bench_soft_labels.py --answers 200 --tokens 64   # quicker

Writes benchmarks/results/soft_labels.json; README blocks render it (benchmarks/figures_soft.py).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import _results  # noqa: E402

from factory.logprobs import pack, to_float32, unpack  # noqa: E402
from factory.store import Batch, Store  # noqa: E402
from factory.store.journal import _bytes_as_text  # noqa: E402
from factory.types import TokenLogprobs  # noqa: E402

VOCAB = 49_152  # SmolLM2's vocabulary


def answer(rng: random.Random, tokens: int, k: int) -> TokenLogprobs:
    top_ids = [rng.sample(range(VOCAB), k) for _ in range(tokens)]
    top = [sorted(to_float32([-rng.expovariate(0.5) for _ in range(k)]), reverse=True) for _ in range(tokens)]
    return TokenLogprobs([t[0] for t in top_ids], top_ids, top, [p[0] for p in top])


def openai_json(lp: TokenLogprobs) -> bytes:
    """The same logprobs as an OpenAI-style ``logprobs.content`` list (what storing the API's JSON costs)."""
    assert lp.token_ids is not None and lp.top_ids is not None
    return orjson.dumps(
        [
            {
                "token": f"token_id:{t}",
                "logprob": c,
                "top_logprobs": [
                    {"token": f"token_id:{i}", "logprob": v} for i, v in zip(ids, lps, strict=True)
                ],
            }
            for t, c, ids, lps in zip(
                lp.token_ids, lp.token_logprobs, lp.top_ids, lp.top_logprobs, strict=True
            )
        ]
    )


def rows(n: int, tokens: int, blobs: list[bytes] | None) -> list[tuple]:
    text = "x" * (tokens * 4)
    return [
        (f"{i:032x}", "openai:m", "ok", '{"messages":[]}', text, "stop", 10, tokens, 1.0, None, "r",
         None if blobs is None else blobs[i])
        for i in range(n)
    ]  # fmt: skip


def store_bytes(folder: Path, name: str, batch_rows: list[tuple]) -> int:
    path = folder / f"{name}.duckdb"
    with Store(path) as st:
        for i in range(0, len(batch_rows), 500):
            st.commit(Batch(cache=batch_rows[i : i + 500]))
        st.con.execute("CHECKPOINT").fetchall()
    return path.stat().st_size


def measure(n: int, tokens: int, k: int, reps: int) -> dict[str, float]:
    rng = random.Random(k)
    answers = [answer(rng, tokens, k) for _ in range(n)]
    blobs = [pack(a) for a in answers]
    assert all(unpack(b) == a for a, b in zip(answers[:20], blobs[:20], strict=True))
    total = n * tokens
    texts = [openai_json(a) for a in answers]
    stored, stored_json = [], []
    for r in range(reps):
        with tempfile.TemporaryDirectory() as tmp:
            plain = store_bytes(Path(tmp), f"plain{r}", rows(n, tokens, None))
            soft = store_bytes(Path(tmp), f"soft{r}", rows(n, tokens, blobs))
            as_json = store_bytes(Path(tmp), f"json{r}", rows(n, tokens, texts))
        stored.append((soft - plain) / total)
        stored_json.append((as_json - plain) / total)
    t0 = time.perf_counter()
    for b in blobs:
        unpack(b)
    unpack_us = (time.perf_counter() - t0) / n * 1e6
    return {
        "k": k,
        "store_bytes_per_token": statistics.median(stored),
        "blob_bytes_per_token": sum(map(len, blobs)) / total,
        "journal_bytes_per_token": sum(len(_bytes_as_text(b)) + 2 for b in blobs) / total,
        "openai_json_bytes_per_token": sum(map(len, texts)) / total,
        "store_json_bytes_per_token": statistics.median(stored_json),
        "unpack_us_per_answer": unpack_us,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--answers", type=int, default=1000)
    ap.add_argument("--tokens", type=int, default=256, help="generated tokens per answer")
    ap.add_argument("--k", type=int, nargs="+", default=[5, 20])
    ap.add_argument("--reps", type=int, default=3, help="store pairs per k (the median is kept)")
    args = ap.parse_args()
    ctx = _results.context(["duckdb", "pyarrow"])
    results = [measure(args.answers, args.tokens, k, args.reps) for k in args.k]
    print("| k | stored packed | packed blob | journal line | JSON text | JSON text stored | ratio |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['k']} | {r['store_bytes_per_token']:.1f} | {r['blob_bytes_per_token']:.1f} | "
            f"{r['journal_bytes_per_token']:.1f} | {r['openai_json_bytes_per_token']:.1f} | "
            f"{r['store_json_bytes_per_token']:.1f} | "
            f"{r['store_json_bytes_per_token'] / r['store_bytes_per_token']:.1f}x |"
        )
    figures = {"answers": args.answers, "tokens": args.tokens, "reps": args.reps, "by_k": results}
    print("wrote", _results.save("soft_labels", ctx, figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
