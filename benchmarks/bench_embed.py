"""Embedding filters: near-duplicate search, diversity selection and MiniLM encoding, each beside its peer.

    python benchmarks/bench_embed.py [--n 100000] [--peer-n 50000] [--repeats 3] [--write-readme]
    python benchmarks/bench_embed.py --encoding-only [--sentences 512] [--repeats 5] [--write-readme]

Writes benchmarks/results/embed.json and embed_encoding.json (with the date, load average and versions);
--write-readme also rewrites the README blocks quoting them (benchmarks/figures.py). Exits non-zero when a
target is missed. Every side is timed as the median of --repeats runs on the same input; nothing is
extrapolated.

  dedup      `embed_dedup`'s search (cells, the default above 20,000 vectors) over unit vectors of dim 384:
             2,000 topics (cosine about 0.5 within one) and 5% of records planted after a random earlier one
             at a cosine drawn from [0.8, 1); also over vectors uniform on the sphere (the hard case for cells).
             Target: ≤ 10 s for --n (100,000) vectors; recall at 0.95 ≥ 0.99. Recall: on --recall-rows rows
             drawn at random, the exact largest cosine to an earlier row, and whether the search found it
             (rows whose truth is ≥ 0.95 and ≥ 0.9); and over all planted records, whether it found the
             planted pair's cosine (or a closer earlier record).
             Side by side on the first --peer-n vectors: sentence-transformers' `util.paraphrase_mining_embeddings`
             (its documented way to mine near-duplicate pairs from embeddings; top_k 10, max_pairs 10 per
             vector, so no pair at or above 0.8 is cut), and plain numpy brute force (every earlier pair, BLAS
             products of 1,024-row blocks). Agreement: the records each would drop at 0.95.
  diversity  `diversity`'s k-center greedy picking --size of --div-n vectors (exact), against the plain greedy
             (one matrix-vector product over all records per pick) picking as many.
  encoding   all-MiniLM-L6-v2 (the bundled model) on the CPU, on --sentences real English sentences (the
             Python reference manual's help topics and standard-library docstrings, cut into sentences), each
             side --repeats runs, in rotating order, after a warm-up: main's path (one `encode` call, batch 64)
             against `factory.embeddings.encode` now (its CPU batch size), batches of 128 and 256, and dynamic
             int8 quantization of the linear layers. Checks against main's vectors: cosines, the largest change,
             the pairs at ≥ 0.95 / 0.9, and the texts `embed_dedup` decides alike. Targets: within 5 % of
             main's path's time, and vectors within 1e-5. --encoding-only runs this part alone, --skip-encoding
             skips it; it writes benchmarks/results/embed_encoding.json.

The machine is a shared 2-core box: read the ratios rather than absolute times.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import _results  # noqa: E402
import numpy as np  # noqa: E402

from filters.diversity import kcenter_order  # noqa: E402
from filters.embed_dedup import earlier_neighbours  # noqa: E402
from filters.vectors import as_unit  # noqa: E402

DIM = 384
TARGET_DEDUP_S = 10.0
TARGET_DEDUP_N = 100_000
TARGET_RECALL = 0.99
FLOOR = 0.8
SAME_PATH = 1.05  # now against main's path on the CPU: the same batch size, so noise only
TOLERANCE = 1e-5  # largest change of a vector's component between batch sizes


def vectors(n: int, topics: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit vectors, the planted records and their cosine to the record they were planted after."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, DIM), dtype=np.float32)
    if topics:
        x += rng.standard_normal((topics, DIM), dtype=np.float32)[rng.integers(0, topics, n)]
    x = as_unit(x)
    m = n // 20
    dst = np.sort(rng.choice(np.arange(n // 10, n), m, replace=False))
    src = (rng.random(m) * dst).astype(np.int64)
    cos = rng.uniform(FLOOR, 1.0, m).astype(np.float32)[:, None]
    noise = rng.standard_normal((m, DIM), dtype=np.float32)
    noise -= (noise * x[src]).sum(1, keepdims=True) * x[src]
    x[dst] = cos * x[src] + np.sqrt(1 - cos**2) * as_unit(noise)
    x = as_unit(x)
    return x, dst, (x[dst] * x[src]).sum(axis=1)


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def brute_force(x: np.ndarray, block: int = 1024) -> np.ndarray:
    """The plain way: every earlier pair, in blocked BLAS products; each row's largest earlier cosine."""
    best = np.full(len(x), -np.inf, dtype=np.float32)
    for s in range(0, len(x), block):
        e = min(len(x), s + block)
        sims = x[s:e] @ x[:e].T
        sims[np.arange(e - s)[:, None] + s <= np.arange(e)[None, :]] = -np.inf
        best[s:e] = sims.max(axis=1)
    return best


