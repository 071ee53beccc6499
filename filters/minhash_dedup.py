"""`minhash_dedup`: drop near-duplicates: records whose shingle set has a Jaccard similarity of at least
`threshold` with an earlier record's: earlier in this run (record order) or in the store's earlier runs.

Scoring. Texts are normalised as `exact_dedup.normalise` does (NFKC, lower case, every run of non-alphanumerics
one space) and cut into word 5-grams (`shingle`, `ngram`). Each record gets a MinHash signature of `num_perm`
32-bit values; LSH cuts it into b bands of r rows, the most rows for which a pair at Jaccard = `lsh_threshold`
still shares a band with probability ≥ 0.99 (128 permutations: 0.7 → 32 × 4, 0.8 → 21 × 6). Records sharing
a band are candidates; a record scores its highest Jaccard to an earlier candidate (exact, from the two
shingle sets, when `verify`; else the signatures' estimate) and names it in `duplicate_of`; the first of a
cluster scores 0. In a bucket of many records each is paired with its `_WINDOW` nearest predecessors.

Thresholds. `threshold` only changes decisions and may be anything ≥ `lsh_threshold`: every pair from there up
is a candidate, so re-thresholding hashes nothing again. Verifying is the default because a 128-permutation
estimate has a standard error of 0.035 at J = 0.8: deciding on it loses about 2% of the pairs at or above 0.8
and drops about 1% below it; the exact Jaccard of the candidate pairs costs a few µs each.

Engine: measured whole filter against whole filter with datasketch (`MinHash.bulk` + `MinHashLSH`, same
shingles and the same exact check) by benchmarks/bench_dedup.py; the figures are in
benchmarks/results/dedup.json and the README. Word 5-grams, not characters: 29 shingles a record
instead of ~210, several times faster; character 5-grams forgive a replaced word more (Jaccard 0.90, not 0.72, for one word in 35),
so `shingle: char` suits short texts. Here everything is numpy over the batch: one NFKC/lower pass over the
joined texts, code points to an alphanumeric mask, word and n-gram hashes as differences of a polynomial
prefix sum mod 2^64 with a splitmix64 finaliser, then per permutation `a·x + b mod 2^32` over (width × texts)
blocks of similar-length texts, min-reduced down the columns. rensa's Rust kernel is faster on the
MinHash step alone, but its signatures reach numpy only through a 20 µs-a-record list conversion and its
algorithm changes between releases (0.5 rejects 0.4's sketches), while ours are persisted: no new dependency.

Persistence. With `Context.cache_dir` set, signatures are kept under `cache_dir/minhash_dedup/<tag>/` in .npy
shards keyed by the BLAKE2b-128 digest of the raw text, so any pass or run holding the same text reuses them;
the tag names the shingling, the permutation count and the hashing version (`_ALGO`).
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import logging
import os
import time
import unicodedata
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field, ValidationInfo, field_validator

from filters.base import Context, Filter, FilterParams, Row, Scored

log = logging.getLogger(__name__)

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
SIG = npt.NDArray[np.uint32]

_ALGO = "m1"  # bump when hashing changes: it names the signature cache
_WINDOW = 16  # in a large LSH bucket, each record is compared with its nearest predecessors only
_RECALL_AT_LSH_THRESHOLD = 0.99
_CHUNK_CHARS = 1 << 20  # texts hashed per numpy pass (keeps temporaries in cache)
_CHUNK_SHINGLES = 1 << 16  # shingles per MinHash block
_M64 = (1 << 64) - 1
_BASE = 0x9E3779B97F4A7C15  # odd, so invertible mod 2^64


class MinhashDedupParams(FilterParams):
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations (signature length).")
    shingle: Literal["word", "char"] = Field("word", description="Shingles of words or of characters.")
    ngram: int = Field(5, ge=1, le=64, description="Words (or characters) per shingle.")
    lsh_threshold: float = Field(
        0.7, gt=0, lt=1, description="Pairs at or above this Jaccard become candidates (p ≥ 0.99)."
    )
    verify: bool = Field(True, description="Score candidates by exact Jaccard rather than the estimate.")
    threshold: float = Field(0.8, ge=0, le=1, description="Drop a record whose score reaches this.")
    across_runs: bool = Field(True, description="Also compare with the records of the store's earlier runs.")

    @field_validator("threshold")
    @classmethod
    def _at_least_lsh(cls, v: float, info: ValidationInfo) -> float:
        lsh = info.data.get("lsh_threshold")
        if lsh is not None and v < lsh:
            raise ValueError(
                f"must be ≥ lsh_threshold ({lsh:g}): the LSH finds pairs from lsh_threshold up; "
                f"lower lsh_threshold too (that recomputes the bands)"
            )
        return v


# ---------------------------------------------------------------------------------------------- hashing


def _splitmix(n: int, seed: int) -> U64:
    """n deterministic 64-bit constants (splitmix64), stable across numpy versions."""
    out, x = [], seed
    for _ in range(n):
        x = (x + 0x9E3779B97F4A7C15) & _M64
        z = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
        out.append(z ^ (z >> 31))
    return np.array(out, dtype=np.uint64)


def _mix(h: U64) -> U64:
    """splitmix64's finaliser, in place."""
    h ^= h >> np.uint64(30)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(27)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(31)
    return h


