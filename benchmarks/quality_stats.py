"""Accuracy with a 95 % interval for students scored on one set of validation questions by several seeds.

Every seed's student answers the same questions, so the seeds' predictions are not independent draws: a
question one student gets wrong, the others often get wrong too. A Wilson interval on the pooled predictions
(seeds × questions) would count each question several times and come out too narrow; a t interval over three
seeds has two degrees of freedom and ignores which questions happened to be drawn. The interval here is a
percentile bootstrap over questions: each resample draws questions with replacement and keeps every seed's
prediction on each drawn question together, so it carries the question sampling and averages over the seeds.
Differences between two variants are paired the same way (same questions, the same resample for both).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95


def _matrix(hits: Sequence[Sequence[bool]]) -> np.ndarray:
    m = np.asarray(hits, dtype=np.float64)
    if m.ndim != 2 or m.shape[1] == 0:
        raise ValueError("hits: one row of per-question results per seed, at least one question")
    return m


def _draws(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(RESAMPLES, n))


def _interval(values: np.ndarray) -> list[float]:
    tail = (1 - LEVEL) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return [round(float(lo), 4), round(float(hi), 4)]


def accuracy(hits: Sequence[Sequence[bool]], *, seed: int = 0) -> dict[str, Any]:
    """Mean accuracy over seeds and questions, its bootstrap interval, and each seed's own accuracy."""
    m = _matrix(hits)
    per_question = m.mean(axis=0)
    boot = per_question[_draws(m.shape[1], seed)].mean(axis=1)
    per_seed = [round(float(x), 4) for x in m.mean(axis=1)]
    return {
        "accuracy": round(float(per_question.mean()), 4),
        "ci95": _interval(boot),
        "per_seed": per_seed,
        "seed_sd": round(float(np.std(per_seed, ddof=1)), 4) if len(per_seed) > 1 else None,
        "questions": int(m.shape[1]),
        "seeds": int(m.shape[0]),
    }


def difference(a: Sequence[Sequence[bool]], b: Sequence[Sequence[bool]], *, seed: int = 0) -> dict[str, Any]:
    """Accuracy of ``a`` minus that of ``b`` on the same questions, with a paired bootstrap interval."""
    ma, mb = _matrix(a), _matrix(b)
    if ma.shape[1] != mb.shape[1]:
        raise ValueError("difference: both variants must be scored on the same questions")
    d = ma.mean(axis=0) - mb.mean(axis=0)
    boot = d[_draws(len(d), seed)].mean(axis=1)
    return {"difference": round(float(d.mean()), 4), "ci95": _interval(boot), "questions": len(d)}
