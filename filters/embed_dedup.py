"""`embed_dedup`: drop records whose meaning repeats an earlier record's: the cosine similarity of their
sentence embeddings (all-MiniLM-L6-v2 by default) to any earlier record, dropped or not, is at least
``threshold``. Earlier means before it in record order, or in one of the store's earlier runs.

The score is that largest cosine (``detail.duplicate_of`` names the record), measured when it reaches
``min_similarity``; a record with no earlier record that close scores null. Any threshold at or above
``min_similarity`` is then re-derived from stored scores.

Search: up to ``EXACT_MAX`` vectors, every earlier pair is compared (blocked matrix products). Above, an
inverted-file index (spherical k-means cells, ``filters.vectors.partition``): each vector is compared with
the members of its ``probes`` nearest cells, and so with every vector that probes its own cell, in one small
matrix product per cell on a thread per core. benchmarks/bench_embed.py measures it against
sentence-transformers' ``paraphrase_mining_embeddings`` and blocked brute force on the same vectors, and the
pairs it finds against brute force (clustered vectors, like sentence embeddings, give all of them; vectors
uniform on the sphere are the hard case); figures in benchmarks/results/. faiss-cpu's IVF with the same
cells and probes was slower (its range search scans lists pair by pair), HNSW (hnswlib, usearch) minutes to build.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import TYPE_CHECKING, Literal

from pydantic import Field, ValidationInfo, field_validator

from filters.base import Context, Filter, FilterParams, Row, Scored
from filters.vectors import as_unit, embed, parallel, partition, precompute

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

EXACT_MAX = 20_000  # "auto" compares every pair up to this many vectors


class EmbedDedupParams(FilterParams):
    min_similarity: float = Field(
        0.8,
        ge=0,
        le=1,
        description="Smallest cosine recorded as a score; thresholds below it need a new pass.",
    )
    threshold: float = Field(
        0.95, ge=0, le=1, description="Drop a record whose cosine to an earlier record is at least this."
    )
    model: str | None = Field(
        None, description="A local sentence-transformers folder; default: the bundled all-MiniLM-L6-v2."
    )
    across_runs: bool = Field(True, description="Also compare with the records of the store's earlier runs.")
    search: Literal["auto", "exact", "ivf"] = Field(
        "auto",
        description=f"'exact' compares every pair; 'ivf' searches cells; 'auto': exact up to {EXACT_MAX:,}.",
    )
    probes: int = Field(
        8, ge=1, le=64, description="Cells each vector searches with 'ivf' (more: higher recall)."
    )

    @field_validator("threshold")
    @classmethod
    def _above_floor(cls, v: float, info: ValidationInfo) -> float:
        floor = info.data.get("min_similarity")
        if floor is not None and v < floor:
            raise ValueError(
                f"threshold {v} is below min_similarity {floor}: cosines under min_similarity are not "
                "measured; lower min_similarity as well (a new scoring pass)"
            )
        return v


Pairs = tuple["np.ndarray", "np.ndarray", "np.ndarray"]  # (later row, earlier row, cosine)


def _cat(parts: list[Pairs]) -> Pairs:
    import numpy as np

    if not parts:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    later, earlier, sims = zip(*parts, strict=True)
    return np.concatenate(later), np.concatenate(earlier), np.concatenate(sims)


def _first_per_row(parts: list[Pairs], n: int) -> tuple[np.ndarray, np.ndarray]:
    """For each row its largest cosine to an earlier row, and that row (ties: the earliest)."""
    import numpy as np

    best = np.full(n, -np.inf, dtype=np.float32)
    arg = np.full(n, -1, dtype=np.int64)
    later, earlier, sims = _cat(parts)
    if len(later):
        order = np.lexsort((earlier, -sims, later))  # ties: the earliest record
        later, earlier, sims = later[order], earlier[order], sims[order]
        first = np.r_[True, later[1:] != later[:-1]]
        best[later[first]] = sims[first]
        arg[later[first]] = earlier[first]
    return best, arg


def _exact(x: np.ndarray, floor: float, start: int, block: int = 1024, chunk: int = 8192) -> list[Pairs]:
    import numpy as np

    def rows(s: int) -> Pairs:
        e = min(len(x), s + block)
        out: list[Pairs] = []
        for c0 in range(0, e, chunk):
            c1 = min(e, c0 + chunk)
            sims = x[s:e] @ x[c0:c1].T
            i, j = np.nonzero(sims >= floor)
            keep = j + c0 < i + s
            i, j = i[keep], j[keep]
            out.append((i + s, j + c0, sims[i, j]))
        return _cat(out)

    return parallel(rows, range(start, len(x), block))


def _ivf(x: np.ndarray, floor: float, start: int, probes: int, chunk: int = 4096) -> list[Pairs]:
    import numpy as np

    n = len(x)
    cells = partition(x, k=int(math.sqrt(n * probes)), p=probes)
    flat = cells.probes.ravel()
    by_cell = np.argsort(flat, kind="stable")
    probers = (by_cell // cells.probes.shape[1]).astype(np.int64)
    pbounds = np.searchsorted(flat[by_cell], np.arange(len(cells.centroids) + 1))

    def one(cell: int) -> Pairs:
        members = cells.members(cell)
        out: list[Pairs] = []
        if len(members):
            xm = x[members].T
            who_all = probers[pbounds[cell] : pbounds[cell + 1]]
            for s in range(0, len(who_all), chunk):
                who = who_all[s : s + chunk]
                sims = x[who] @ xm
                i, j = np.nonzero(sims >= floor)
                a, b = who[i], members[j]
                later, earlier = np.maximum(a, b), np.minimum(a, b)
                keep = (a != b) & (later >= start)
                out.append((later[keep], earlier[keep], sims[i[keep], j[keep]]))
        return _cat(out)

    return parallel(one, range(len(cells.centroids)))


def _method(n: int, search: str) -> str:
    return "exact" if search == "exact" or (search == "auto" and n <= EXACT_MAX) else "ivf"


def earlier_neighbours(
    x: np.ndarray, floor: float, *, start: int = 0, search: str = "auto", probes: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """For each row i of the unit vectors ``x``: the largest cosine to a row j < i, and j, where that cosine
    is at least ``floor`` (else -inf and -1). Rows before ``start`` only serve as earlier rows."""
    import numpy as np

    x = as_unit(x)
    n = len(x)
    if n < 2:
        return np.full(n, -np.inf, dtype=np.float32), np.full(n, -1, dtype=np.int64)
    parts = _exact(x, floor, start) if _method(n, search) == "exact" else _ivf(x, floor, start, probes)
    return _first_per_row(parts, n)


def _score_sync(
    rows: list[Row], earlier: list[tuple[str, str]], params: EmbedDedupParams, ctx: Context
) -> list[Scored]:
    start = time.perf_counter()
    x = embed([t for _, t in earlier] + [r.text for r in rows], params.model, ctx)
    embedded = time.perf_counter()
    best, arg = earlier_neighbours(x, params.min_similarity, start=len(earlier), search=params.search,
                                   probes=params.probes)  # fmt: skip
    names = [w for w, _ in earlier] + [r.id for r in rows]
    out = []
    for i, r in enumerate(rows, start=len(earlier)):
        if arg[i] < 0:
            out.append(Scored(r.id, None))
        else:
            out.append(Scored(r.id, round(float(best[i]), 6), {"duplicate_of": names[arg[i]]}))
    stats = {
        "texts": len(x), "earlier": len(earlier), "search": _method(len(x), params.search),
        "near": int((arg >= 0).sum()), "embed_seconds": round(embedded - start, 3),
        "search_seconds": round(time.perf_counter() - embedded, 3),
    }  # fmt: skip
    ctx.work["embed_dedup"] = stats
    log.info("embed_dedup: %s", stats)
    return out


async def score(rows: list[Row], params: EmbedDedupParams, ctx: Context) -> list[Scored]:
    earlier = ctx.earlier_texts() if params.across_runs else []
    return await asyncio.to_thread(_score_sync, rows, earlier, params, ctx)


def decide(s: Scored, params: EmbedDedupParams) -> tuple[bool, str | None]:
    if s.score is not None and s.score >= params.threshold:
        return False, f"near duplicate (cosine ≥ {params.threshold:g})"
    return True, None


FILTER = Filter(
    slug="embed_dedup",
    summary="Drop near duplicates: sentence-embedding cosine to an earlier record (this run or earlier runs).",
    params=EmbedDedupParams,
    code_version="e1",
    score=score,
    decide=decide,
    thresholds=("threshold",),
    set_level=True,
    precompute=precompute,
)
