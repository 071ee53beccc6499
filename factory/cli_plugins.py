"""`factory recipes|filters|teachers` (the plugins, with where each comes from) and `factory new recipe|filter
NAME` (a plugin package to start from)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def add_plugin_parsers(sub: Any) -> None:
    fl = sub.add_parser("filters", help="list the filters: built-in and plugins, with where each comes from")
    fl.add_argument("-v", "--verbose", action="store_true", help="also show params (threshold or scoring)")
    fl.set_defaults(fn=cmd_filters)
    rc = sub.add_parser("recipes", help="list the recipes: built-in and plugins, with where each comes from")
    rc.add_argument("-v", "--verbose", action="store_true", help="also show seed/record formats and params")
    rc.set_defaults(fn=cmd_recipes)
    t = sub.add_parser(
        "teachers",
        help="list teacher backends (built-in and plugins) and whether their engines are installed",
    )
    t.set_defaults(fn=cmd_teachers)
    nw = sub.add_parser("new", help="start a plugin: a package with a recipe or filter and a passing test")
    kinds = nw.add_subparsers(dest="new_command", required=True, metavar="{recipe,filter}")
    for kind in ("recipe", "filter"):
        k = kinds.add_parser(
            kind, help=f"a package NAME/ holding a {kind} named NAME, its entry point and a test"
        )
        k.add_argument("name", metavar="NAME", help="snake_case name of the package and the " + kind)
        k.add_argument("--dir", default=".", help="folder to create NAME/ in (default: here)")
        k.set_defaults(fn=cmd_new, kind=kind)


def cmd_new(args: argparse.Namespace) -> int:
    from factory.scaffold import scaffold

    root = scaffold(args.kind, args.name, Path(args.dir))
    obj = "RECIPE" if args.kind == "recipe" else "FILTER"
    print(
        f"created {root}/: {args.name}/__init__.py holds the {args.kind} ({obj}), tests/test_{args.name}.py runs it"
    )
    print(f"next: cd {root} && python -m pytest tests  (passes as written)")
    print(f"      pip install -e {root}  (then `factory {args.kind}s` lists {args.name})")
    return 0


def cmd_filters(args: argparse.Namespace) -> int:
    from filters import all_filters

    def details(f: Any, w: int) -> None:
        _params_lines(f.params, w, lambda n, f=f: "threshold" if n in f.thresholds else "scoring")

    return _list_plugins(all_filters(), lambda x: x.obj.summary, details if args.verbose else None)


def _list_plugins(
    listed: list[Any], summary: Callable[[Any], str], details: Callable[[Any, int], None] | None = None
) -> int:
    """One line per plugin: name, where it comes from, summary; a plugin that cannot be loaded shows why
    (and the command exits 1), the others list as usual."""
    w = max(len(x.plugin.name) for x in listed)
    ow = max(len(x.plugin.origin) for x in listed)
    failed = 0
    for x in listed:
        head = f"{x.plugin.name:<{w}}  {x.plugin.origin:<{ow}}  "
        if x.error is not None:
            failed += 1
            print(f"{head}cannot be loaded: {x.error}")
            continue
        print(head + summary(x))
        if details is not None and not x.plugin.shadowed:
            details(x.obj, w)
    if failed:
        print(f"{failed} plugin(s) above cannot be loaded; the others can be used", file=sys.stderr)
    return 1 if failed else 0


def _params_lines(model: Any, indent: int, kinds: Any = None) -> None:
    """One line per param of a recipe or filter: name = default (kind): description."""
    for name, fld in model.model_fields.items():
        default = "required" if fld.is_required() else repr(fld.get_default(call_default_factory=True))
        kind = f" ({kinds(name)})" if kinds else ""
        print(f"{'':<{indent}}   {name} = {default}{kind}: {fld.description or ''}")


def cmd_recipes(args: argparse.Namespace) -> int:
    from recipes import all_recipes

    def details(r: Any, w: int) -> None:
        print(f"{'':<{w}} seeds:   {r.seed_format}")
        print(f"{'':<{w}} records: {r.record_format}")
        shapes = ["records", *r.shapes, *(["messages"] if "prompt_completion" in r.shapes else [])]
        print(f"{'':<{w}} export:  --as {' | '.join(shapes)}")
        try:
            implied = r.default_filters(r.params())
        except ValueError:  # params without defaults: the default filters depend on them
            implied = []
        if implied:
            print(
                f"{'':<{w}} filters: {', '.join(implied)} by default (`curation: {{recipe_filters: false}}`: off)"
            )
        _params_lines(r.params, w)

    return _list_plugins(all_recipes(), lambda x: x.obj.summary, details if args.verbose else None)


# The built-in engines' libraries: (module, the extra that installs it).
ENGINE_EXTRAS = {
    "vllm": ("vllm", "cpu"), "transformers": ("transformers", "embedded"), "embedded": ("transformers", "embedded"),
}  # fmt: skip


def cmd_teachers(args: argparse.Namespace) -> int:
    import importlib.util

    from factory import plugins

    def summary(x: Any) -> str:
        need = ENGINE_EXTRAS.get(x.plugin.name) if x.plugin.builtin else None
        if need is None:
            return plugins.summary_of(x.obj)
        ok = importlib.util.find_spec(need[0]) is not None
        return plugins.summary_of(x.obj) + (
            " [installed]" if ok else f" [not installed: pip install '.[{need[1]}]']"
        )

    return _list_plugins(
        plugins.listing("teacher", lambda obj, what: plugins.checked("teacher", obj, what, None)), summary
    )
