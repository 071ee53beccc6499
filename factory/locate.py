"""Which store (and which run) a command that reads a store is about.

The store is, in order: ``--store PATH``; the ``store:`` of ``--config CONFIG.yaml`` (a RUN argument that is
an existing ``.yaml``/``.yml`` file counts as ``--config``); ``$FACTORY_STORE``; ``./data/factory.duckdb``.
This is the order ``factory run`` uses, so a config's store is found again without repeating ``--store``.
With a config and no RUN, the run is the config's ``name`` (its most recently updated run).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from factory.config import DEFAULT_STORE, load_config
from factory.errors import ConfigError

CONFIG_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True, slots=True)
class Located:
    store: Path
    run: str | None  # the RUN to resolve in the store (None: the latest run)
    found_by: str  # how the store was chosen, for messages
    config: Path | None = None


def is_config_path(arg: str | None) -> bool:
    """A RUN argument that names a run config file rather than a run."""
    return bool(arg) and Path(str(arg)).suffix.lower() in CONFIG_SUFFIXES and Path(str(arg)).is_file()


def locate(*, store: str | None, config: str | None, run: str | None, store_flag: str = "--store") -> Located:
    if is_config_path(run):
        if config:
            raise ConfigError(
                f"RUN {run} is a config file and --config {config} is given too; give one of them"
            )
        config, run = run, None
    cfg = load_config(config) if config else None
    if store:
        path, found_by = Path(store), store_flag
    elif cfg is not None and cfg.store:
        path, found_by = cfg.store_path(), f"--config {config}"
    elif os.environ.get("FACTORY_STORE"):
        path, found_by = Path(os.environ["FACTORY_STORE"]), "$FACTORY_STORE"
    else:
        path, found_by = Path(DEFAULT_STORE), "the default store"
    if run is None and cfg is not None:
        run = cfg.name
    return Located(path, run, found_by, Path(config) if config else None)


def missing_store_message(loc: Located) -> str:
    """One line naming where the store was looked for, why there, and the fix."""
    if loc.found_by.startswith("--config"):
        return (
            f"{loc.found_by}: no store at {loc.store} (the config's store:); run `factory run {loc.config}` "
            "first, or pass --store PATH"
        )
    if loc.found_by == "the default store":
        how = "the default store: no --store, --config or $FACTORY_STORE given"
        if loc.config is not None:
            how = f"the default store: {loc.config} names no store: and $FACTORY_STORE is unset"
        return (
            f"no store at {loc.store} ({how}); run `factory run CONFIG.yaml` first, or point to the store "
            "with --store PATH or --config CONFIG.yaml (its store: field)"
        )
    return (
        f"{loc.found_by}: no store at {loc.store}; check the path, run `factory run CONFIG.yaml` first, or "
        "pass --config CONFIG.yaml to use the store its config names"
    )
