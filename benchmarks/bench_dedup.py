"""Near-duplicate dedup: `filters.minhash_dedup` against plain datasketch and plain rensa, side by side.

    python benchmarks/bench_dedup.py [--n 100000] [--peer-n 10000] [--repeats 3] [--json]

The corpus is generated here: ~200-character records of Zipf-distributed synthetic words, a fifth of them
planted near-duplicates of an earlier record (surface changes, words added or cut at either end, words
replaced inside), each with its exact word-5-gram Jaccard to its source measured in Python. The ground
truth for precision is every record's exact highest Jaccard to any earlier record, from an inverted index.

Figures, medians of --repeats runs, wall-clock and process CPU (the box is shared: CPU time is what a run
was given, wall-clock includes waiting for it):
  signatures + LSH   records/s of hashing, MinHash at 128 permutations and banding (the target: 50,000/s)
  whole filter       records/s of `score` (text digests, signatures, LSH, estimates, exact verification)
  recall             planted records with exact Jaccard ≥ 0.8 to their source that are dropped at 0.8
  precision          dropped records whose exact highest Jaccard to an earlier record is ≥ 0.8
Peers (Python shingling, then the library's MinHash and LSH with the same bands, each record queried before
it is inserted, its best estimate decided at 0.8) run on the first --peer-n records: datasketch is slow.
Exits non-zero when our rate (CPU), recall or precision misses its target.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from filters import minhash_dedup as mh
from filters.exact_dedup import normalise

TARGET_RATE = 50_000
TARGET_RECALL = 0.99
TARGET_PRECISION = 0.99
THRESHOLD, LSH_THRESHOLD, NUM_PERM, NGRAM = 0.8, 0.7, 128, 5


# ------------------------------------------------------------------------------------------------ corpus


def corpus(n: int, seed: int = 7) -> tuple[list[str], list[int]]:
    """n texts and, for each, the index of the record it was planted from (-1: an original)."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = sorted({"".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(30_000)})
    weights = [1 / (r + 1) ** 1.05 for r in range(len(vocab))]
    cum = np.cumsum(weights) / sum(weights)

    def words(k: int) -> list[str]:
        return [vocab[i] for i in np.searchsorted(cum, [rng.random() for _ in range(k)])]

    texts: list[str] = []
    source: list[int] = []
    originals: list[tuple[int, list[str]]] = []
    for i in range(n):
        if originals and rng.random() < 0.2:
            src, w = rng.choice(originals[-5000:])
            w = list(w)
            kind = rng.random()
            if kind < 0.25:  # surface only: case and punctuation
                t = " ".join(x.upper() if rng.random() < 0.2 else x for x in w)
                texts.append(t.replace(" ", ", ", 2) + "!")
            else:
                if kind < 0.7:  # words added or cut at the ends
                    for _ in range(rng.randint(1, 6)):
                        op = rng.randrange(4)
                        if op == 0:
                            w.insert(0, words(1)[0])
                        elif op == 1:
                            w.append(words(1)[0])
                        elif op == 2 and len(w) > 10:
                            del w[0]
                        elif len(w) > 10:
                            del w[-1]
                else:  # words replaced inside
                    for _ in range(rng.randint(1, 3)):
                        w[rng.randrange(len(w))] = words(1)[0]
                texts.append(" ".join(w).capitalize() + ".")
            source.append(src)
        else:
            w = words(rng.randint(28, 38))
            originals.append((i, w))
            texts.append(" ".join(w).capitalize() + ".")
            source.append(-1)
    return texts, source


def shingle_set(text: str, n: int = NGRAM) -> set[str]:
    w = normalise(text).split()
    if len(w) < n:
        return {" ".join(w)}
    return {" ".join(w[i : i + n]) for i in range(len(w) - n + 1)}


def truth(texts: list[str]) -> tuple[list[set[str]], np.ndarray]:
    """Shingle sets and each record's exact highest Jaccard to an earlier record (inverted index)."""
    sets = [shingle_set(t) for t in texts]
    index: dict[str, list[int]] = {}
    best = np.zeros(len(texts))
    for k, s in enumerate(sets):
        shared = Counter(i for g in s for i in index.get(g, ()))
        for i, c in shared.items():
            best[k] = max(best[k], c / (len(s) + len(sets[i]) - c))
        for g in s:
            index.setdefault(g, []).append(k)
    return sets, best


def quality(dropped: np.ndarray, source: list[int], sets: list[set[str]], best: np.ndarray) -> dict:
    planted = [
        k
        for k, s in enumerate(source)
        if s >= 0 and len(sets[k] & sets[s]) / len(sets[k] | sets[s]) >= THRESHOLD
    ]
    recall = float(np.mean(dropped[planted])) if planted else 1.0
    precision = float(np.mean(best[dropped] >= THRESHOLD)) if dropped.any() else 1.0
    return {"recall": recall, "precision": precision, "planted": len(planted), "dropped": int(dropped.sum())}


# ---------------------------------------------------------------------------------------------- methods


def timed(fn, repeats: int):  # type: ignore[no-untyped-def]
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return out, statistics.median(walls), statistics.median(cpus)


