"""Reasoning kept apart from the answer: think tags in a model's text, and the teacher option that names them.

Reasoning models put their thinking before the answer. Servers with a reasoning parser (DeepSeek's API,
vLLM's ``--reasoning-parser``) return it in ``message.reasoning_content`` (some name it ``reasoning``);
others, and local engines, leave it in the text between tags: ``<think>…</think>answer``. Every teacher
splits such text the same way, by ``split``:

* text that starts (after white space) with the opening tag: what stands before the first closing tag is
  the reasoning, what follows it (leading white space dropped) the answer;
* text that holds the closing tag but no opening tag before it (chat templates of DeepSeek-R1 and Qwen3
  put the opening tag in the prompt): the same, from the start of the text;
* an opening tag that is never closed (an answer cut by ``max_tokens``, ``finish_reason == "length"``, or
  stopped by a stop sequence inside the trace): the whole text is reasoning and there is no answer (an
  empty ``text``); a filter such as ``truncated`` drops the record by its finish_reason;
* anything else is all answer, with no reasoning.

The option ``think_tags`` (a list of two strings, the opening and the closing tag; default
``["<think>", "</think>"]``; ``null`` or ``false`` keeps the text whole) is part of a teacher's identity
when it is not the default, since it changes what is stored as the answer.
"""

from __future__ import annotations

from typing import Any

from factory.errors import ConfigError

DEFAULT_THINK_TAGS: tuple[str, str] = ("<think>", "</think>")

Tags = tuple[str, str] | None


def think_tags(value: Any, *, where: str = "teacher.options.think_tags") -> Tags:
    """The ``think_tags`` option as (open, close), or None when splitting is off. Absent: the default."""
    if value is None or value is False:
        return None
    if value is True:
        return DEFAULT_THINK_TAGS
    if (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, str) and v.strip() for v in value)
        and value[0] != value[1]
    ):
        return (str(value[0]), str(value[1]))
    raise ConfigError(
        f"{where} must be two different, non-empty strings, the opening and the closing tag "
        f'(e.g. ["<think>", "</think>"]), or null to keep the text whole; got {value!r:.200}'
    )


def tags_identity(tags: Tags) -> dict[str, Any]:
    """What the tags add to a teacher's identity: nothing for the default, so that keys stay as they were."""
    if tags == DEFAULT_THINK_TAGS:
        return {}
    return {"think_tags": list(tags) if tags is not None else None}


def split(text: str, tags: Tags) -> tuple[str, str | None]:
    """(answer, reasoning) of a model's text under ``tags`` (see the module's rules). Reasoning is None when
    the text holds none; an empty pair of tags gives None too."""
    if tags is None:
        return text, None
    opening, closing = tags
    body = text.lstrip()
    if body.startswith(opening):
        body = body[len(opening) :]
        end = body.find(closing)
        if end == -1:  # never closed: cut inside the trace
            return "", body.strip() or None
        return body[end + len(closing) :].lstrip(), body[:end].strip() or None
    end = text.find(closing)
    if end != -1 and opening not in text[:end]:
        return text[end + len(closing) :].lstrip(), text[:end].strip() or None
    return text, None


def server_reasoning(message: Any) -> str | None:
    """The reasoning a server returned beside the content (``reasoning_content``, else ``reasoning``)."""
    if not isinstance(message, dict):
        return None
    for name in ("reasoning_content", "reasoning"):
        value = message.get(name)
        if isinstance(value, str) and value:
            return value
    return None
