"""The facts a run report shows, read through Store methods and shaped for the charts (no SQL here).

Everything is aggregated in the store or over narrow Arrow columns, so a run of a million records costs a
few scans; only the samples and the map's points are whole records.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import orjson

from factory.card import LABEL_FIELDS
from factory.store import Store

log = logging.getLogger(__name__)

# Filters whose score is worth a histogram: (threshold param, the side that is kept, what the score is).
SCORED: dict[str, tuple[str, str, str]] = {
    "critic": ("min_score", "above", "critic score (1-10)"),
    "trained_critic": ("min_probability", "above", "probability the triple is accepted"),
    "embed_dedup": ("threshold", "below", "largest cosine to an earlier record"),
    "minhash_dedup": ("threshold", "below", "highest Jaccard to an earlier record"),
}
SAMPLE = 8  # records shown per side
TOP_REPEATS = 10


@dataclass(slots=True)
class Scores:
    filter: str
    what: str
    threshold_param: str
    threshold: float | None
    keeps: str  # "above" | "below"
    edges: list[float]
    kept: list[int]
    dropped: list[int]
    unscored: int  # verdicts without a score (a judge that never gave a readable one, no near neighbour)
    total: int
    tick_labels: list[str] | None = None


@dataclass(slots=True)
class Lengths:
    edges: list[float]
    kept: list[int]
    dropped: list[int]
    overflow_from: int  # the last bin holds every text at least this long
    median_kept: float | None
    median_dropped: float | None


@dataclass(slots=True)
class Facts:
    run: dict[str, Any]
    funnel: dict[str, Any]
    parse_reasons: list[tuple[str, str, int]]
    scores: list[Scores]
    labels: list[tuple[str, list[tuple[str, int, int]]]]  # (field, [(value, records, curated)])
    lengths: Lengths | None
    repeats: list[tuple[str, int]]
    distinct_texts: int
    teachers: list[dict[str, Any]]
    rejections: list[tuple[str, str, int]]
    attempt_failures: dict[str, int]
    final_failures: list[tuple[str, int]]
    kept_sample: list[dict[str, Any]]
    dropped_sample: list[dict[str, Any]]
    label_field: str | None
    last_pass: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)
    accuracy: str | None = None  # the teacher's accuracy against gold, where the seeds carry gold
    budget: Lengths | None = None  # output tokens of each record's answer (a reasoning run's thinking budget)
    budget_cut: int = 0  # records whose answer stopped at max_tokens


def gather(store: Store, run_id: str) -> Facts:
    import numpy as np

    from factory.accuracy import gold_accuracy

    run = store.run_summary(run_id)
    fn = store.funnel(run_id)
    last = store.latest_pass(run_id)
    slugs = {x["filter"] for x in fn["filters"]}
    parse = [(f, r, n) for f, r, n in store.verdict_counts(run_id) if f not in slugs]
    labels = [
        (f, rows) for f in LABEL_FIELDS.get(str(run["recipe"]), ()) if (rows := store.label_counts(run_id, f))
    ]
    lengths_t = store.text_lengths(run_id)
    chars = np.asarray(lengths_t.column("chars").to_numpy(zero_copy_only=False), dtype=np.int64)
    curated = np.asarray(lengths_t.column("curated").to_numpy(zero_copy_only=False), dtype=bool)
    repeats, distinct = store.repeated_texts(run_id, TOP_REPEATS)
    tokens_t = store.answer_tokens(run_id)
    tokens = np.asarray(tokens_t.column("tokens").to_numpy(zero_copy_only=False), dtype=np.int64)
    tokens_curated = np.asarray(tokens_t.column("curated").to_numpy(zero_copy_only=False), dtype=bool)
    cut = int(np.asarray(tokens_t.column("cut").to_numpy(zero_copy_only=False), dtype=bool).sum())
    return Facts(
        run=run, funnel=fn, parse_reasons=parse, scores=_scores(store, run_id, last), labels=labels,
        lengths=_lengths(chars, curated), repeats=repeats, distinct_texts=distinct,
        teachers=store.teacher_usage(run_id), rejections=store.rejections(run_id),
        attempt_failures={k: v for k, v in run["failures_by_kind"].items() if v},
        final_failures=store.failure_kinds(run_id),
        kept_sample=_shown(store.record_sample(run_id, SAMPLE, curated=True)),
        dropped_sample=_shown(store.record_sample(run_id, SAMPLE, curated=False)),
        label_field=labels[0][0] if labels else None, last_pass=last,
        accuracy=acc.sentence() if (acc := gold_accuracy(store, run_id)) is not None else None,
        budget=_lengths(tokens, tokens_curated), budget_cut=cut,
    )  # fmt: skip


def _shown(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for r in rows:
        try:
            r["payload"] = orjson.loads(r["payload"])
        except orjson.JSONDecodeError:
            r["payload"] = {}
    return rows


def _scores(store: Store, run_id: str, last: dict[str, Any] | None) -> list[Scores]:
    import numpy as np

    out = []
    for step in (last or {}).get("filters", []):
        slug = step["filter"]
        if slug not in SCORED:
            continue
        param, keeps, what = SCORED[slug]
        t = store.pass_scores(run_id, slug)
        raw = t.column("score").to_pylist()
        keep = t.column("keep").to_pylist()
        scored = [(float(s), bool(k)) for s, k in zip(raw, keep, strict=True) if s is not None]
        th = step["params"].get(param)
        ticks = None
        if slug == "critic":
            edges = [float(x) for x in range(1, 12)]  # bin k holds scores in [k, k + 1)
            ticks = [str(i) for i in range(1, 11)]
        else:
            vals = [s for s, _ in scored] + ([th] if th is not None else [])
            lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
            lo, hi = (0.0, 1.0) if lo >= 0 and hi <= 1 else (lo, hi if hi > lo else lo + 1)
            edges = list(np.linspace(lo, hi, 21))
        k, d = (
            _binned([s for s, kk in scored if kk], edges),
            _binned([s for s, kk in scored if not kk], edges),
        )
        out.append(Scores(slug, what, param, None if th is None else float(th), keeps, [float(e) for e in edges],
                          k, d, len(raw) - len(scored), len(raw), ticks))  # fmt: skip
    return out


def _binned(values: list[float], edges: list[float]) -> list[int]:
    import numpy as np

    if not values:
        return [0] * (len(edges) - 1)
    clipped = np.clip(np.asarray(values, dtype=np.float64), edges[0], edges[-1])
    counts, _ = np.histogram(clipped, bins=np.asarray(edges, dtype=np.float64))
    return [int(c) for c in counts]


def _lengths(chars: Any, curated: Any) -> Lengths | None:
    import numpy as np

    if len(chars) == 0:
        return None
    top = int(np.percentile(chars, 99)) if len(chars) >= 100 else int(chars.max())
    top = max(top, 10)
    edges = [float(e) for e in np.linspace(0, top, 31)]
    clipped = np.minimum(chars, top)
    kept, _ = np.histogram(clipped[curated], bins=edges)
    dropped, _ = np.histogram(clipped[~curated], bins=edges)
    med = lambda a: float(np.median(a)) if len(a) else None  # noqa: E731
    return Lengths(edges, [int(x) for x in kept], [int(x) for x in dropped], top, med(chars[curated]),
                   med(chars[~curated]))  # fmt: skip
