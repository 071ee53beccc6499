"""Which run a RUN argument names.

An exact run id wins, then an exact run name (several runs may share a name: the most recently updated of
them, with a note naming the others). Anything else is a prefix of ids and names that must match exactly
one run; an ambiguous or unknown RUN is a ConfigError that lists the candidates or the runs the store
holds. No RUN means the most recently updated run, with a note when the store holds several.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from factory.errors import ConfigError

if TYPE_CHECKING:
    from factory.store.tables import StoreBase

LISTED = 8  # runs named in a message before "and N more"


@dataclass(frozen=True, slots=True)
class ResolvedRun:
    id: str
    name: str
    how: str  # "id" | "name" | "prefix" | "latest"
    note: str | None = None  # worth showing the user: the choice was not the only one possible


def _when(r: dict[str, Any]) -> str:
    t = r["updated_at"]
    return t.strftime("%Y-%m-%d %H:%M") if t is not None else "?"


def describe(runs: list[dict[str, Any]], limit: int = LISTED) -> str:
    """``id (name, updated …)`` of the first ``limit`` runs, then how many more."""
    shown = ", ".join(f"{r['id']} ({r['name']}, updated {_when(r)})" for r in runs[:limit])
    more = len(runs) - limit
    return shown + (f" and {more} more" if more > 0 else "")


def _first(runs: list[dict[str, Any]], how: str, note: str | None = None) -> ResolvedRun:
    """The first of ``runs`` (the most recently updated), with ``note`` only when there were others."""
    r = runs[0]
    return ResolvedRun(r["id"], r["name"], how, note if len(runs) > 1 else None)


def resolve_run(store: StoreBase, run: str | None) -> ResolvedRun:
    runs = store._dicts("SELECT id, name, updated_at FROM runs ORDER BY updated_at DESC, id")
    where = store.path
    if run is None:
        if not runs:
            raise ConfigError(
                f"the store {where} holds no runs yet: start one with `factory run CONFIG.yaml`"
            )
        r = runs[0]
        return _first(
            runs,
            "latest",
            f"no RUN given: using the latest of the {len(runs)} runs in {where}, {r['id']} ({r['name']}, "
            f"updated {_when(r)}); name one to choose another (`factory status --all` lists them)",
        )
    for r in runs:
        if r["id"] == run:
            return _first([r], "id")
    named = [r for r in runs if r["name"] == run]
    if named:
        r = named[0]
        return _first(
            named,
            "name",
            f"{len(named)} runs are named {run!r}: using the latest, {r['id']} (updated {_when(r)}); the "
            f"others: {describe(named[1:])}; give a run id to choose one",
        )
    matches = [r for r in runs if r["id"].startswith(run) or r["name"].startswith(run)]
    if len(matches) == 1:
        return _first(matches, "prefix")
    if matches:
        raise ConfigError(
            f"RUN {run!r} is ambiguous in {where}: it begins {len(matches)} runs: {describe(matches)}; "
            "give the exact name or more of the id"
        )
    known = describe(runs) if runs else "none"
    raise ConfigError(
        f"no run {run!r} in {where} (searched by id, name and prefix); known runs: {known}. "
        "Pass --store PATH or --config CONFIG.yaml to look in another store"
    )
