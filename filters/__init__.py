"""Filters by slug. Each appends one verdict (keep, score, reason) per record it sees to the ledger; nothing
is deleted, and the curated set is a view (see ``factory.curation``). Listing them imports only these light
modules. Recipes write their own parse verdicts (filter ``<recipe>.parse``) while generating.
"""

from __future__ import annotations

from factory.registry import load
from filters.base import Filter

REGISTRY: dict[str, str] = {
    "heuristics": "filters.heuristics",
    "agreement": "filters.agreement",
    "exact_dedup": "filters.exact_dedup",
    "minhash_dedup": "filters.minhash_dedup",
    "decontaminate": "filters.decontaminate",
    "critic": "filters.critic",
    "trained_critic": "filters.trained_critic",
    "embed_dedup": "filters.embed_dedup",
    "diversity": "filters.diversity",
}


def get_filter(slug: str, where: str = "filters") -> Filter:
    flt: Filter = load(REGISTRY, slug, kind="filter", where=where).FILTER
    return flt


def all_filters() -> list[Filter]:
    return [get_filter(s) for s in sorted(REGISTRY)]
