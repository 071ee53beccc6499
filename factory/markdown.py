"""Small Markdown pieces for the cards the factory writes: tables whose cells cannot break a row, code
fences that their content cannot close, and values cut to a readable length."""

from __future__ import annotations

from typing import Any

import orjson


def compact_json(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def indented_json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2, default=str).decode()


def cell(value: Any, limit: int = 160) -> str:
    """One table cell: on one line, at most ``limit`` characters, pipes escaped."""
    text = value if isinstance(value, str) else compact_json(value)
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("|", "\\|")


def table(head: list[str], rows: list[list[Any]]) -> list[str]:
    """A table as lines, followed by a blank line."""
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return [*out, ""]


def fence(text: str, lang: str = "") -> list[str]:
    """A fenced code block as lines, its fence longer than any run of backticks inside, then a blank line."""
    longest = run = 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    tick = "`" * max(3, longest + 1)
    return [tick + lang, text.rstrip("\n"), tick, ""]


def scalar(v: Any) -> str:
    """A value as JSON spells scalars: null, true, false; anything else as str()."""
    return "null" if v is None else "true" if v is True else "false" if v is False else str(v)


def shorten(v: Any, max_chars: int = 300, max_items: int = 12) -> Any:
    """A JSON-like value made readable: long strings and lists cut (saying how much was left out),
    nested values likewise."""
    if isinstance(v, str) and len(v) > max_chars:
        return f"{v[:max_chars]}… ({len(v)} chars)"
    if isinstance(v, dict):
        return {k: shorten(x, max_chars, max_items) for k, x in v.items()}
    if isinstance(v, list | tuple):
        items = [shorten(x, max_chars, max_items) for x in v[:max_items]]
        return items + ([f"… ({len(v) - max_items} more)"] if len(v) > max_items else [])
    return v
