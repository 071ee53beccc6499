"""Near-duplicate dedup: `filters.minhash_dedup` against datasketch (and rensa, when installed), side by side.

    python benchmarks/bench_dedup.py [--n 50000] [--repeats 3] [--write-readme]

The corpus is generated here: ~200-character records of Zipf-distributed synthetic words, a fifth of them
planted near-duplicates of an earlier record (surface changes, words added or cut at either end, words
replaced inside), each with its exact word-5-gram Jaccard to its source measured in Python. The ground
truth for precision is every record's exact highest Jaccard to any earlier record, from an inverted index.

Figures, medians of --repeats runs on every side, wall-clock and process CPU (the box is shared: CPU time is
what a run was given, wall-clock includes waiting for it):
  signatures + LSH   records/s of hashing, MinHash at 128 permutations and banding (the target: 50,000/s)
  whole filter       records/s of the filter's scoring pass as `factory filter` runs it on a new store (text
                     digests, signatures written to a fresh signature cache, LSH, estimates, exact
                     verification), then its decision at 0.8
  recall             planted records with exact Jaccard ≥ 0.8 to their source that are dropped at 0.8
  precision          dropped records whose exact highest Jaccard to an earlier record is ≥ 0.8
Peers, whole filter against whole filter on the same records: the same word 5-gram shingles (Python: normalise,
split, set), the library's MinHash on its fast path (datasketch `MinHash.bulk`, rensa `from_token_sets`) at 128
permutations, its LSH with the same bands (each record queried, then inserted), and the same verification: the
exact Jaccard of each candidate's shingle sets, dropped at 0.8.
Writes benchmarks/results/dedup.json (with the date, load average and versions); --write-readme also rewrites
the README blocks quoting it (benchmarks/figures.py). Exits non-zero when our rate (CPU), recall or
precision misses its target.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _results

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
    """The whole scoring pass as `factory filter` runs it on a store that has no signatures yet (each run
    gets a fresh signature cache, which it fills), then `decide` at the threshold."""
    params = mh.MinhashDedupParams(verify=verify, lsh_threshold=LSH_THRESHOLD, threshold=THRESHOLD)
    rows = [mh.Row(str(k), "s", "x", 0, t, {}) for k, t in enumerate(texts)]

    def run():  # type: ignore[no-untyped-def]
        with tempfile.TemporaryDirectory(prefix="bench-dedup-") as cache:
            scored, _ = mh._score_sync(rows, [], params, Path(cache))
            return np.array([not mh.decide(s, params)[0] for s in scored])

    dropped, wall, cpu = timed(run, repeats)
    return {"wall": wall, "cpu": cpu, "dropped": dropped}


def verified(sets: list[set[str]], k: int, hits) -> bool:  # type: ignore[no-untyped-def]
    """The same verification as ours: the exact Jaccard of the candidates' shingle sets, ≥ the threshold."""
    s = sets[k]
    return any(len(s & sets[h]) >= THRESHOLD * len(s | sets[h]) for h in hits)


def index_and_verify(sets: list[set[str]], sketches, lsh) -> np.ndarray:  # type: ignore[no-untyped-def]
    """A peer's pass: each record asks the index for earlier ones (verified as ours are), then joins it."""
    dropped = np.zeros(len(sets), dtype=bool)
    for k, m in enumerate(sketches):
        dropped[k] = verified(sets, k, lsh.query(m))
        lsh.insert(k, m)
    return dropped


def datasketch_peer(texts: list[str], repeats: int) -> dict:
    from datasketch import MinHash, MinHashLSH

    b, r = mh.bands(LSH_THRESHOLD, NUM_PERM)

    def run():  # type: ignore[no-untyped-def]
        sets = [shingle_set(t) for t in texts]
        sigs = MinHash.bulk([[g.encode() for g in s] for s in sets], num_perm=NUM_PERM)
        return index_and_verify(sets, sigs, MinHashLSH(num_perm=NUM_PERM, params=(b, r)))

    dropped, wall, cpu = timed(run, repeats)
    return {"wall": wall, "cpu": cpu, "dropped": dropped}


