"""`entities`: open-type entity labels from a teacher, after UniversalNER (Zhou et al., 2024): targeted
distillation of open named-entity recognition into a small student through one question per entity type.

One record per passage (stage ``label``). The teacher reads the passage and answers JSON: the entity types
it finds (it names them; the set is open) and each type's mentions. A mention is kept only where it stands
in the passage as whole words (found by string search, exact case first); the record keeps every occurrence
as character offsets. Types beyond ``max_types`` and mentions not in the passage are left out and listed
with the reason. An answer that cannot be read, or that leaves no mention, is kept with a reject reason.

Negative types: UniversalNER also asks for types the passage lacks, whose answer is ``[]``. Here they are
drawn from the types the teacher gave other passages of the same seed set (``negative_sources`` of them,
picked per passage from the seeds by a seeded draw): their requests are the very ones those passages are
labeled with, so the cache answers them and nothing is paid twice. Types this passage has are never drawn.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field

from factory.errors import ConfigError
from factory.keys import digest
from factory.seeds import Seed
from factory.types import Completion, Request, Sampling
from recipes.base import (
    Draft,
    Generate,
    Params,
    Recipe,
    Shape,
    Template,
    gather_all,
    logprobs_field,
    sample_seed,
    template_path,
)
from recipes.entity_spans import (
    answer_list,
    conversation_prefix,
    find_spans,
    question,
    teacher_entities,
)

STAGE = "label"
_ENDS = " \t\n.!?;:"  # a mention that is the passage itself, but for its final punctuation
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "entities": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "type": {"type": "string"},
                    "mentions": {"type": "array", "items": {"type": "string"}},
                },
                "required": ["type", "mentions"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["entities"],
    "additionalProperties": False,
}


class EntitiesParams(Params):
    negatives: int = Field(
        2, ge=0, le=32, description="Negative types per passage: types other passages have and this one "
        "lacks, asked with the answer []."
    )  # fmt: skip
    negative_sources: int = Field(
        4, ge=1, le=64, description="Other passages whose types the negatives are drawn from (their "
        "requests are the ones they are labeled with: cached, not paid twice)."
    )  # fmt: skip
    max_types: int = Field(
        8, ge=1, le=64, description="Most entity types kept per passage (the teacher's first ones)."
    )
    max_tokens: int = Field(384, ge=16, le=8192, description="Output token cap per answer.")
    temperature: float = Field(0.0, ge=0, le=2, description="Sampling temperature.")
    logprobs: int | None = logprobs_field()
    seed: int = Field(0, description="Base sampling seed; each passage's derives from it and the passage.")
    json_schema: bool = Field(
        True,
        description="Send the answer's JSON schema {entities: [{type, mentions}]} (enforced by openai and "
        "vllm teachers, ignored by others); the parser reads other JSON forms too.",
    )
    system: str | None = Field(
        "You are a careful annotator of named entities. Answer with JSON only.",
        description="System message (null for none).",
    )
    template: str | None = Field(
        None, description="Prompt template file (Jinja over `text`); default: entities_label.j2."
    )
    text_field: str = Field("text", description="Seed field holding the passage.")


@dataclass(frozen=True, slots=True)
class State:
    params: EntitiesParams
    template: Template
    passages: tuple[tuple[str, str], ...] = ()  # (seed id, text) of every seed; set by bind
    index: dict[str, int] = field(default_factory=dict)

    @property
    def version(self) -> str:
        return digest("entities1", [self.template.source, SCHEMA], length=12)


def prepare(params: EntitiesParams, resolve: Callable[[str], Path]) -> State:
    return State(params, Template.load(template_path(params.template, "entities_label.j2", resolve)))


def bind(state: State, seeds: list[Seed]) -> State:
    field_ = state.params.text_field
    passages = tuple((s.id, str(s.data[field_])) for s in seeds if s.data.get(field_) is not None)
    if state.params.negatives and len(passages) < 2:
        raise ConfigError(
            "params.negatives: negative types are drawn from other passages, and the seed file has "
            f"{len(passages)}; add passages or set negatives: 0"
        )
    return State(state.params, state.template, passages, {sid: i for i, (sid, _) in enumerate(passages)})


def label_request(state: State, text: str) -> Request:
    """The request that labels one passage: the same whichever passage asks for it (so that its answer is
    paid for once and read from the cache by the passages drawing negatives from it)."""
    p = state.params
    msgs = ([{"role": "system", "content": p.system}] if p.system else []) + [
        {"role": "user", "content": state.template.render(text=text)}
    ]
    sampling = Sampling(p.temperature, max_tokens=p.max_tokens, seed=sample_seed("ent-seed1", p.seed, text))
    return Request(tuple(msgs), sampling, sample_index=0, json_schema=SCHEMA if p.json_schema else None,
                   logprobs=p.logprobs)  # fmt: skip


def read_answer(text: str, c: Completion, max_types: int) -> dict[str, Any]:
    """The kept entities (with their spans), what was left out and why, and the reject reason, if any."""
    got = teacher_entities(c.text)
    if isinstance(got, str):
        cut = c.finish_reason == "length"
        reason = f"{got} (the answer was cut at max_tokens)" if cut else got
        return {"entities": [], "spans": [], "dropped": [], "reject": reason}
    entities, spans, dropped = [], [], []
    whole = text.strip(_ENDS).casefold()
    for n, (etype, mentions) in enumerate(got):
        if n >= max_types:
            dropped.append({"type": etype, "mention": None, "reason": f"over max_types ({max_types})"})
            continue
        kept = []
        for m in mentions:
            found = find_spans(text, m)
            if not found:
                dropped.append({"type": etype, "mention": m, "reason": "not in the passage"})
                continue
            if m.strip(_ENDS).casefold() == whole:
                dropped.append({"type": etype, "mention": m, "reason": "the whole passage"})
                continue
            surface = text[found[0][0] : found[0][1]]
            if surface in kept:
                continue
            kept.append(surface)
            spans += [{"start": s, "end": e, "type": etype, "text": text[s:e]} for s, e in found]
        if kept:
            entities.append({"type": etype, "mentions": kept})
        elif not mentions:
            dropped.append({"type": etype, "mention": None, "reason": "no mention listed"})
    spans = sorted({(s["start"], s["end"], s["type"]): s for s in spans}.values(),
                   key=lambda s: (s["start"], s["end"], s["type"]))  # fmt: skip
    reject = None if entities else "no mention found in the passage"
    return {"entities": entities, "spans": spans, "dropped": dropped, "reject": reject}


def _sources(state: State, seed_id: str) -> list[tuple[str, str]]:
    p, n = state.params, len(state.passages)
    own = state.index.get(seed_id)
    others = [i for i in range(n) if i != own] if n <= 4 * p.negative_sources + 1 else None
    rng = random.Random(sample_seed("ent-src1", p.seed, seed_id))
    if others is not None:
        picked = rng.sample(others, min(p.negative_sources, len(others)))
    else:  # a large seed set: draw indices without listing them all
        picked = []
        while len(picked) < p.negative_sources:
            i = rng.randrange(n)
            if i != own and i not in picked:
                picked.append(i)
    return [state.passages[i] for i in picked]


def draw_negatives(
    state: State, seed_id: str, own: Sequence[str], pools: Sequence[Sequence[str]]
) -> list[str]:
    have = set(own)
    pool = sorted({t for types in pools for t in types if t not in have})
    rng = random.Random(sample_seed("ent-neg1", state.params.seed, seed_id))
    return sorted(rng.sample(pool, min(state.params.negatives, len(pool))))


async def process(seed: Seed, state: State, generate: Generate) -> list[Draft]:
    p = state.params
    if p.negatives and not state.passages:
        raise RuntimeError("entities: bind(state, seeds) must run before process (factory.api.prepare does)")
    text = str(seed.data[p.text_field])
    sources = _sources(state, seed.id) if p.negatives else []
    answers = await gather_all(
        [generate(label_request(state, text)), *(generate(label_request(state, t)) for _, t in sources)]
    )
    own = read_answer(text, answers[0], p.max_types)
    types = [e["type"] for e in own["entities"]]
    negatives: list[str] = []
    if own["reject"] is None and p.negatives:
        pools = [[e["type"] for e in read_answer(t, c, p.max_types)["entities"]]
                 for (_, t), c in zip(sources, answers[1:], strict=True)]  # fmt: skip
        negatives = draw_negatives(state, seed.id, types, pools)
    payload = {
        "text": text, "entities": own["entities"], "negatives": negatives, "spans": own["spans"],
        "dropped": own["dropped"], "negative_sources": [sid for sid, _ in sources],
        "completion": answers[0].text, "finish_reason": answers[0].finish_reason,
    }  # fmt: skip
    n = len(own["spans"])
    return [
        Draft(stage=STAGE, sample_index=0, payload=payload, text=text,
              request_keys=tuple(c.key for c in answers), reject=own["reject"], score=float(n))
    ]  # fmt: skip


def conversation(p: dict[str, Any]) -> dict[str, Any] | None:
    """UniversalNER's conversation: the passage, then one question per type (the passage's types and the
    negatives, in an order drawn from the passage so that the empty ones are not always last)."""
    if not p["entities"]:
        return None
    asked = [(e["type"], e["mentions"]) for e in p["entities"]] + [(t, []) for t in p["negatives"]]
    asked.sort(key=lambda x: digest("ent-order1", [p["text"], x[0]], length=8))
    msgs = conversation_prefix(p["text"])
    for etype, mentions in asked:
        msgs += [{"role": "user", "content": question(etype)},
                 {"role": "assistant", "content": answer_list(mentions)}]  # fmt: skip
    return {"messages": msgs}


SHAPES = {
    "conversation": Shape(conversation, soft_labels=False),
    "spans": Shape(lambda p: {"text": p["text"], "spans": p["spans"]} if p["spans"] else None,
                   soft_labels=False),
}  # fmt: skip


RECIPE = Recipe(
    slug="entities",
    summary="Open-type entity labels (types and mentions as JSON) with sampled negative types, for "
    "UniversalNER-style targeted distillation.",
    params=EntitiesParams,
    prepare=prepare,
    process=process,
    bind=bind,
    required_fields=lambda p: [p.text_field],
    seed_format="one row per passage: {id?, text} (field name set by text_field)",
    record_format="text, entities [{type, mentions}], negatives [type], spans [{start, end, type, text}], "
    "dropped [{type, mention, reason}], negative_sources [seed id], completion, finish_reason",
    stages=(STAGE,),
    shapes=SHAPES,
)
