"""Text handling of the `boundary` recipe: the teacher's numbered lists, and its relabel answers mapped
onto the candidate labels. Pure functions, no model."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping

import orjson

_ITEM = re.compile(r"^\s*(?:\*\*)?(?:\(?\d{1,3}\s*[.):\]]|\d{1,3}\s+[-–]|[-*•–])(?:\*\*)?\s+(.*\S)\s*$")
_QUOTES = "\"'“”‘’`«»"
_PREFIX = re.compile(
    r"^\s*(?:the\s+)?(?:intent|label|answer|category|class)(?:\s+is)?\s*[:\-]?\s*", flags=re.IGNORECASE
)
NAME_CUTOFF = 0.75  # difflib ratio for a misspelt label ("card_lots")
DESCRIPTION_CUTOFF = 0.8  # difflib ratio for an answer that restates a candidate's description


def norm_label(s: str) -> str:
    """Case-, space-, underscore- and punctuation-insensitive form of a label."""
    return re.sub(r"[^0-9a-z]+", "_", s.lower()).strip("_")


def _clean_item(s: str) -> str:
    s = s.strip().strip("*_").strip()
    m = re.match(r"^[\"“«](.+?)[\"”»](?:\s.*)?$", s)  # "the utterance" (a note after it)
    if m:
        s = m.group(1)
    elif len(s) > 1 and s[0] in _QUOTES and s[-1] in _QUOTES:
        s = s[1:-1]
    return " ".join(s.split())


def parse_numbered_list(text: str, finish_reason: str | None = None) -> list[tuple[str, bool]]:
    """The items of a numbered or bulleted list ("1." "1)" "(1)" "1 -" "- " "* "), as (item, complete).

    Lines that are not list items (a preamble, blank lines, chatter after the list) are skipped; quotes and
    markdown bold around an item are removed. An item on the completion's last line is incomplete when the
    teacher stopped at max_tokens (``finish_reason == "length"``)."""
    lines = text.splitlines()
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    out = []
    for i, line in enumerate(lines):
        m = _ITEM.match(line)
        if m:
            item = _clean_item(m.group(1))
            if item:
                out.append((item, not (finish_reason == "length" and i == last)))
    return out


def _answer_text(answer: str) -> str:
    """The label part of an answer: the ``label`` of a JSON object, else the first line without an
    "Intent:" prefix, quotes or a final full stop."""
    s = answer.strip()
    if s.startswith("{"):
        try:
            obj = orjson.loads(s)
        except orjson.JSONDecodeError:
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("label"), str):
            return str(obj["label"])
    first = next((line for line in s.splitlines() if line.strip()), "")
    return _PREFIX.sub("", first).strip().strip(_QUOTES + "*.,;:!").strip()


def match_label(
    answer: str, candidates: list[str], descriptions: Mapping[str, str] | None = None
) -> tuple[str | None, str]:
    """Map a teacher's answer to a candidate label: ``(label, how)``, or ``(None, why not)``.

    In order: ``exact``; ``normalized`` (ignoring case, spaces, underscores, punctuation, word order);
    ``substring`` (a candidate named in the answer, the first one named wins; or the answer inside exactly
    one candidate name); ``close`` (difflib's closest name); ``description`` (the answer restates one
    candidate's description, as small teachers do)."""
    listed = ", ".join(candidates)
    if not answer.strip():
        return None, f"empty answer; expected one of the candidates ({listed})"
    if answer.strip() in candidates:
        return answer.strip(), "exact"
    first = _answer_text(answer)
    by_norm = {norm_label(c): c for c in candidates}
    key = norm_label(first)
    if key in by_norm:
        return by_norm[key], "normalized"
    words = sorted(key.split("_"))
    same_words = [c for k, c in by_norm.items() if sorted(k.split("_")) == words]
    if len(same_words) == 1:  # "lost card" for card_lost
        return same_words[0], "normalized"
    whole = f"_{norm_label(answer)}_"
    named = [(whole.find(f"_{k}_"), -len(k), c) for k, c in by_norm.items() if f"_{k}_" in whole]
    if named:
        return min(named)[2], "substring"
    inside = [c for k, c in by_norm.items() if len(key) >= 3 and key in k]
    if len(inside) == 1:
        return inside[0], "substring"
    close = difflib.get_close_matches(key, list(by_norm), n=1, cutoff=NAME_CUTOFF) if key else []
    if close:
        return by_norm[close[0]], "close"
    if descriptions and key:
        ratios = [
            (difflib.SequenceMatcher(None, key, norm_label(descriptions[c])).ratio(), c)
            for c in candidates
            if c in descriptions
        ]
        best = max(ratios, default=(0.0, ""))
        if best[0] >= DESCRIPTION_CUTOFF:
            return best[1], "description"
    return None, f"answer {answer.strip()[:80]!r} is not one of the candidates ({listed})"
