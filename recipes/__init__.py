"""Recipes by slug. Listing them imports only these light modules, never a model backend."""

from __future__ import annotations

from factory.registry import load
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
    recipe: Recipe = load(REGISTRY, slug, kind="recipe", where="field 'recipe'").RECIPE
    return recipe


def all_recipes() -> list[Recipe]:
    return [get_recipe(s) for s in sorted(REGISTRY)]
