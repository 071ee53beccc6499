"""YAML that cannot exhaust memory or the stack: every user YAML file is read through :func:`load_yaml`.

PyYAML shares an aliased node instead of copying it, so an alias bomb (each level ten aliases of the one
before) loads in microseconds, and then grows without bound as soon as anything walks it (validation, JSON
for the store, a digest). A document nested thousands deep overflows the composer's recursion. Both are
refused before composing, from the parser's event stream, which is read iteratively: at most
``MAX_DEPTH`` levels of nesting, at most ``MAX_EXPANSION`` values added by aliases once expanded, and
no alias inside the node it names (a cycle).
"""

from __future__ import annotations

from typing import Any

import yaml

from factory.errors import ConfigError

MAX_DEPTH = 100
MAX_EXPANSION = 100_000

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _where(event: yaml.Event) -> str:
    mark = event.start_mark
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""


def check_events(text: str, source: str) -> None:
    """Raise ConfigError when the document nests deeper than MAX_DEPTH or its aliases expand it by more
    than MAX_EXPANSION values. Anything else (malformed YAML) is left to the real load to report."""
    parser = _Loader(text)
    size: dict[str, int] = {}  # anchor -> values in its node, aliases expanded
    stack: list[list[Any]] = []  # open collections: [anchor, values so far]
    open_anchors: set[str] = set()
    expanded = 0
    try:
        while parser.check_event():
            ev = parser.get_event()
            if isinstance(ev, yaml.AliasEvent):
                if ev.anchor in open_anchors:
                    raise ConfigError(
                        f"{source}: alias *{ev.anchor}{_where(ev)} refers to a node that contains it (a cycle); "
                        "write the value out instead"
                    )
                n = size.get(ev.anchor or "", 1)
                expanded += n
                if stack:
                    stack[-1][1] += n
                if expanded > MAX_EXPANSION:
                    raise ConfigError(
                        f"{source}: aliases (*{ev.anchor}{_where(ev)}) expand the document by more than "
                        f"{MAX_EXPANSION:,} values (the limit); write the values out or use fewer aliases"
                    )
            elif isinstance(ev, yaml.ScalarEvent):
                if ev.anchor:
                    size[ev.anchor] = 1
                if stack:
                    stack[-1][1] += 1
            elif isinstance(ev, yaml.CollectionStartEvent):
                if len(stack) >= MAX_DEPTH:
                    raise ConfigError(
                        f"{source}: nested more than {MAX_DEPTH} levels deep{_where(ev)} (the limit); "
                        "a config needs a few levels, check the brackets or indentation"
                    )
                if ev.anchor:
                    open_anchors.add(ev.anchor)
                stack.append([ev.anchor, 1])
            elif isinstance(ev, yaml.CollectionEndEvent):
                anchor, n = stack.pop()
                if anchor:
                    open_anchors.discard(anchor)
                    size[anchor] = n
                if stack:
                    stack[-1][1] += n
    except yaml.YAMLError as exc:
        if "nesting depth" in str(exc):  # libyaml's own limit (1000 levels), met while scanning ahead
            raise ConfigError(
                f"{source}: nested more than {MAX_DEPTH} levels deep (the limit); "
                "a config needs a few levels, check the brackets or indentation"
            ) from None
        return  # the load that follows reports it with its position
    finally:
        parser.dispose()


def load_yaml(text: str, source: str, loader: type = _Loader) -> Any:
    """``yaml.load`` with a SafeLoader (``loader`` must be one) after :func:`check_events`.
    ``source`` names the file (or flag) in messages; malformed YAML raises yaml.YAMLError as usual."""
    check_events(text, source)
    return yaml.load(text, Loader=loader)  # a SafeLoader (or a subclass of one)
