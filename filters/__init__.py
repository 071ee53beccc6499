"""Filters by name (entry point group ``distill_factory.filters``; the built-ins are registered there by this
package) or by reference (``package.module:FILTER``, ``path/to/file.py:FILTER``): see factory.plugins. Each
appends one verdict (keep, score, reason) per record it sees to the ledger; nothing is deleted, and the
curated set is a view (see ``factory.curation``). Recipes write their own parse verdicts (filter
``<recipe>.parse``) while generating.
"""

from __future__ import annotations

from pathlib import Path

from factory import plugins
from filters.base import Filter


def get_filter(name: str, where: str = "filters", *, base_dir: Path | None = None) -> Filter:
    what = f"filter {name!r} in {where}"
    flt: Filter = plugins.checked(
        "filter", plugins.load("filter", name, where=where, base_dir=base_dir), what, Filter
    )
    return flt


def all_filters() -> list[plugins.Listed]:
    """Every registered filter, each loaded on its own (one that fails carries its error)."""
    return plugins.listing("filter", lambda obj, what: plugins.checked("filter", obj, what, Filter))
