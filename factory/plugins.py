"""Recipes, filters and teachers as plugins: found by name in entry points, or by reference in a config.

By name: each kind has an entry point group (:data:`GROUPS`). This package registers its own recipes,
filters and teacher backends there (in its ``pyproject.toml``), and any installed package can add more::

    [project.entry-points."distill_factory.recipes"]
    translate = "my_package.translate:RECIPE"

By reference, in a config: ``package.module:OBJECT``, or ``path/to/file.py:OBJECT`` (relative to the config
file). Nothing needs installing for that.

What the object must be: for a recipe a :class:`recipes.base.Recipe`, for a filter a
:class:`filters.base.Filter`, for a teacher a callable ``(spec, model, options) -> Teacher`` (a Teacher
subclass whose ``__init__`` takes those does). Names are listed from the packages' metadata without importing
anything; a plugin is imported when it is used or described. One that fails to import is a ConfigError that
names it, its package and the error; it never stops the others from listing or loading.

A name given by this package cannot be taken over: a plugin of the same name from another package is listed
as shadowed and unused (reach it by reference). Two other packages giving one name is an error when the name
is used, naming both.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
import sys
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from factory.errors import ConfigError

GROUPS = {
    "recipe": "distill_factory.recipes",
    "filter": "distill_factory.filters",
    "teacher": "distill_factory.teachers",
}
DISTRIBUTION = "distill-factory"
INSTALL_FIX = "install it (pip install -e . in the project folder, or `make install`)"


@dataclass(frozen=True)
class Plugin:
    """One registered plugin: where it is (``module:attr``) and who registered it."""

    kind: str
    name: str
    target: str
    package: str  # the distribution that registered it, or the file / module of a reference
    version: str = ""
    builtin: bool = False
    shadowed: bool = False  # a built-in of the same name wins; this one is never used by name

    @property
    def origin(self) -> str:
        if self.builtin:
            return "built-in"
        where = f"{self.package} {self.version}".strip()
        return f"{where} (shadowed by the built-in)" if self.shadowed else where

    def load(self) -> Any:
        if (self.kind, self.name) in _IN_PROCESS:
            return _IN_PROCESS[(self.kind, self.name)]
        return _import_target(self.target, f"{self.kind} {self.name!r} (from {self.origin})")


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


@cache
def registered(kind: str) -> dict[str, list[Plugin]]:
    """Every plugin of a kind by name, built-in first; read from the installed packages' metadata once."""
    out: dict[str, list[Plugin]] = {}
    for ep in importlib.metadata.entry_points(group=GROUPS[kind]):
        dist = getattr(ep, "dist", None)
        package = dist.metadata["Name"] if dist is not None else "?"
        version = dist.version if dist is not None else ""
        plugin = Plugin(kind, ep.name, ep.value, package, version, builtin=_norm(package) == DISTRIBUTION)
        out.setdefault(ep.name, []).append(plugin)
    if not any(p.builtin for ps in out.values() for p in ps):
        raise ConfigError(
            f"the {kind}s of {DISTRIBUTION} are registered in its package metadata, which is not installed "
            f"here: {INSTALL_FIX}"
        )
    for name, plugins in out.items():
        plugins.sort(key=lambda p: not p.builtin)
        if plugins[0].builtin:
            out[name] = [plugins[0], *(_shadow(p) for p in plugins[1:])]
    return out


def _shadow(p: Plugin) -> Plugin:
    return Plugin(p.kind, p.name, p.target, p.package, p.version, shadowed=True)


def names(kind: str) -> list[str]:
    return sorted(registered(kind))


# Objects handed to ``factory.run`` in this process (a recipe made in a notebook), by kind and name.
_IN_PROCESS: dict[tuple[str, str], Any] = {}


def register_object(kind: str, name: str, obj: Any) -> None:
    """Make ``obj`` the plugin ``name`` of ``kind`` for this process. A name an installed plugin has is
    refused, and so is one already given to a different object (the same object again is fine)."""
    if name in registered(kind):
        raise ConfigError(
            f"{kind} name {name!r} is taken by an installed {kind} ({registered(kind)[name][0].origin}); "
            "give yours another name"
        )
    _IN_PROCESS[(kind, name)] = obj


def in_process(kind: str, name: str) -> bool:
    """Whether ``name`` is an object handed to this process (``register_object``), which no other process
    can load."""
    return (kind, name) in _IN_PROCESS


def find(kind: str, name: str, *, where: str) -> Plugin:
    """The plugin registered as ``name``; unknown or ambiguous is a ConfigError naming ``where``."""
    if (kind, name) in _IN_PROCESS:
        return Plugin(kind, name, "", "this process")
    plugins = [p for p in registered(kind).get(name, []) if not p.shadowed]
    if not plugins:
        close = difflib.get_close_matches(name, registered(kind), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"unknown {kind} {name!r} in {where}.{hint} Installed {kind}s: {', '.join(names(kind))} "
            f"(`factory {kind}s` lists them; a plugin of your own is named `package.module:OBJECT` or "
            "`path/to/file.py:OBJECT`)"
        )
    if len(plugins) > 1:
        raise ConfigError(
            f"{kind} {name!r} in {where} is registered by several packages "
            f"({', '.join(p.origin for p in plugins)}): uninstall one, or name it by reference "
            f"({' or '.join(p.target for p in plugins)})"
        )
    return plugins[0]


# -- references ------------------------------------------------------------------------------------------
def is_reference(value: str) -> bool:
    """``module:OBJECT`` or ``file.py:OBJECT``, as opposed to a registered name (which has no colon)."""
    return ":" in value


