"""Recipes by name (entry point group ``distill_factory.recipes``; the built-ins are registered there by
this package) or by reference (``package.module:RECIPE``, ``path/to/file.py:RECIPE``): see factory.plugins.
Listing names imports nothing; a recipe module is imported when it is used."""

from __future__ import annotations

from pathlib import Path

from factory import plugins
from recipes.base import Recipe


def get_recipe(name: str, *, where: str = "field 'recipe'", base_dir: Path | None = None) -> Recipe:
    what = f"recipe {name!r} in {where}"
    recipe: Recipe = plugins.checked(
        "recipe", plugins.load("recipe", name, where=where, base_dir=base_dir), what, Recipe
    )
    return recipe


def all_recipes() -> list[plugins.Listed]:
    """Every registered recipe, each loaded on its own (one that fails carries its error)."""
    return plugins.listing("recipe", lambda obj, what: plugins.checked("recipe", obj, what, Recipe))