def truth(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    out = np.empty(len(rows), dtype=np.float32)
    for k in range(0, len(rows), 256):
        r = rows[k : k + 256]
        sims = x[r] @ x[: r.max()].T
        sims[np.arange(r.max())[None, :] >= r[:, None]] = -np.inf
        out[k : k + 256] = sims.max(axis=1)
    return out


def paraphrase_mining(x: np.ndarray) -> np.ndarray:
    """sentence-transformers' way: mine the top pairs, then each row's largest cosine to an earlier row."""
    import torch
    from sentence_transformers import util

    pairs = util.paraphrase_mining_embeddings(torch.from_numpy(x), top_k=10, max_pairs=10 * len(x))
    best = np.full(len(x), -np.inf, dtype=np.float32)
    for score, _i, j in pairs:  # _i < j
        best[j] = max(best[j], score)
    return best


def recall(x: np.ndarray, best: np.ndarray, planted: np.ndarray, cos: np.ndarray, rows: int) -> dict:
    rng = np.random.default_rng(7)
    sample = np.sort(rng.choice(np.arange(1, len(x)), min(rows, len(x) - 1), replace=False))
    want = truth(x, sample)
    out: dict[str, float | int] = {}
    for th in (0.95, 0.9):
        pos = want >= th
        out[f"rows_{th}"] = float((best[sample][pos] >= want[pos] - 1e-5).mean()) if pos.any() else 1.0
        out[f"rows_{th}_n"] = int(pos.sum())
        high = cos >= th  # found the planted pair, or one at least as close
        out[f"planted_{th}"] = float((best[planted][high] >= cos[high] - 1e-5).mean())
        out[f"planted_{th}_n"] = int(high.sum())
    return out


def dedup(args, misses: list[str]) -> list[dict]:
    paraphrase_mining(vectors(1000, 0)[0])  # imports torch and sentence-transformers before any timing
    cases = []
    for kind, topics in (("2,000 topics", 2000), ("uniform", 0)):
        x, planted, cos = vectors(args.n, topics)
        ours, (best, _) = timed(lambda x=x: earlier_neighbours(x, FLOOR), args.repeats)
        rec = recall(x, best, planted, cos, args.recall_rows)
        m = min(args.peer_n, args.n)
        xm = np.ascontiguousarray(x[:m])
        ours_m, (best_m, _) = timed(lambda xm=xm: earlier_neighbours(xm, FLOOR), args.repeats)
        mining, best_p = timed(lambda xm=xm: paraphrase_mining(xm), args.repeats)
        brute, best_b = timed(lambda xm=xm: brute_force(xm), args.repeats)
        drop = {k: v >= 0.95 for k, v in (("ours", best_m), ("mining", best_p), ("brute", best_b))}
        cases.append({"kind": kind, "vectors": args.n, "ours_s": round(ours, 3), **rec,
                      "peer_vectors": m, "ours_peer_s": round(ours_m, 3), "mining_s": round(mining, 3),
                      "brute_s": round(brute, 3), "drops_0.95": {k: int(v.sum()) for k, v in drop.items()},
                      "same_drops_0.95": {k: int((v == drop["brute"]).sum()) for k, v in drop.items()}})  # fmt: skip
        if kind != "uniform" and args.n >= TARGET_DEDUP_N and ours > TARGET_DEDUP_S * args.n / TARGET_DEDUP_N:
            misses.append(f"dedup of {args.n:,} vectors: {ours:.2f} s > {TARGET_DEDUP_S} s")
        for what in ("rows_0.95", "planted_0.95"):
            if rec[what] < TARGET_RECALL:
                misses.append(f"dedup recall at 0.95 ({kind}, {what}): {rec[what]:.4f} < {TARGET_RECALL}")
    return cases


def naive_greedy(x: np.ndarray, picks: int) -> list[int]:
    cover = np.full(len(x), -np.inf, dtype=np.float32)
    nxt, out = int(np.argmax(x @ x.mean(axis=0))), []
    for _ in range(picks):
        out.append(nxt)
        np.maximum(cover, x @ x[nxt], out=cover)
        cover[nxt] = np.inf
        nxt = int(np.argmin(cover))
    return out


def diversity(args) -> dict:
    x = vectors(args.div_n, 2000)[0]
    ours, (order, _) = timed(lambda: kcenter_order(x, args.size), args.repeats)
    peer, same = timed(lambda: naive_greedy(x, args.size), args.repeats)
    agree = float(np.mean(np.asarray(same) == order[: args.size]))
    return {"vectors": args.div_n, "size": args.size, "ours_s": round(ours, 3), "peer_s": round(peer, 3),
            "same_picks": round(agree, 4)}  # fmt: skip


def sentences(count: int) -> list[str]:
    from pydoc_data.topics import topics

    texts = list(topics.values())
    for name in ("os", "collections", "itertools", "functools", "pathlib", "json", "re", "argparse", "logging",
                 "unittest", "asyncio", "datetime", "decimal", "statistics", "textwrap", "inspect",
                 "subprocess", "shutil", "tarfile", "zipfile", "csv", "sqlite3", "threading", "random",
                 "heapq", "bisect", "email.message", "http.client", "urllib.parse", "xml.dom.minidom"):  # fmt: skip
        mod = importlib.import_module(name)
        docs = (getattr(getattr(mod, a), "__doc__", None) for a in sorted(dir(mod)) if not a.startswith("_"))
        texts += [d for d in docs if isinstance(d, str)]
    found = re.split(r"(?<=[.!?])\s+", re.sub(r"\s+", " ", " ".join(texts)))
    keep = (
        s for s in found if 6 <= len(s.split()) <= 40 and re.fullmatch(r"[A-Z][^*=\[\]{}<>|\\>]+[.?!]", s)
    )
    out = list(dict.fromkeys(keep))
    if len(out) < count:
        raise SystemExit(f"only {len(out)} sentences found, {count} wanted")
    return out[:count]


def earlier_drops(x: np.ndarray, threshold: float) -> np.ndarray:
    """embed_dedup's rule, by brute force: a row goes when its cosine to an earlier row is ≥ threshold."""
    sims = x @ x.T
    sims[np.triu_indices(len(x))] = -np.inf
    return sims.max(axis=1) >= threshold


def agreement(ref: np.ndarray, other: np.ndarray) -> dict:
    """How far ``other``'s vectors are from ``ref``'s, and whether embed_dedup would decide the same."""
    cos = (ref * other).sum(axis=1)
    iu = np.triu_indices(len(ref), 1)
    out: dict[str, float | int] = {
        "cos_median": round(float(np.median(cos)), 4),
        "cos_min": round(float(cos.min()), 4),
        "max_abs_diff": float(np.abs(ref - other).max()),
    }
    for th in (0.9, 0.95):
        a, b = (ref @ ref.T)[iu] >= th, (other @ other.T)[iu] >= th
        da, db = earlier_drops(ref, th), earlier_drops(other, th)
        out |= {f"pairs_{th}": int(a.sum()), f"pairs_{th}_found": int((a & b).sum()),
                f"pairs_{th}_extra": int((b & ~a).sum()), f"drops_{th}": int(da.sum()),
                f"same_decisions_{th}": int((da == db).sum())}  # fmt: skip
    return out


def encoding(args) -> dict:
    """Main's path (one call, batch 64, CPU) against `factory.embeddings.encode` as it is now (its CPU batch
    size), larger batches, and dynamic int8 quantization, in an order that rotates from repeat to repeat."""
    import copy

    import torch

    from factory import embeddings

    texts = sentences(args.sentences)
    model = embeddings.load(device="cpu")

    def before() -> np.ndarray:  # main's factory.embeddings.encode before the device choice
        out = model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
                           show_progress_bar=False)  # fmt: skip
        return np.asarray(out, dtype=np.float32)

    quantized = torch.ao.quantization.quantize_dynamic(
        copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8
    )
    sides = {
        "before": before,
        "after": lambda: embeddings.encode(texts, device="cpu"),
        "batch_128": lambda: embeddings.encode(texts, device="cpu", batch_size=128),
        "batch_256": lambda: embeddings.encode(texts, device="cpu", batch_size=256),
        "int8": lambda: np.asarray(quantized.encode(texts, batch_size=embeddings.CPU_BATCH,
                                   normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)),
    }  # fmt: skip
    for fn in sides.values():  # warm up each side
        fn() if fn is not sides["before"] else model.encode(texts[:64], show_progress_bar=False)
    times: dict[str, list[float]] = {k: [] for k in sides}
    out: dict[str, np.ndarray] = {}
    names = list(sides)
    for r in range(args.repeats):  # each repeat starts one side later: every side in every position
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            out[name] = sides[name]()
            times[name].append(time.perf_counter() - start)
    words = statistics.mean(len(t.split()) for t in texts)
    return {
        "sentences": len(texts),
        "words_avg": round(words, 1),
        "threads": torch.get_num_threads(),
        "cpu_batch": embeddings.CPU_BATCH,
        "seconds": {k: round(statistics.median(v), 3) for k, v in times.items()},
        "vs_before": {k: agreement(out["before"], out[k]) for k in sides if k != "before"},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--peer-n", type=int, default=50_000, help="vectors the peers and ours are timed on")
    ap.add_argument("--div-n", type=int, default=20_000)
    ap.add_argument("--size", type=int, default=5_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--recall-rows", type=int, default=5_000)
    ap.add_argument("--sentences", type=int, default=512, help="sentences the encoding sides embed")
    ap.add_argument("--skip-encoding", action="store_true")
    ap.add_argument(
        "--encoding-only", action="store_true", help="only the encoding sides (results/embed_encoding.json)"
    )
    ap.add_argument(
        "--write-readme", action="store_true", help="rewrite the README blocks quoting the results"
    )
    args = ap.parse_args()
    import figures

    misses: list[str] = []
    if not args.encoding_only:
        ctx = _results.context(["numpy", "torch", "sentence-transformers"])
        data = {"runs": args.repeats, "dedup": dedup(args, misses), "diversity": diversity(args),
                "missed": misses}  # fmt: skip
        print(f"written: {_results.save('embed', ctx, data)}")
        figures.show("embed-table", args.write_readme)
    if not args.skip_encoding:
        ctx = _results.context(["torch", "transformers", "sentence-transformers"])
        enc, enc_missed = encoding(args), []
        if enc["seconds"]["after"] > SAME_PATH * enc["seconds"]["before"]:
            enc_missed.append(
                f"encoding: {enc['seconds']['after']} s now against {enc['seconds']['before']} s before"
            )
        if enc["vs_before"]["after"]["max_abs_diff"] > TOLERANCE:
            enc_missed.append(f"encoding: vectors moved by {enc['vs_before']['after']['max_abs_diff']:.2g}")
        print(
            f"written: {_results.save('embed_encoding', ctx, {'runs': args.repeats, **enc, 'missed': enc_missed})}"
        )
        figures.show("embed-encoding", args.write_readme)
        misses += enc_missed
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
