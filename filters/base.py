"""What every filter is: a params model plus two functions.

``score`` computes what is expensive (a judge's score, a similarity, a signature) for the records that reach
the filter; the ledger keeps it. ``decide`` turns a stored score into keep or drop under the current
thresholds; it is cheap and pure, so changing a threshold re-derives the curated set from stored scores.

The params a filter lists in ``thresholds`` only change decisions; every other param changes scores, so it is
part of the filter's version (a new version scores again).

A set filter whose score starts with per-record work (a MinHash signature, a sentence embedding) may also
declare ``precompute(rows, params, folder)``: an executor calls it where the records are made (each Ray worker,
on the records of its shard), before the filter pass and without knowing what the filter is. It writes under
``folder`` what ``score`` would otherwise compute, laid out as ``score`` reads it from ``ctx.cache_dir``; the
executor then merges every worker's folder into the store's filter cache, and the pass finds the work done.
The contract that makes merging a plain union of files:

- the work depends on each record alone (never on the other records, the earlier runs or a teacher);
- every file is written whole under a temporary name ending in ``.tmp`` and then renamed, and no file is
  written twice: names are unique (a time stamp and a process id, or a digest of the content);
- the executor copies files in no particular order and skips names already there, so ``score`` must treat
  a unit whose files are not all present as absent (and compute it again).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from factory.keys import digest
from recipes.base import Generate


class FilterParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True, slots=True)
class Answer:
    """What a record's lineage says of one teacher answer it was made from: the request key, how the
    answer ended (``length``: cut by max_tokens) and how long its reasoning is (the text itself:
    ``Context.reasoning``). ``finish_reason`` is None when the answer is no longer cached (forgotten)."""

    key: str
    finish_reason: str | None = None
    reasoning_chars: int = 0


@dataclass(frozen=True, slots=True)
class Row:
    """A record as filters read it. ``answers``: the teacher answers it was made from, in the order of its
    request keys."""

    id: str
    stage: str
    seed_id: str
    sample_index: int
    text: str
    payload: dict[str, Any]
    answers: tuple[Answer, ...] = ()


@dataclass(frozen=True, slots=True)
class Scored:
    """What a filter measured about one record. ``detail`` is JSON-able evidence (the duplicate's id, the
    judge's reason, the eval item overlapped); ``fail`` is a hard drop no threshold can undo."""

    record_id: str
    score: float | None = None
    detail: dict[str, Any] | None = None
    fail: str | None = None


def _nothing() -> list[tuple[str, str]]:
    return []


def _no_reasoning(keys: list[str]) -> dict[str, str]:
    return {}


@dataclass(slots=True)
class Context:
    """What a filter may use besides its rows. Filters never touch the store; they return scores.

    ``earlier_texts()`` gives (where, text) for the records of the store's runs created before this one.
    ``reasoning(keys)`` gives the reasoning stored with these answers (``Answer.key``), by key.
    ``cache_dir`` is a folder next to the store where filters persist derived artefacts (embeddings) across
    passes and runs; None: nothing is persisted.
    """

    run_id: str
    recipe: str
    earlier_texts: Callable[[], list[tuple[str, str]]] = _nothing
    # For filters that ask a teacher (``uses_teacher``): requests go through the run's request cache, so a
    # judgement is paid for once; ``teacher=`` names a role of the run config.
    generate: Generate | None = None
    work: dict[str, Any] = field(default_factory=dict)
    cache_dir: Path | None = None
    reasoning: Callable[[list[str]], dict[str, str]] = _no_reasoning


Score = Callable[[list[Row], Any, Context], Awaitable[list[Scored]]]
Decide = Callable[[Scored, Any], tuple[bool, str | None]]
Precompute = Callable[[list[Row], Any, Path], None]


@dataclass(frozen=True, slots=True)
class Filter:
    slug: str
    summary: str
    params: type[FilterParams]
    code_version: str  # bump when score() changes what it computes
    score: Score
    decide: Decide
    thresholds: tuple[str, ...] = ()
    set_level: bool = False  # scores depend on the whole set (dedup, diversity): recomputed each pass
    uses_teacher: bool = False  # score() calls ctx.generate (a judge)
    # Params that are file paths: relative ones resolve against the run config's folder.
    path_params: tuple[str, ...] = ()
    # What else scores depend on (e.g. the content of a labeled file): part of the version.
    fingerprint: Callable[[Any], Any] | None = None
    # Per-record work an executor may do ahead of the pass, into a folder laid out as ``ctx.cache_dir``
    # (see the module docstring); None: score() does all of its work itself.
    precompute: Precompute | None = None

    def version(self, params: FilterParams) -> str:
        """Code version plus the params that change scores (thresholds are left out) and the fingerprint."""
        scoring: dict[str, Any] = {
            k: v for k, v in params.model_dump(mode="json").items() if k not in self.thresholds
        }
        if self.fingerprint is not None:
            scoring["_fingerprint"] = self.fingerprint(params)
        return f"{self.code_version}-{digest('flt1', scoring, length=8)}"