def rensa_peer(texts: list[str], repeats: int) -> dict | None:
    try:
        from rensa import RMinHash, RMinHashLSH
    except ImportError:
        return None
    b, _ = mh.bands(LSH_THRESHOLD, NUM_PERM)

    def run():  # type: ignore[no-untyped-def]
        sets = [shingle_set(t) for t in texts]
        sketches = RMinHash.from_token_sets([list(s) for s in sets], num_perm=NUM_PERM, seed=42)
        return index_and_verify(
            sets, sketches, RMinHashLSH(threshold=LSH_THRESHOLD, num_perm=NUM_PERM, num_bands=b)
        )

    dropped, wall, cpu = timed(run, repeats)
    return {"wall": wall, "cpu": cpu, "dropped": dropped}


def python_shingling(texts: list[str], repeats: int) -> dict:
    _, wall, cpu = timed(lambda: [shingle_set(t) for t in texts], repeats)
    return {"wall": wall, "cpu": cpu}


def one_word_jaccard(shingle: str, ngram: int) -> float:
    """The exact Jaccard of a ~200-character text and the same text with one middle word replaced."""
    words = corpus(40, seed=11)[0][0].rstrip(".").split()
    other = list(words)
    other[len(words) // 2] = "zzzzzz"
    texts = [" ".join(words), " ".join(other)]
    return float(mh.exact(texts, np.array([0]), np.array([1]), shingle, ngram)[0])


# ------------------------------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--write-readme", action="store_true", help="rewrite the README blocks quoting the results"
    )
    a = ap.parse_args()
    ctx = _results.context(["numpy", "datasketch", "rensa"])
    texts, source = corpus(a.n)
    sets, best = truth(texts)
    b, r = mh.bands(LSH_THRESHOLD, NUM_PERM)

    core = ours_core(texts, a.repeats)
    runs: list[tuple[str, str, dict]] = [
        ("ours", "signatures + LSH", core),
        ("ours", "whole filter (verify, the default)", ours_filter(texts, a.repeats, verify=True)),
        ("ours", "whole filter (verify: false)", ours_filter(texts, a.repeats, verify=False)),
        ("Python", "shingling only (normalise, split, 5-gram set)", python_shingling(texts, a.repeats)),
        ("datasketch", "whole filter (shingling, MinHash.bulk, MinHashLSH, exact verification)",
         datasketch_peer(texts, a.repeats)),
    ]  # fmt: skip
    rp = rensa_peer(texts, a.repeats)
    if rp is not None:
        runs.append(
            ("rensa", "whole filter (shingling, from_token_sets, RMinHashLSH, exact verification)", rp)
        )
    methods, misses = [], []
    for name, what, m in runs:
        q = quality(m["dropped"], source, sets, best) if "dropped" in m else {}
        methods.append({"method": name, "what": what, "records": a.n, "runs": a.repeats,
                        "wall_s": round(m["wall"], 4), "cpu_s": round(m["cpu"], 4), **q})  # fmt: skip
        if what.startswith("whole filter (verify,"):
            if q["recall"] < TARGET_RECALL:
                misses.append(f"recall {q['recall']:.4f} < {TARGET_RECALL}")
            if q["precision"] < TARGET_PRECISION:
                misses.append(f"precision {q['precision']:.4f} < {TARGET_PRECISION}")
    if a.n / core["cpu"] < TARGET_RATE:
        misses.append(f"signatures + LSH: {a.n / core['cpu']:,.0f} records/s (CPU) < {TARGET_RATE:,}")

    shingles = []
    for shingle, ngram in (("word", 5), ("char", 5), ("char", 9)):
        m = ours_core(texts, a.repeats, shingle, ngram)
        per = float(np.mean(np.diff(mh.shingle_hashes(texts[:1000], shingle, ngram)[1])))
        shingles.append({"shingle": shingle, "ngram": ngram, "per_record": round(per, 1),
                         "cpu_s": round(m["cpu"], 4), "one_word_jaccard": round(one_word_jaccard(shingle, ngram), 4)})  # fmt: skip

    data = {
        "records": a.n, "runs": a.repeats, "chars": round(float(np.mean([len(t) for t in texts])), 1),
        "ngram": NGRAM, "num_perm": NUM_PERM, "bands": b, "rows": r, "lsh_threshold": LSH_THRESHOLD,
        "threshold": THRESHOLD, "planted": int(sum(s >= 0 for s in source)),
        "planted_near": int(sum(1 for k, s in enumerate(source) if s >= 0 and 0.75 <= best[k] < 0.85)),
        "methods": methods, "shingles": shingles, "missed": misses,
    }  # fmt: skip
    print(f"written: {_results.save('dedup', ctx, data)}")
    import figures

    figures.show("dedup-table", a.write_readme)
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