class _Powers:
    """BASE^i and BASE^-i mod 2^64, grown on demand (both replaced at once: a reader never sees one short)."""

    tables: tuple[U64, U64] = (np.ones(1, dtype=np.uint64), np.ones(1, dtype=np.uint64))

    @classmethod
    def upto(cls, n: int) -> tuple[U64, U64]:
        pw, inv = cls.tables
        while pw.size < n:
            m = pw.size
            step, istep = pow(_BASE, m, 1 << 64), pow(pow(_BASE, -1, 1 << 64), m, 1 << 64)
            pw = np.concatenate([pw, pw * np.uint64(step)])
            inv = np.concatenate([inv, inv * np.uint64(istep)])
            cls.tables = (pw, inv)
        return pw, inv


@cache
def _alnum_bmp() -> npt.NDArray[np.bool_]:
    return np.array([chr(i).isalnum() for i in range(0x10000)], dtype=bool)


def _alnum(cp: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
    """`str.isalnum` of each code point (ASCII text is lower-cased already: a-z and 0-9)."""
    if cp.dtype == np.uint8:
        return np.asarray((cp - np.uint8(97) < 26) | (cp - np.uint8(48) < 10), dtype=bool)
    mask = _alnum_bmp()[np.minimum(cp, 0xFFFF)]
    astral = cp > 0xFFFF
    if astral.any():
        mask[astral] = [chr(c).isalnum() for c in cp[astral].tolist()]
    return mask


def _codepoints(texts: Sequence[str]) -> npt.NDArray[Any]:
    """The texts NFKC-folded and lower-cased (as `exact_dedup.normalise`), joined by NUL, as code points."""
    joined = "\x00".join(texts)
    if joined.count("\x00") != len(texts) - 1:  # a NUL inside a text is a separator like any other
        joined = "\x00".join(t.replace("\x00", " ") for t in texts)
    big = unicodedata.normalize("NFKC", joined).lower()
    if big.isascii():
        return np.frombuffer(big.encode("ascii"), dtype=np.uint8)
    return np.frombuffer(big.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def _spans(values: U64, starts: I64, ends: I64) -> U64:
    """Polynomial hash of values[s:e] for each span, from one prefix sum: position-independent."""
    pw, inv = _Powers.upto(values.size + 1)
    prefix = np.zeros(values.size + 1, dtype=np.uint64)
    np.multiply(values, pw[: values.size], out=prefix[1:])
    np.cumsum(prefix[1:], out=prefix[1:])
    out: U64 = (prefix[ends] - prefix[starts]) * inv[starts]
    return out


def _units(texts: Sequence[str], shingle: str) -> tuple[U64, I64]:
    """What shingles are made of, for each text: hashed words, or the characters of the normalised text."""
    cp = _codepoints(texts)
    alnum = _alnum(cp)
    edges = np.flatnonzero(np.diff(alnum, prepend=False, append=False))
    starts, ends = edges[0::2], edges[1::2]  # alternate: a word starts, the word ends
    seps = np.flatnonzero(cp == 0)
    if shingle == "word":
        units = _mix(_spans(cp.astype(np.uint64), starts, ends))
        offsets = np.concatenate([[0], np.searchsorted(starts, seps), [starts.size]])
        return units, offsets.astype(np.int64)
    # characters: alphanumerics plus one space between two words of the same text
    keep = alnum.copy()
    word_text = np.searchsorted(seps, starts)
    inner = ends[:-1][word_text[:-1] == word_text[1:]]
    keep[inner] = True
    chars = np.where(alnum, cp, 32)[keep].astype(np.uint64)
    kept_before_sep = np.cumsum(keep)[seps] if seps.size else np.zeros(0, dtype=np.int64)
    offsets = np.concatenate([[0], kept_before_sep, [chars.size]])
    return chars, offsets.astype(np.int64)


def shingle_hashes(texts: Sequence[str], shingle: str = "word", n: int = 5) -> tuple[U64, I64]:
    """64-bit hashes of each text's n-grams, in order, and each text's offsets into them. The n-gram starting
    at word (or character) p of text t is hash p - offsets[t]; a text shorter than n is one shingle, the
    empty text included. Words are `exact_dedup.normalise(text).split()` (tests hold the two equal)."""
    hashes, offsets = [], [np.zeros(1, dtype=np.int64)]
    ends_at = np.cumsum(np.fromiter(map(len, texts), dtype=np.int64, count=len(texts)) + 1)
    done, i = 0, 0
    while i < len(texts):  # blocks of about _CHUNK_CHARS characters
        j = max(i + 1, int(np.searchsorted(ends_at, ends_at[i] + _CHUNK_CHARS)))
        units, off = _units(texts[i:j], shingle)
        counts = np.diff(off)
        per_text = np.maximum(counts - n + 1, 1)
        sh_off = np.concatenate([[0], np.cumsum(per_text)])
        starts = np.arange(sh_off[-1], dtype=np.int64) - np.repeat(sh_off[:-1] - off[:-1], per_text)
        ends = np.minimum(starts + n, np.repeat(off[1:], per_text))
        h = _spans(units, starts, ends)
        h += np.uint64(n)
        hashes.append(_mix(h))
        offsets.append(sh_off[1:] + done)
        done += int(sh_off[-1])
        i = j
    return np.concatenate(hashes) if hashes else np.zeros(0, np.uint64), np.concatenate(offsets)


@cache
def _permutations(k: int) -> tuple[SIG, SIG]:
    c = _splitmix(2 * k, seed=0x6D696E68617368)
    a = ((c[:k] >> np.uint64(32)) | np.uint64(1)).astype(np.uint32)
    b = (c[k:] & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    return a, b


def signatures(texts: Sequence[str], num_perm: int = 128, shingle: str = "word", ngram: int = 5) -> SIG:
    """MinHash signatures, one row of `num_perm` uint32 per text: min over shingles of a·x + b mod 2^32.

    Texts go shortest first in blocks of a fixed shingle budget, each a (width, texts) matrix whose short
    columns repeat their text's last shingle (which leaves a minimum as it is): three flat passes and a
    column minimum per permutation, no per-text reduction."""
    g, off = shingle_hashes(texts, shingle, ngram)
    x = (g >> np.uint64(32)).astype(np.uint32)
    a, b = _permutations(num_perm)
    counts = np.diff(off)
    order = np.argsort(counts, kind="stable")
    widths = counts[order].tolist()
    by_width = np.empty((num_perm, len(texts)), dtype=np.uint32)
    r0 = 0
    while r0 < len(texts):  # the most texts from r0 on whose block (widest × texts) fits the budget
        r1 = r0 + max(1, bisect.bisect_right(range(1, len(texts) - r0 + 1), _CHUNK_SHINGLES,
                                             key=lambda m: widths[r0 + m - 1] * m))  # fmt: skip
        block = order[r0:r1]
        width = widths[r1 - 1]
        cols = np.minimum(np.arange(width)[:, None], counts[block][None, :] - 1)
        xs = x[off[block][None, :] + cols]
        tmp = np.empty_like(xs)
        for p in range(num_perm):
            np.multiply(xs, a[p], out=tmp)
            np.add(tmp, b[p], out=tmp)
            np.minimum.reduce(tmp, axis=0, out=by_width[p, r0:r1])
        r0 = r1
    sig = np.empty((len(texts), num_perm), dtype=np.uint32)
    sig[order] = by_width.T
    return sig


# -------------------------------------------------------------------------------------------------- LSH


def bands(lsh_threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows): the most rows a band can have while a pair at `lsh_threshold` is still found with
    probability ≥ 0.99 (fewer candidates below the threshold)."""
    best = (num_perm, 1)
    for r in range(1, num_perm + 1):
        b = num_perm // r
        if 1 - (1 - lsh_threshold**r) ** b >= _RECALL_AT_LSH_THRESHOLD:
            best = (b, r)
    return best


def candidates(sig: SIG, b: int, r: int, first: int = 0) -> tuple[I64, I64]:
    """Pairs (i, j), i < j and j ≥ first, of rows sharing at least one band; unique. In a bucket of many rows,
    each row is paired with its `_WINDOW` nearest predecessors."""
    n = sig.shape[0]
    if n < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    bits = (n - 1).bit_length()
    low = np.uint64((1 << bits) - 1)
    mult = _splitmix(r + b, seed=0x6C7368)
    keys = np.zeros((n, b), dtype=np.uint64)
    for t in range(r):
        keys += sig[:, t : b * r : r].astype(np.uint64) * mult[t]
    keys += mult[r:][None, :]
    _mix(keys)
    keys &= ~low
    keys |= np.arange(n, dtype=np.uint64)[:, None]  # within a bucket, sorted keys are in record order
    found: list[I64] = []
    for band in range(b):
        s = np.sort(keys[:, band])
        hi, lo = s >> np.uint64(bits), (s & low).astype(np.int64)
        same = np.zeros(n, dtype=bool)
        np.equal(hi[1:], hi[:-1], out=same[1:])
        pos, d = np.flatnonzero(same), 1
        if first:
            pos = pos[lo[pos] >= first]  # pairs within earlier runs are never scored
        while pos.size and d <= _WINDOW:
            found.append(lo[pos - d] * n + lo[pos])
            pos = pos[same[pos - d]]
            d += 1
    if not found:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    pairs = _unique(np.concatenate(found))
    return pairs // n, pairs % n


def _unique(x: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Sorted unique values (np.unique's hash table is slower than a SIMD sort here)."""
    x = np.sort(x)
    return x[np.concatenate([[True], x[1:] != x[:-1]])] if x.size else x


def estimate(sig: SIG, i: I64, j: I64) -> npt.NDArray[np.float64]:
    """The signatures' estimate of each pair's Jaccard: the share of equal values."""
    out = np.empty(i.size, dtype=np.float64)
    for c in range(0, i.size, 8192):
        out[c : c + 8192] = np.count_nonzero(sig[i[c : c + 8192]] == sig[j[c : c + 8192]], axis=1)
    return out / sig.shape[1]


def exact(texts: Sequence[str], i: I64, j: I64, shingle: str = "word", n: int = 5) -> npt.NDArray[np.float64]:
    """Exact Jaccard of each pair's shingle sets (shingles hashed to 64 bits, compared on the top bits)."""
    if not i.size:
        return np.zeros(0, dtype=np.float64)
    used, local = np.unique(np.concatenate([i, j]), return_inverse=True)
    li, lj = local[: i.size], local[i.size :]
    g, off = shingle_hashes([texts[u] for u in used.tolist()], shingle, n)
    rbits = max(1, (used.size - 1).bit_length())
    hbits = 64 - rbits
    owner = np.repeat(np.arange(used.size, dtype=np.uint64), np.diff(off))
    keys = _unique((owner << np.uint64(hbits)) | (g >> np.uint64(rbits)))  # sorted, one per (text, shingle)
    set_start = np.searchsorted(keys, np.arange(used.size, dtype=np.uint64) << np.uint64(hbits))
    size = np.diff(set_start, append=keys.size)
    low = np.uint64((1 << hbits) - 1)
    out = np.empty(i.size, dtype=np.float64)
    for c in range(0, i.size, 65536):
        a, b = li[c : c + 65536], lj[c : c + 65536]
        lens = size[a]
        po = np.concatenate([[0], np.cumsum(lens)])
        elem = np.arange(po[-1], dtype=np.int64) - np.repeat(po[:-1] - set_start[a], lens)
        query = (np.repeat(b.astype(np.uint64), lens) << np.uint64(hbits)) | (keys[elem] & low)
        at = np.minimum(np.searchsorted(keys, query), keys.size - 1)
        inter = np.add.reduceat((keys[at] == query).astype(np.int64), po[:-1])
        out[c : c + 65536] = inter / (size[a] + size[b] - inter)
    return out


# -------------------------------------------------------------------------------------- signature cache


class SignatureCache:
    """Signatures by text digest, in .npy shards: `<stem>.sigs.npy` then `<stem>.keys.npy` (written last, so a
    shard without keys is unfinished and ignored). Signatures are memory-mapped, read only where looked up;
    more than MAX_SHARDS shards are merged into one when the cache is opened."""

    MAX_SHARDS = 16

    def __init__(self, folder: Path | None, num_perm: int):
        self.folder, self.num_perm = folder, num_perm
        self._sigs: list[SIG] = []
        keys = [np.zeros((0, 2), dtype=np.uint64)]
        if folder is not None and folder.is_dir():
            shards = []
            for p in sorted(folder.glob("*.keys.npy")):
                sigs = Path(str(p)[: -len(".keys.npy")] + ".sigs.npy")
                if not sigs.exists():  # its signatures are still on the way (copied from a worker): absent
                    continue
                shards.append(p)
                keys.append(np.load(p))
                self._sigs.append(np.load(sigs, mmap_mode="r"))
            if len(shards) > self.MAX_SHARDS:
                merged = self._write(np.concatenate(keys), np.concatenate(self._sigs))
                self._sigs = [np.load(merged, mmap_mode="r")]
                for p in shards:
                    Path(str(p)[: -len(".keys.npy")] + ".sigs.npy").unlink(missing_ok=True)
                    p.unlink(missing_ok=True)
        self._keys = np.concatenate(keys)
        self._starts = np.cumsum([0] + [len(s) for s in self._sigs])  # where each shard's rows begin
        self._order = np.argsort(self._keys[:, 0], kind="stable")
        self._sorted = self._keys[self._order, 0]

    def lookup(self, keys: U64) -> tuple[npt.NDArray[np.bool_], SIG]:
        """For each (n, 2) key: found or not, and its signature (zeros where not found)."""
        sigs = np.zeros((len(keys), self.num_perm), dtype=np.uint32)
        if not self._sorted.size:
            return np.zeros(len(keys), dtype=bool), sigs
        at = np.minimum(np.searchsorted(self._sorted, keys[:, 0]), self._sorted.size - 1)
        row = self._order[at]
        hit = (self._sorted[at] == keys[:, 0]) & (self._keys[row, 1] == keys[:, 1])
        shard = np.searchsorted(self._starts, row, side="right") - 1
        for k, part in enumerate(self._sigs):
            mine = hit & (shard == k)
            if mine.any():
                sigs[mine] = part[row[mine] - self._starts[k]]
        return hit, sigs

    def add(self, keys: U64, sigs: SIG) -> None:
        if self.folder is not None and len(keys):
            self._write(keys, sigs)

    def _write(self, keys: U64, sigs: SIG) -> Path:
        assert self.folder is not None
        self.folder.mkdir(parents=True, exist_ok=True)
        stem = self.folder / f"{time.time_ns():x}-{os.getpid()}"
        for suffix, arr in ((".sigs.npy", sigs), (".keys.npy", keys)):
            tmp = Path(f"{stem}{suffix}.tmp")
            with tmp.open("wb") as f:
                np.save(f, arr)
            os.replace(tmp, f"{stem}{suffix}")
        return Path(f"{stem}.sigs.npy")


def digests(texts: Sequence[str]) -> U64:
    """(n, 2) uint64: the BLAKE2b-128 of each raw text, the signature cache's key."""
    raw = b"".join(
        hashlib.blake2b(t.encode("utf-8", "surrogatepass"), digest_size=16).digest() for t in texts
    )
    return np.frombuffer(raw, dtype=np.uint64).reshape(-1, 2)


def cached_signatures(
    texts: Sequence[str], params: MinhashDedupParams, cache_dir: Path | None
) -> tuple[SIG, dict[str, Any]]:
    """Signatures of all texts: from the cache where it has them, computed (and added) where not."""
    if cache_dir is None or not texts:
        sig = signatures(texts, params.num_perm, params.shingle, params.ngram)
        return sig, {"texts": len(texts), "computed": len(texts), "reused": 0}
    tag = f"{params.shingle}{params.ngram}-p{params.num_perm}-{_ALGO}"
    store = SignatureCache(cache_dir / "minhash_dedup" / tag, params.num_perm)
    keys = digests(texts)
    _, uniq, inverse = np.unique(keys[:, 0], return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)  # uniq: the first text holding each key (64 bits tell texts apart here)
    hit, sigs = store.lookup(keys[uniq])
    todo = np.flatnonzero(~hit)
    if todo.size:
        fresh = signatures(
            [texts[u] for u in uniq[todo].tolist()], params.num_perm, params.shingle, params.ngram
        )
        sigs[todo] = fresh
        store.add(keys[uniq[todo]], fresh)
    stats = {"texts": len(texts), "computed": int(todo.size), "reused": int(hit.sum())}
    return sigs[inverse], stats


def precompute(rows: list[Row], params: MinhashDedupParams, folder: Path) -> None:
    """The signatures of the records' texts, into ``folder``'s signature cache (the executor's hook)."""
    cached_signatures([r.text for r in rows], params, folder)


# ----------------------------------------------------------------------------------------------- filter


def _score_sync(
    rows: list[Row], earlier: list[tuple[str, str]], params: MinhashDedupParams, cache_dir: Path | None
) -> tuple[list[Scored], dict[str, Any]]:
    texts = [t for _, t in earlier] + [r.text for r in rows]
    names = [w for w, _ in earlier] + [r.id for r in rows]
    first_row = len(earlier)
    t0 = time.perf_counter()
    sig, stats = cached_signatures(texts, params, cache_dir)
    b, r = bands(params.lsh_threshold, params.num_perm)
    i, j = candidates(sig, b, r, first=first_row)
    est = estimate(sig, i, j)
    jac = exact(texts, i, j, params.shingle, params.ngram) if params.verify else est
    order = np.lexsort((i, -jac, j))  # per record: the most similar, then the earliest
    i, j, jac, est = i[order], j[order], jac[order], est[order]
    head = np.flatnonzero(np.concatenate([[True], j[1:] != j[:-1]])) if j.size else np.zeros(0, np.int64)
    best = {int(j[h]): (int(i[h]), float(jac[h]), float(est[h])) for h in head}
    out = []
    for k, row in enumerate(rows, start=first_row):
        if k not in best:
            out.append(Scored(row.id, 0.0))
            continue
        other, value, guess = best[k]
        detail: dict[str, Any] = {"duplicate_of": names[other], "estimated_jaccard": round(guess, 4)}
        if params.verify:
            detail["jaccard"] = round(value, 4)
        out.append(Scored(row.id, value, detail))
    stats.update(bands=b, rows=r, candidate_pairs=int(i.size), seconds=round(time.perf_counter() - t0, 3))
    return out, stats


async def score(rows: list[Row], params: MinhashDedupParams, ctx: Context) -> list[Scored]:
    earlier = ctx.earlier_texts() if params.across_runs else []
    out, stats = await asyncio.to_thread(_score_sync, rows, earlier, params, ctx.cache_dir)
    ctx.work["minhash_dedup"] = stats
    log.info(
        "minhash_dedup: %d texts (%d of earlier runs), signatures %d computed / %d reused, %d×%d bands, "
        "%d candidate pairs, %.2f s",
        stats["texts"], len(earlier), stats["computed"], stats["reused"], stats["bands"], stats["rows"],
        stats["candidate_pairs"], stats["seconds"],
    )  # fmt: skip
    return out


def decide(s: Scored, params: MinhashDedupParams) -> tuple[bool, str | None]:
    if (s.score or 0.0) >= params.threshold:
        return False, "near duplicate"
    return True, None


FILTER = Filter(
    slug="minhash_dedup",
    summary="Drop near-duplicates (MinHash + LSH over word 5-grams, exact Jaccard ≥ threshold), across runs.",
    params=MinhashDedupParams,
    code_version="m1",
    score=score,
    decide=decide,
    thresholds=("threshold",),
    set_level=True,
    precompute=precompute,
)
