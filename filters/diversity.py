"""`diversity`: keep a diverse subset of ``size`` records, chosen by k-center greedy over sentence embeddings
(farthest-first traversal: start from the most central record, then repeatedly add the record farthest from
everything chosen so far), optionally per label.

Why k-center greedy rather than facility location: it maximises coverage (every kept record's region of the
space is represented, rare intents included, and no two kept records are near-duplicates), it is the usual
core-set selection (Sener & Savarese 2018), and its greedy order is a ranking: the first k picks are the
selection of size k for every k. So the score is the record's rank, ``size`` is a threshold, and a new size is
re-derived from stored ranks. Facility location also yields a nested greedy order, but needs all n² (or a
k-NN graph of) similarities and favours dense regions over coverage.

Ranks are exact greedy up to the size scored with (per label: each label's share); the records after that are
ranked by their distance to the selection (the next greedy pick comes first). With ``label_field``, each
label has its own greedy order, and ranks go round-robin over the labels (sorted by name), so ``rank < size``
is a balanced selection (a label with fewer records than its share leaves the rest to the others); or
``quotas`` gives each label its count.

Cost: the greedy is exact, and costs records × size dot products: the similarities of each batch of likely
next picks to every record are one matrix product (see ``_picks``), against one matrix-vector product per
pick in the plain greedy (benchmarks/bench_embed.py measures both; figures in benchmarks/results/). A
cell-restricted approximation was tried and dropped: early picks change the distances of records everywhere,
and without those updates the selection covered no better than a random sample on clustered data.

``diversity_report`` measures a set: distinct-1/2, mean pairwise cosine, counts per label.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections import Counter
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from factory.errors import ConfigError
from filters.base import Context, Filter, FilterParams, Row, Scored
from filters.vectors import as_unit, embed, precompute

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

_BATCH = 256
_BATCH_CELLS = 25_000_000
_WORD = re.compile(r"\w+", re.UNICODE)


class DiversityParams(FilterParams):
    label_field: str | None = Field(
        None, description="Payload field holding each record's label: select per label."
    )
    quotas: Literal["balanced"] | dict[str, int] = Field(
        "balanced",
        description="With label_field: 'balanced' (size split evenly) or a count per label (others get none).",
        validate_default=True,
    )
    size: int | None = Field(
        None, ge=0, validate_default=True, description="How many records to keep (unless quotas are counts)."
    )
    model: str | None = Field(
        None, description="A local sentence-transformers folder; default: the bundled all-MiniLM-L6-v2."
    )

    @field_validator("quotas")
    @classmethod
    def _quotas_need_labels(cls, v: Any, info: ValidationInfo) -> Any:
        if isinstance(v, dict) and info.data.get("label_field") is None:
            raise ValueError("counts per label need label_field (the payload field that holds the label)")
        if isinstance(v, dict) and any(c < 0 for c in v.values()):
            raise ValueError("counts per label must be 0 or more")
        return v

    @field_validator("size")
    @classmethod
    def _size_or_counts(cls, v: int | None, info: ValidationInfo) -> int | None:
        counts = isinstance(info.data.get("quotas"), dict)
        if counts and v is not None:
            raise ValueError("give either size or a count per label in quotas, not both")
        if not counts and v is None and "quotas" in info.data:
            raise ValueError("size is required: how many records to keep")
        return v


# ---- k-center greedy --------------------------------------------------------------------------------


def _picks(x: np.ndarray, length: int, cover: np.ndarray, first: int) -> tuple[list[int], list[float]]:
    """Farthest-first picks, exact. Each batch takes the record farthest from the selection, then the next
    candidates (the ``_BATCH`` farthest) for as long as one of them is still strictly farther than every
    record outside the batch was: the same picks as one similarity pass per pick, in matrix products.
    ``cover`` (each record's largest cosine to the picks) is updated in place; picked records get +inf.
    Returns the picks and each one's cover when picked."""
    import numpy as np

    n = len(x)
    batch = max(16, min(_BATCH, _BATCH_CELLS // max(n, 1)))  # a batch's similarities: at most ~100 MB
    picks: list[int] = []
    seen: list[float] = []
    nxt = first
    while True:
        b = min(batch, n - len(picks) - 1)
        if b > 0:
            part = np.argpartition(cover, b)[: b + 1]
            bound = float(cover[part].max())  # the (b+1)-th smallest: every record outside is at least this
            cand = np.unique(np.r_[nxt, part[cover[part] < bound]])
        else:
            bound, cand = np.inf, np.array([nxt])
        sims = x[cand] @ x.T
        row = {int(c): k for k, c in enumerate(cand)}
        while True:
            picks.append(nxt)
            seen.append(float(cover[nxt]))
            np.maximum(cover, sims[row[nxt]], out=cover)
            cover[nxt] = np.inf
            if len(picks) >= length:
                return picks, seen
            k = int(np.argmin(cover[cand]))
            if not cover[cand[k]] < bound:
                break
            nxt = int(cand[k])
        nxt = int(np.argmin(cover))


def kcenter_order(x: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """All row indices of the unit vectors ``x`` in farthest-first order: the first ``length`` by k-center
    greedy (starting from the row nearest the mean), the rest by their distance to those (farthest first,
    ties by index). Also, per row in that order, its largest cosine to the picks before it (the rest: to
    all picks; the first: -inf)."""
    import numpy as np

    x = as_unit(x)
    n = len(x)
    length = min(length, n)
    cover = np.full(n, -np.inf, dtype=np.float32)
    picks: list[int] = []
    at_pick: list[float] = []
    if length > 0:
        first = int(np.argmax(x @ x.mean(axis=0)))
        picks, at_pick = _picks(x, length, cover, first)
    picked = np.asarray(picks, dtype=np.int64)
    rest = np.setdiff1d(np.arange(n), picked)
    rest = rest[np.lexsort((rest, cover[rest]))]
    return np.concatenate([picked, rest]), np.concatenate([np.asarray(at_pick, np.float32), cover[rest]])


# ---- the filter ------------------------------------------------------------------------------------


def _labels(rows: list[Row], field: str) -> list[str]:
    out = []
    for r in rows:
        if field not in r.payload:
            have = ", ".join(sorted(r.payload)) or "none"
            raise ConfigError(
                f"diversity.label_field {field!r}: record {r.id} has no such payload field (it has: {have})"
            )
        out.append(str(r.payload[field]))
    return out


def shares(counts: dict[str, int], size: int) -> dict[str, int]:
    """How many of the first ``size`` round-robin ranks each label gets (labels in name order, a label
    that runs out is skipped): the balanced split of ``size``."""
    import numpy as np

    names = sorted(counts)
    turn = np.concatenate([np.arange(counts[k]) for k in names] or [np.zeros(0, dtype=np.int64)])
    label = np.repeat(np.arange(len(names)), [counts[k] for k in names])
    first = np.lexsort((label, turn))[:size]
    got = np.bincount(label[first], minlength=len(names))
    return {k: int(g) for k, g in zip(names, got, strict=True)}


def _score_sync(rows: list[Row], params: DiversityParams, ctx: Context) -> list[Scored]:
    import numpy as np

    n = len(rows)
    labels = _labels(rows, params.label_field) if params.label_field is not None else [""] * n
    start = time.perf_counter()
    x = embed([r.text for r in rows], params.model, ctx)
    embedded = time.perf_counter()
    groups: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        groups.setdefault(lab, []).append(i)
    counts = {k: len(v) for k, v in groups.items()}
    if params.label_field is None:
        want = {"": params.size or 0}
    elif isinstance(params.quotas, dict):
        unknown = sorted(set(params.quotas) - set(counts))
        if unknown:
            log.warning("diversity.quotas: no record has label %s (labels: %s)", unknown, sorted(counts))
        want = {k: params.quotas.get(k, 0) for k in counts}
    else:
        want = shares(counts, params.size or 0)
    names = sorted(groups)
    turn = np.empty(n, dtype=np.int64)
    at = np.empty(n, dtype=np.float32)
    for lab in names:
        idx = np.asarray(groups[lab])
        order, cos = kcenter_order(x[idx], want[lab])
        turn[idx[order]] = np.arange(len(idx))
        at[idx[order]] = cos
    number = {lab: k for k, lab in enumerate(names)}
    label_no = np.array([number[lab] for lab in labels], dtype=np.int64)
    rank = np.empty(n, dtype=np.int64)
    rank[np.lexsort((label_no, turn))] = np.arange(n)  # round-robin over the labels
    ctx.work["diversity"] = {
        "texts": n, "labels": len(names), "picks": sum(min(want[k], counts[k]) for k in names),
        "embed_seconds": round(embedded - start, 3), "select_seconds": round(time.perf_counter() - embedded, 3),
    }  # fmt: skip
    log.info("diversity: %s", ctx.work["diversity"])
    out = []
    for i, r in enumerate(rows):
        near = float(at[i])
        detail: dict[str, Any] = {"cosine_to_selected": round(near, 4) if math.isfinite(near) else None}
        if params.label_field is not None:
            detail.update(label=labels[i], label_rank=int(turn[i]))
        out.append(Scored(r.id, float(rank[i]), detail))
    return out


async def score(rows: list[Row], params: DiversityParams, ctx: Context) -> list[Scored]:
    return await asyncio.to_thread(_score_sync, rows, params, ctx)


def decide(s: Scored, params: DiversityParams) -> tuple[bool, str | None]:
    if isinstance(params.quotas, dict) and params.label_field is not None and s.detail:
        label = s.detail.get("label")
        quota = params.quotas.get(str(label))
        if quota is None:
            return False, f"not selected for diversity: no quota for label {label!r}"
        keep = int(s.detail.get("label_rank", 0)) < quota
    else:
        keep = s.score is not None and s.score < (params.size or 0)
    return (True, None) if keep else (False, "not selected for diversity")


FILTER = Filter(
    slug="diversity",
    summary="Keep a diverse subset of a given size: k-center greedy over sentence embeddings, optionally per label.",
    params=DiversityParams,
    code_version="d1",
    score=score,
    decide=decide,
    thresholds=("size", "quotas"),
    set_level=True,
    precompute=precompute,
)


# ---- metrics ----------------------------------------------------------------------------------------


def _distinct(tokens: list[list[str]], n: int) -> float:
    grams: Counter[tuple[str, ...]] = Counter()
    for t in tokens:
        grams.update(zip(*(t[i:] for i in range(n)), strict=False))
    total = sum(grams.values())
    return round(len(grams) / total, 4) if total else 0.0


def diversity_report(
    texts: Sequence[str], embeddings: Any = None, labels: Sequence[Hashable] | None = None
) -> dict[str, Any]:
    """How diverse a set is: ``distinct_1`` / ``distinct_2`` (unique word uni/bigrams over all of them, Li et
    al. 2016), ``mean_pairwise_cosine`` of the embeddings over all pairs i ≠ j (exact: from the sum vector,
    no sampling), and ``labels``: records per label, most first."""
    import numpy as np

    tokens = [_WORD.findall(t.lower()) for t in texts]
    out: dict[str, Any] = {
        "records": len(texts),
        "distinct_1": _distinct(tokens, 1),
        "distinct_2": _distinct(tokens, 2),
        "mean_pairwise_cosine": None,
        "labels": None,
    }
    if embeddings is not None and len(embeddings) >= 2:
        x = as_unit(embeddings).astype(np.float64)
        n = len(x)
        total = x.sum(axis=0)
        out["mean_pairwise_cosine"] = round(float((total @ total - (x * x).sum()) / (n * (n - 1))), 4)
    if labels is not None:
        counts = Counter(labels)
        out["labels"] = {str(k): v for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))}
    return out
