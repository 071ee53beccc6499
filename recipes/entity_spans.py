"""Entity answers as text: reading a teacher's JSON (types and their mentions), finding each mention in the
passage, reading a student's JSON list of mentions, and the UniversalNER-style conversation both are taught
and asked in. Shared by the ``entities`` recipe and the entity evaluation (trainers/entity_eval.py)."""

from __future__ import annotations

import re
from typing import Any

import orjson

READ = "I've read this text."
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S | re.I)
_SPACE = re.compile(r"\s+")
_MENTION_KEYS = ("mentions", "entities", "spans", "values", "items")
_TEXT_KEYS = ("text", "mention", "entity", "name", "span", "value")


def question(entity_type: str) -> str:
    return f"What describes {entity_type} in the text?"


def conversation_prefix(text: str) -> list[dict[str, str]]:
    """The turns before the first question: the passage, and the assistant's acknowledgement."""
    return [{"role": "user", "content": f"Text: {text}"}, {"role": "assistant", "content": READ}]


def answer_list(mentions: list[str]) -> str:
    """A question's answer: a JSON list of the mentions (``[]`` for a type the passage lacks)."""
    return orjson.dumps(mentions).decode()


def norm_type(value: Any) -> str:
    """Type names compare in lower case, with ``_``/``-`` and runs of spaces read as one space."""
    return _SPACE.sub(" ", str(value).replace("_", " ").replace("-", " ")).strip().casefold()


def norm_mention(value: Any) -> str:
    return _SPACE.sub(" ", str(value)).strip()


def _json_in(text: str, opener: str, closer: str) -> Any:
    start, end = text.find(opener), text.rfind(closer)
    if start < 0 or end <= start:
        return None
    try:
        return orjson.loads(text[start : end + 1])
    except orjson.JSONDecodeError:
        return None


def load_json(text: str) -> Any:
    """The JSON value in an answer: the whole answer, else a fenced block, else the outermost {...} or
    [...] span. None when there is none."""
    t = text.strip()
    fenced = _FENCE.search(t)
    for cand in (t, fenced.group(1).strip() if fenced else None):
        if not cand:
            continue
        try:
            return orjson.loads(cand)
        except orjson.JSONDecodeError:
            pass
        first = min((i for i in (cand.find("{"), cand.find("[")) if i >= 0), default=-1)
        if first >= 0:
            pair = ("{", "}") if cand[first] == "{" else ("[", "]")
            found = _json_in(cand, *pair)
            if found is not None:
                return found
    return None


def _strings(value: Any) -> list[str] | None:
    """Mentions from a list of strings (or of {text: ...} objects), a lone string, or null."""
    if value is None:
        return []
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return [str(value)]
    if isinstance(value, dict):
        for k in _TEXT_KEYS:
            if isinstance(value.get(k), str | int | float):
                return [str(value[k])]
        return None
    if isinstance(value, list):
        out: list[str] = []
        for item in value:
            got = _strings(item) if not isinstance(item, list) else None
            if got is None:
                return None
            out.extend(got)
        return out
    return None


def teacher_entities(answer: str) -> list[tuple[str, list[str]]] | str:
    """(type, mentions) pairs in the teacher's order, or why none can be read. Read forms:
    ``{"entities": [{"type": T, "mentions": [...]}]}``, ``{"entities": {T: [...]}}``, ``{T: [...], ...}``,
    and a list of ``{"type": T, "mentions": [...]}`` or of ``{"type": T, "text": M}``."""
    data = load_json(answer)
    if data is None:
        return "no JSON in the answer"
    if isinstance(data, dict) and "entities" in data and isinstance(data["entities"], list | dict):
        data = data["entities"]
    pairs: list[tuple[str, Any]] = []
    if isinstance(data, dict):
        pairs = list(data.items())
    elif isinstance(data, list):
        for item in data:
            if not isinstance(item, dict):
                return "the entity list holds something other than objects"
            t = item.get("type", item.get("label", item.get("entity_type")))
            if not isinstance(t, str):
                return "an entity has no type"
            value = next((item[k] for k in _MENTION_KEYS if k in item), None)
            if value is None:
                value = next((item[k] for k in _TEXT_KEYS if k in item), None)
            pairs.append((t, value))
    else:
        return "the JSON is not an object or a list of entities"
    out: dict[str, list[str]] = {}
    for t, value in pairs:
        mentions = _strings(value)
        if mentions is None:
            return f"the mentions of type {str(t)[:40]!r} are not a list of strings"
        name = norm_type(t)
        if name:
            seen = out.setdefault(name, [])
            seen.extend(m for m in (norm_mention(x) for x in mentions) if m and m not in seen)
    return list(out.items())


def find_spans(text: str, mention: str) -> list[tuple[int, int]]:
    """Every place ``mention`` stands in ``text`` as whole words (exact case first; else ignoring case),
    as (start, end) character offsets. Runs of spaces in the mention match any run of spaces."""
    parts = [re.escape(p) for p in mention.split()]
    if not parts:
        return []
    core = r"\s+".join(parts)
    left = r"(?<!\w)" if re.match(r"\w", mention) else ""
    right = r"(?!\w)" if re.search(r"\w$", mention) else ""
    for flags in (0, re.IGNORECASE):
        found = [(m.start(), m.end()) for m in re.finditer(left + core + right, text, flags)]
        if found:
            return found
    return []


def student_mentions(answer: str) -> list[str] | None:
    """The mentions a student's answer lists: a JSON list (of strings or {text: ...}), a JSON string, or
    ``{"mentions": [...]}``; "none"/"[]"/empty is no mention. None when the answer cannot be read."""
    t = answer.strip()
    if t.casefold().rstrip(".") in ("", "none", "no", "n/a", "[]", "null"):
        return []
    data = load_json(t)
    if isinstance(data, dict):
        data = next((data[k] for k in _MENTION_KEYS if k in data), data)
    got = _strings(data) if data is not None else None
    if got is None:
        return None
    out: list[str] = []
    for m in (norm_mention(x) for x in got):
        if m and m not in out:
            out.append(m)
    return out