def ours_core(texts: list[str], repeats: int, shingle: str = "word", ngram: int = NGRAM) -> dict:
    """Signatures + LSH: what the 50,000 records/s target is about."""
    b, r = mh.bands(LSH_THRESHOLD, NUM_PERM)

    def run():  # type: ignore[no-untyped-def]
        sig = mh.signatures(texts, NUM_PERM, shingle, ngram)
        return mh.candidates(sig, b, r)

    _, wall, cpu = timed(run, repeats)
    return {"wall": wall, "cpu": cpu}


def ours_filter(texts: list[str], repeats: int, verify: bool) -> dict:
    """The whole `score` as a pass runs it (no signature cache), then `decide` at the threshold."""
    params = mh.MinhashDedupParams(verify=verify, lsh_threshold=LSH_THRESHOLD, threshold=THRESHOLD)
    rows = [mh.Row(str(k), "s", "x", 0, t, {}) for k, t in enumerate(texts)]
    (scored, _), wall, cpu = timed(lambda: mh._score_sync(rows, [], params, None), repeats)
    dropped = np.array([not mh.decide(s, params)[0] for s in scored])
    return {"wall": wall, "cpu": cpu, "dropped": dropped}


def datasketch_peer(texts: list[str]) -> dict:
    from datasketch import MinHash, MinHashLSH

    b, r = mh.bands(LSH_THRESHOLD, NUM_PERM)

    def run():  # type: ignore[no-untyped-def]
        lsh = MinHashLSH(num_perm=NUM_PERM, params=(b, r))
        sigs: dict[int, MinHash] = {}
        dropped = np.zeros(len(texts), dtype=bool)
        for k, t in enumerate(texts):
            m = MinHash(num_perm=NUM_PERM)
            m.update_batch([s.encode() for s in shingle_set(t)])
            hits = lsh.query(m)
            dropped[k] = bool(hits) and max(m.jaccard(sigs[h]) for h in hits) >= THRESHOLD
            sigs[k] = m
            lsh.insert(k, m)
        return dropped

    dropped, wall, cpu = timed(run, 1)
    return {"wall": wall, "cpu": cpu, "dropped": dropped}


def rensa_peer(texts: list[str]) -> dict | None:
    try:
        from rensa import RMinHash, RMinHashLSH
    except ImportError:
        return None
    b, _ = mh.bands(LSH_THRESHOLD, NUM_PERM)

    def run():  # type: ignore[no-untyped-def]
        sketches = RMinHash.from_token_sets([list(shingle_set(t)) for t in texts], num_perm=NUM_PERM, seed=42)
        lsh = RMinHashLSH(threshold=LSH_THRESHOLD, num_perm=NUM_PERM, num_bands=b)
        dropped = np.zeros(len(texts), dtype=bool)
        for k, m in enumerate(sketches):
            hits = lsh.query(m)
            dropped[k] = bool(hits) and max(m.jaccard(sketches[h]) for h in hits) >= THRESHOLD
            lsh.insert(k, m)
        return dropped

    dropped, wall, cpu = timed(run, 1)
    return {"wall": wall, "cpu": cpu, "dropped": dropped}


def rensa_kernel(texts: list[str], repeats: int) -> tuple[dict, dict] | None:
    """rensa's MinHash on our shingle hashes (no Python shingling), alone and with its matrix brought to
    numpy, which our LSH, estimates and signature cache need."""
    try:
        from rensa import RMinHash
    except ImportError:
        return None
    g, off = mh.shingle_hashes(texts, "word", NGRAM)
    offsets = off.astype(np.uint64)
    _, wall, cpu = timed(
        lambda: RMinHash.digest_matrix_from_flat_token_hashes(g, offsets, NUM_PERM, 42), repeats
    )
    _, xwall, xcpu = timed(lambda: np.array(
        RMinHash.digest_matrix_from_flat_token_hashes(g, offsets, NUM_PERM, 42).to_rows(), dtype=np.uint32
    ), 1)  # fmt: skip
    _, owall, ocpu = timed(lambda: mh.signatures(texts, NUM_PERM, "word", NGRAM), repeats)
    _, swall, scpu = timed(lambda: mh.shingle_hashes(texts, "word", NGRAM), repeats)
    return (
        {"rensa": (wall, cpu), "rensa + to numpy": (xwall, xcpu)},
        {"ours": (owall - swall, ocpu - scpu)},
    )


def python_shingling(texts: list[str]) -> dict:
    _, wall, cpu = timed(lambda: [shingle_set(t) for t in texts], 1)
    return {"wall": wall, "cpu": cpu}


