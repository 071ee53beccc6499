"""The recipe of a stored run, for the commands that need its code after the run: a shaped export
(`factory export --as SHAPE`, `factory push`), a filter pass that asks a teacher, the recipe's default filters.

A recipe handed to ``factory.run`` as an object (made in a notebook with ``recipes.functions.recipe``) exists
only in that Python session; its run's stored config says so (``RECIPE_IN_SESSION``), so another process that
cannot load it says which run, why, and how to fix it, instead of "unknown recipe". What needs only stored data
works without it: status, report, a plain export of the records, a filter pass of filters that do not ask a
teacher.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from factory import plugins
from factory.errors import ConfigError

if TYPE_CHECKING:
    from factory.store import Store
    from recipes.base import Recipe

RECIPE_IN_SESSION = "recipe_in_python_session"  # a key of the stored config (never part of the run id)


def mark(config_json: dict[str, Any], slug: str) -> dict[str, Any]:
    """``config_json`` (the config as stored) marked when its recipe is an object of this Python session."""
    if plugins.in_process("recipe", slug):
        config_json[RECIPE_IN_SESSION] = True
    return config_json


def without_facts(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored config without the facts kept beside the config itself (an import's, the session mark)."""
    return {k: v for k, v in stored.items() if k not in ("import", RECIPE_IN_SESSION)}


def load(store: Store, run_id: str, *, needs: str, instead: str) -> Recipe:
    """The run's recipe, or one ConfigError (exit 2) saying that ``needs`` (what the command was to do)
    cannot be done without it, why, and how: register the recipe, or ``instead``."""
    from recipes import get_recipe

    stored = store.run_config(run_id)
    slug = str(stored.get("recipe") or store.run_summary(run_id)["recipe"])
    try:
        return get_recipe(slug)
    except ConfigError as exc:
        reason = str(exc)
    raise ConfigError(unloadable(run_id, slug, stored, needs=needs, instead=instead, reason=reason)) from None


def unloadable(
    run_id: str, slug: str, stored: dict[str, Any], *, needs: str, instead: str, reason: str = ""
) -> str:
    if stored.get(RECIPE_IN_SESSION):
        return (
            f"run {run_id}: its recipe {slug!r} was defined in a Python session (an object given to "
            f"factory.run), which this process cannot load, so {needs} needs that session. Either make the "
            f"recipe loadable: put it in a module and register it as an entry point named {slug!r} (group "
            f'distill_factory.recipes: {slug} = "package.module:OBJECT"), or {instead}'
        )
    return (
        f"run {run_id}: its recipe {slug!r} cannot be loaded in this process, so {needs} needs it: "
        f"{reason.split('. Installed')[0] or 'not installed'}; install the package that provides it "
        f"(or register a recipe named {slug!r}), or {instead}"
    )


def implied_filters(store: Store, run_id: str, listed: list[Any]) -> list[str] | None:
    """The recipe's default filters of a run whose recipe cannot be loaded, as its latest pass applied them
    (the filters of that pass its config does not list); None when the recipe loads (ask it) or the run has no
    pass yet."""
    from recipes import get_recipe

    stored = store.run_config(run_id)
    try:
        get_recipe(str(stored.get("recipe")))
        return None
    except ConfigError:
        pass
    if not (stored.get("curation") or {}).get("recipe_filters", True):
        return []
    latest = store.latest_pass(run_id)
    if latest is None:
        return None
    from filters import get_filter

    named = set()
    for item in listed:
        name = str(next(iter(item))) if isinstance(item, dict) and item else str(item)
        try:
            named.add(get_filter(name).slug)  # a reference (path.py:OBJECT) is stored by its slug
        except ConfigError:
            named.add(name)  # parse_steps says what is wrong with it
    return [f["filter"] for f in latest["filters"] if f["filter"] not in named]
