"""Recipes by slug. Listing them imports only these light modules, never a model backend."""

from __future__ import annotations

import difflib
import importlib

from factory.errors import ConfigError
from recipes.base import Recipe

REGISTRY: dict[str, str] = {
    "rationales": "recipes.rationales",
    "prompt": "recipes.prompt",
    "program_rationales": "recipes.program_rationales",
    "commonsense": "recipes.commonsense",
    "boundary": "recipes.boundary",
    "relabel": "recipes.relabel",
}


def get_recipe(slug: str) -> Recipe:
    if slug not in REGISTRY:
        close = difflib.get_close_matches(slug, REGISTRY, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"unknown recipe {slug!r} in field 'recipe'.{hint} Installed recipes: {', '.join(sorted(REGISTRY))}"
        )
    recipe: Recipe = importlib.import_module(REGISTRY[slug]).RECIPE
    return recipe


def all_recipes() -> list[Recipe]:
    return [get_recipe(s) for s in sorted(REGISTRY)]