def one_word_jaccard(shingle: str, ngram: int) -> float:
    """The exact Jaccard of a ~200-character text and the same text with one middle word replaced."""
    words = corpus(40, seed=11)[0][0].rstrip(".").split()
    other = list(words)
    other[len(words) // 2] = "zzzzzz"
    texts = [" ".join(words), " ".join(other)]
    return float(mh.exact(texts, np.array([0]), np.array([1]), shingle, ngram)[0])


# ------------------------------------------------------------------------------------------------- main


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--peer-n", type=int, default=10_000, help="records for the peers (datasketch is slow)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", help="also write the tables here")
    a = ap.parse_args()
    load0 = os.getloadavg()[0]
    texts, source = corpus(a.n)
    sets, best = truth(texts)
    peer_n = min(a.peer_n, a.n)
    b, r = mh.bands(LSH_THRESHOLD, NUM_PERM)

    core = ours_core(texts, a.repeats)
    ours_rate = a.n / core["cpu"]
    runs: list[tuple[str, str, int, dict]] = [
        ("ours", "signatures + LSH", a.n, core),
        ("ours", "whole filter (verify, the default)", a.n, ours_filter(texts, a.repeats, verify=True)),
        ("ours", "whole filter (verify: false)", a.n, ours_filter(texts, a.repeats, verify=False)),
        ("Python", "shingling only (normalise, split, 5-gram set)", peer_n, python_shingling(texts[:peer_n])),
        ("datasketch", "whole (shingling, MinHash, LSH, estimate ≥ 0.8)", peer_n, datasketch_peer(texts[:peer_n])),
    ]  # fmt: skip
    rp = rensa_peer(texts[:peer_n])
    if rp is not None:
        runs.append(("rensa", "whole (shingling, MinHash, LSH, estimate ≥ 0.8)", peer_n, rp))
    rows, misses = [], []
    for name, what, n, m in runs:
        q = quality(m["dropped"], source[:n], sets[:n], best[:n]) if "dropped" in m else None
        rows.append([name, what, f"{n:,}", f"{n / m['wall']:,.0f}", f"{n / m['cpu']:,.0f}",
                     f"{n / m['cpu'] / ours_rate:.3f}", f"{q['recall']:.4f} of {q['planted']:,}" if q else "",
                     f"{q['precision']:.4f} of {q['dropped']:,}" if q else ""])  # fmt: skip
        if what.startswith("whole filter (verify,"):
            assert q is not None
            if q["recall"] < TARGET_RECALL:
                misses.append(f"recall {q['recall']:.4f} < {TARGET_RECALL}")
            if q["precision"] < TARGET_PRECISION:
                misses.append(f"precision {q['precision']:.4f} < {TARGET_PRECISION}")
    if ours_rate < TARGET_RATE:
        misses.append(f"signatures + LSH: {ours_rate:,.0f} records/s (CPU) < {TARGET_RATE:,}")

    kernel_rows = []
    rk = rensa_kernel(texts[:peer_n], a.repeats)
    if rk is not None:
        for label, (wall, cpu) in {**rk[1], **rk[0]}.items():
            kernel_rows.append([label, f"{peer_n:,}", f"{peer_n / wall:,.0f}", f"{peer_n / cpu:,.0f}"])
    shingle_rows = []
    for shingle, ngram in (("word", 5), ("char", 5), ("char", 9)):
        m = ours_core(texts[:peer_n], a.repeats, shingle, ngram)
        per = float(np.mean(np.diff(mh.shingle_hashes(texts[:1000], shingle, ngram)[1])))
        shingle_rows.append([f"{shingle} {ngram}-grams", f"{per:.0f}", f"{peer_n / m['cpu']:,.0f}",
                             f"{one_word_jaccard(shingle, ngram):.2f}"])  # fmt: skip

    near = sum(1 for k, s in enumerate(source) if s >= 0 and 0.75 <= best[k] < 0.85)
    header = ["method", "what is timed", "records", "records/s (wall)", "records/s (CPU)", "÷ ours (CPU)",
              "recall (planted J ≥ 0.8)", "precision (exact J ≥ 0.8)"]  # fmt: skip
    text = (
        f"### Near-duplicate dedup: {a.n:,} records of ~{np.mean([len(t) for t in texts]):.0f} characters\n\n"
        f"Word {NGRAM}-grams, {NUM_PERM} permutations, LSH {b} bands × {r} rows (lsh_threshold "
        f"{LSH_THRESHOLD}), threshold {THRESHOLD}. Ours: median of {a.repeats} runs on all records; peers: "
        f"one run on the first {peer_n:,}. ÷ ours: CPU rate over ours' signatures + LSH.\n\n"
        + table(header, rows)
        + f"\n\nPlanted near-duplicates: {sum(s >= 0 for s in source):,}, of which {near:,} have an exact "
        f"Jaccard in [0.75, 0.85). Load average {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end, "
        f"on {os.cpu_count()} CPUs.\n\n"
        + "#### MinHash step alone (128 permutations, on our shingle hashes)\n\n"
        + table(["kernel", "records", "records/s (wall)", "records/s (CPU)"], kernel_rows)
        + "\n\n#### Shingles: speed and what one replaced word does\n\n"
        + table(
            [
                "shingles",
                "per record",
                "signatures + LSH, records/s (CPU)",
                "Jaccard after one word replaced",
            ],
            shingle_rows,
        )
        + "\n"
    )
    if misses:
        text += "\nMissed targets:\n" + "\n".join(f"- {x}" for x in misses) + "\n"
    print(text)
    if a.out:
        Path(a.out).write_text(text)
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
