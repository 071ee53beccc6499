"""A recipe from two plain functions: ``prompt(row) -> messages`` and ``parse(row, text) -> record | None``.

    from recipes.functions import recipe

    def prompt(row):
        return f"Translate to French: {row['text']}"      # or a list of {"role", "content"} messages

    def parse(row, text):
        text = text.strip()
        return {"english": row["text"], "french": text} if text else None   # None: rejected

    TRANSLATE = recipe("translate", prompt, parse, required=["text"])

The result is an ordinary :class:`recipes.base.Recipe`: runs get the request cache, the journal, resume,
the ledger and the dataset card like the built-in recipes. Its params (``n``, ``temperature``, ``top_p``,
``max_tokens``, ``seed``, ``system``, ``teacher``) are set in the config's ``params`` as usual.

What ``parse`` returns becomes the record's payload (with ``completion`` added when it has none); a
``text`` field, when there is one, is the record's text (what dedup filters read), else the completion.
``None`` rejects the sample ("parse returned None"), and an exception rejects it with its message: either
way the record is kept in the store, and the ledger says why it is not curated. A run's identity holds the
source of both functions, so changing either one starts a new run (unchanged requests still come from the
cache).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from factory.errors import ConfigError
from factory.keys import digest
from factory.seeds import Seed
from factory.types import Request, Sampling
from recipes.base import Draft, Generate, Recipe, Shape, sample_seed
from recipes.prompt import SampledParams

Prompt = Callable[[dict[str, Any]], "str | Sequence[dict[str, str]]"]
Parse = Callable[[dict[str, Any], str], "dict[str, Any] | None"]
STAGE = "main"


@dataclass(frozen=True, slots=True)
class State:
    params: SampledParams
    prompt: Prompt
    parse: Parse
    version: str


def _source(fn: Callable[..., Any]) -> str:
    """The function's source (a notebook cell's too), else its compiled code: what the run id holds."""
    try:
        return inspect.getsource(fn)
    except (OSError, TypeError):
        code = getattr(fn, "__code__", None)
        return repr((code.co_code, code.co_consts)) if code is not None else repr(fn)


def messages_of(name: str, value: Any) -> tuple[dict[str, str], ...]:
    """What ``prompt`` returned, as chat messages; anything else is a ConfigError naming the recipe."""
    if isinstance(value, str):
        return ({"role": "user", "content": value},)
    if isinstance(value, (list, tuple)) and value:
        out = []
        for m in value:
            if not (
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            ):
                break
            out.append({"role": m["role"], "content": m["content"]})
        else:
            return tuple(out)
    raise ConfigError(
        f"recipe {name!r}: prompt(row) returned {type(value).__name__}; return a string (one user message) "
        'or a list of {"role": ..., "content": ...} messages'
    )


def recipe(
    name: str,
    prompt: Prompt,
    parse: Parse,
    *,
    required: Sequence[str] = (),
    summary: str = "",
    record_format: str = "",
) -> Recipe:
    """A :class:`Recipe` named ``name`` from the two functions (see the module docstring). ``required``
    are the seed fields every row must have."""
    if not (callable(prompt) and callable(parse)):
        raise TypeError("recipe(name, prompt, parse): prompt and parse must be functions")
    version = digest("fnrecipe1", [name, _source(prompt), _source(parse)], length=12)

    def prepare(params: SampledParams, resolve: Any) -> State:
        return State(params, prompt, parse, version)

    async def process(seed: Seed, state: State, generate: Generate) -> list[Draft]:
        p = state.params
        msgs = messages_of(name, state.prompt(dict(seed.data)))
        if p.system:
            msgs = ({"role": "system", "content": p.system}, *msgs)
        reqs = [
            Request(
                msgs,
                Sampling(
                    p.temperature, p.top_p, p.max_tokens, seed=sample_seed(f"{name}-seed1", p.seed, msgs, i)
                ),
                sample_index=i,
                logprobs=p.logprobs,
            )
            for i in range(p.n)
        ]
        results = await asyncio.gather(*(generate(r, teacher=p.teacher) for r in reqs))
        last_user = next((m["content"] for m in reversed(msgs) if m["role"] == "user"), "")
        return [_draft(state.parse, seed, last_user, i, c.text, c.key) for i, c in enumerate(results)]

    return Recipe(
        slug=name,
        summary=summary
        or (inspect.getdoc(parse) or "").split("\n")[0]
        or f"{name}: prompt and parse functions",
        params=SampledParams,
        prepare=prepare,
        process=process,
        required_fields=lambda p: list(required),
        seed_format=", ".join(required) or "any fields prompt(row) reads",
        record_format=record_format or "what parse(row, text) returns",
        stages=(STAGE,),
        teacher_roles=lambda p: [p.teacher] if p.teacher != "default" else [],
        shapes={"prompt_completion": Shape(_prompt_completion)},
    )


def _draft(parse: Parse, seed: Seed, prompt: str, i: int, text: str, key: str | None) -> Draft:
    """The record of one sample; what ``parse`` says is kept in the payload beside the prompt (the last
    user message) and the completion."""
    keys = (key,) if key else ()
    try:
        record = parse(dict(seed.data), text)
    except Exception as exc:  # the user's parser: its failure rejects this sample, with the reason
        return Draft(
            STAGE, i, {"completion": text}, text, keys, reject=f"parse failed: {type(exc).__name__}: {exc}"
        )
    if record is None:
        return Draft(STAGE, i, {"completion": text}, text, keys, reject="parse returned None")
    if not isinstance(record, dict):
        why = f"parse returned a {type(record).__name__}, not a dict or None"
        return Draft(STAGE, i, {"completion": text}, text, keys, reject=why)
    try:
        orjson.dumps(record)
    except TypeError as exc:
        return Draft(
            STAGE,
            i,
            {"completion": text},
            text,
            keys,
            reject=f"parse returned a record that is not JSON: {exc}",
        )
    payload = {"prompt": prompt, "completion": text, **record}
    body = record.get("text")
    return Draft(STAGE, i, payload, body if isinstance(body, str) else text, keys)


def _prompt_completion(payload: dict[str, Any]) -> dict[str, Any] | None:
    return {"prompt": payload["prompt"], "completion": payload["completion"]}
