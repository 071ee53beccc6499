"""Slug registries (recipes, filters): a name maps to a module imported only when asked for."""

from __future__ import annotations

import difflib
import importlib
from types import ModuleType

from factory.errors import ConfigError


def load(registry: dict[str, str], slug: str, *, kind: str, where: str) -> ModuleType:
    """The module registered as ``slug``; an unknown slug is a ConfigError with the closest match."""
    if slug not in registry:
        close = difflib.get_close_matches(slug, registry, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"unknown {kind} {slug!r} in {where}.{hint} Installed {kind}s: {', '.join(sorted(registry))}"
        )
    return importlib.import_module(registry[slug])