def absolute_reference(value: str, base_dir: Path) -> str:
    """A file reference with its path made absolute against ``base_dir`` (the config's folder), so that
    later commands, run from anywhere, load the same file. Module references are returned as they are."""
    target, sep, attr = value.rpartition(":")
    if sep and _is_file(target) and not Path(os.path.expanduser(target)).is_absolute():
        return f"{(base_dir / target).resolve()}:{attr}"
    return value


def _is_file(target: str) -> bool:
    return target.endswith(".py") or "/" in target or os.sep in target


def load(kind: str, value: str, *, where: str, base_dir: Path | None = None) -> Any:
    """The object a config names: a registered name, or a reference."""
    if not is_reference(value):
        return find(kind, value, where=where).load()
    if base_dir is not None:
        value = absolute_reference(value, base_dir)
    return _import_target(value, f"{kind} {value!r} in {where}")


def _import_target(value: str, what: str) -> Any:
    target, _, attr = value.rpartition(":")
    if not target or not attr.isidentifier():
        raise ConfigError(
            f"{what}: expected package.module:OBJECT or path/to/file.py:OBJECT (OBJECT a Python name)"
        )
    module = _import_file(target, what) if _is_file(target) else _import_module(target, what)
    try:
        return getattr(module, attr)
    except AttributeError:
        public = [n for n in vars(module) if not n.startswith("_") and n.isupper()]
        hint = f" (it defines {', '.join(sorted(public)[:8])})" if public else ""
        raise ConfigError(f"{what}: {target} has no {attr!r}{hint}") from None


def _import_module(name: str, what: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            raise ConfigError(
                f"{what}: no module named {exc.name!r}; install the package that provides it, or check the "
                "spelling"
            ) from None
        raise ConfigError(f"{what}: importing {name} failed: {_why(exc)}") from None
    except Exception as exc:
        raise ConfigError(f"{what}: importing {name} failed: {_why(exc)}") from None


def _import_file(target: str, what: str) -> Any:
    path = Path(os.path.expanduser(target)).resolve()
    if not path.is_file():
        state = "is a folder" if path.is_dir() else "does not exist"
        raise ConfigError(
            f"{what}: the file {path} {state}; point at a .py file (relative to the config file)"
        )
    name = "factory_plugin_" + hashlib.blake2b(str(path).encode(), digest_size=6).hexdigest()
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{what}: {path} cannot be loaded as Python (is it a .py file?)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up while it runs
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise ConfigError(f"{what}: running {path} failed: {_why(exc)}") from None
    return module


def _why(exc: BaseException) -> str:
    if isinstance(exc, SyntaxError):
        return f"SyntaxError: {exc.msg} ({Path(exc.filename or '?').name}, line {exc.lineno})"
    stdlib = sysconfig.get_paths()["stdlib"]
    tb, line = exc.__traceback__, ""
    while tb is not None:  # the innermost frame outside Python's own library: where the plugin broke
        name = tb.tb_frame.f_code.co_filename
        if not (name.startswith(stdlib) or name.startswith("<")):
            line = f" ({Path(name).name}, line {tb.tb_lineno})"
        tb = tb.tb_next
    return f"{type(exc).__name__}: {exc}{line}"


def checked(kind: str, obj: Any, what: str, expected: type | None) -> Any:
    """``obj`` when it is what a plugin of ``kind`` must be; else a ConfigError saying what it is."""
    ok = callable(obj) if expected is None else isinstance(obj, expected)
    if not ok:
        need = "a callable (spec, model, options) -> Teacher" if expected is None else expected.__name__
        raise ConfigError(f"{what} is a {type(obj).__name__}, not a {need}: see `factory {kind}s --help`")
    return obj


BUILTIN_PACKAGES = ("factory", "recipes", "filters", "trainers")


def code_version(fn: Callable[..., Any]) -> str:
    """For a function of a plugin: ``+`` and a digest of its module's source, so that a run of a plugin
    whose code changed is a new run. Empty for this package's own code (its recipes version their
    templates) and when the source cannot be read."""
    module = sys.modules.get(getattr(fn, "__module__", "") or "")
    if module is None or module.__name__.split(".")[0] in BUILTIN_PACKAGES:
        return ""
    path = getattr(module, "__file__", None)
    try:
        data = Path(path).read_bytes() if path else b""
    except OSError:
        return ""
    return "+" + hashlib.blake2b(data, digest_size=6).hexdigest() if data else ""


# -- listing -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Listed:
    plugin: Plugin
    obj: Any = None
    error: str | None = None


def listing(kind: str, check: Callable[[Any, str], Any]) -> list[Listed]:
    """Every registered plugin of ``kind``, each loaded and checked on its own: one that fails carries
    its error and the others still list."""
    out = []
    for name in names(kind):
        for plugin in registered(kind)[name]:
            what = f"{kind} {name!r} (from {plugin.origin})"
            try:
                out.append(Listed(plugin, check(plugin.load(), what)))
            except ConfigError as exc:
                out.append(Listed(plugin, error=str(exc)))
    return out


def summary_of(obj: Any) -> str:
    """A plugin's one-line summary: its ``summary``, else the first line of its (or its module's) docstring."""
    text = getattr(obj, "summary", None)
    if not isinstance(text, str) or not text:
        doc = obj.__doc__ if callable(obj) and obj.__doc__ else sys.modules[obj.__module__].__doc__
        text = (doc or "").strip().splitlines()[0] if doc and doc.strip() else ""
    return text
