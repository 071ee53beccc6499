"""`commonsense`: ATOMIC-style if-then knowledge from a teacher, after Symbolic Knowledge Distillation
(West et al., NAACL 2022) and I2D2 (Bhagavatula et al., 2023).

Two stages per seed event. ``events`` (optional, ``new_events > 0``): the teacher writes new events
few-shot from the seed event and example events. ``tails``: for every head (the seed event and each new
event that parsed) and every selected relation, ``samples`` tails, each prompted with the relation's own
phrasing ("PersonX bakes bread. Before that, PersonX needed") and its examples. Every completion becomes a
record; one that does not parse carries a ``reject`` reason. A critic filter scores the tails later.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import jinja2
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from factory.errors import ConfigError
from factory.keys import digest
from factory.seeds import Seed
from factory.types import Completion, Request, Sampling
from factory.yamlsafe import load_yaml
from recipes.base import (
    TEMPLATES,
    Draft,
    Generate,
    Params,
    Recipe,
    Shape,
    Template,
    gather_all,
    logprobs_field,
    sample_seed,
)

EVENTS, TAILS = "events", "tails"
T = TypeVar("T")


class CommonsenseParams(Params):
    relations: list[str] | None = Field(
        None, min_length=1, description="Relations to ask for, by name; null: every relation in the file."
    )
    relations_file: str | None = Field(
        None, description="Relations YAML (see the shipped one); default: commonsense_relations.yaml."
    )
    samples: int = Field(3, ge=1, le=64, description="Tails sampled per (event, relation) pair.")
    new_events: int = Field(
        0, ge=0, le=64, description="New events generated per seed event; 0: no events stage."
    )
    event_examples: int = Field(
        4, ge=0, le=32, description="Example events (heads of the relation examples) shown per events prompt."
    )
    tail_temperature: float = Field(0.9, ge=0, le=2, description="Sampling temperature of the tails stage.")
    event_temperature: float = Field(1.0, ge=0, le=2, description="Sampling temperature of the events stage.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass (both stages).")
    max_tokens: int = Field(32, ge=1, le=4096, description="Output token cap per completion (both stages).")
    max_tail_words: int = Field(12, ge=1, description="A longer tail is rejected.")
    max_event_words: int = Field(20, ge=1, description="A longer new event is rejected.")
    logprobs: int | None = logprobs_field()
    seed: int = Field(
        0,
        description="Base sampling seed; each request's seed is derived from it, its prompt and its sample number.",
    )
    stop: list[str] = Field(
        default_factory=lambda: ["\n\n"],
        description="Stop sequences (both stages); only the first line of a completion is parsed anyway.",
    )
    event_field: str = Field("event", description="Seed field holding the event (a PersonX sentence).")
    system: str | None = Field(
        "You complete commonsense knowledge about everyday events. Answer with a short phrase only.",
        description="System message (null for none).",
    )
    tails_template: str | None = Field(
        None, description="Tails prompt template; default: commonsense_tails.j2."
    )
    events_template: str | None = Field(
        None, description="Events prompt template; default: commonsense_events.j2."
    )


# -- the relations file --------------------------------------------------------------------------
class _Example(BaseModel):
    model_config = ConfigDict(extra="forbid")
    head: str = Field(min_length=1)
    tail: str = Field(min_length=1)


class _RelationSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$")
    description: str = ""
    prompt: str = Field(min_length=1)
    examples: list[_Example] = Field(default_factory=list)


class _RelationsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    relations: list[_RelationSpec] = Field(min_length=1)


@dataclass(frozen=True, slots=True)
class Relation:
    name: str
    description: str
    prompt: Template
    # the phrasing after the head ("Before that, PersonX needed") and its word suffixes ("PersonX needed",
    # "needed"), longest first: a model that echoes one of them before its tail has it stripped
    echoes: tuple[str, ...]
    shots: tuple[dict[str, str], ...]  # {head, tail, prompt}


_PROBE = "PersonX probes the template"


def _relation(spec: _RelationSpec, path: Path, n: int) -> Relation:
    where = f"{path}: relations[{n}] ({spec.name})"
    try:
        tpl = Template(spec.prompt, f"{path.name}:{spec.name}")
        probe = tpl.render(head=_PROBE)
        shots = tuple(
            {"head": e.head, "tail": e.tail, "prompt": tpl.render(head=e.head)} for e in spec.examples
        )
    except jinja2.TemplateError as exc:
        raise ConfigError(f"{where}.prompt: {exc}; the prompt may use only {{{{ head }}}}") from None
    if _PROBE not in probe:
        raise ConfigError(f"{where}.prompt must contain {{{{ head }}}} (the event), got {spec.prompt!r}")
    cue = probe.split(_PROBE, 1)[1].lstrip(" .,;:").split()
    echoes = tuple(" ".join(cue[i:]) for i in range(len(cue)))
    return Relation(spec.name, spec.description, tpl, echoes, shots)


def load_relations(path: Path) -> tuple[list[Relation], dict[str, Any]]:
    """The relations in a file, in file order, and the file's parsed content (what the version hashes)."""
    try:
        # libyaml's loader when built in: the pure-Python one takes ~0.1 s on this small file
        data = load_yaml(path.read_text(encoding="utf-8"), str(path))
        parsed = _RelationsFile.model_validate(data)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: malformed YAML: {str(exc).splitlines()[0]}") from None
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        raise ConfigError(
            f"{path}: field {loc!r}: {err['msg']} (format: see commonsense_relations.yaml)"
        ) from None
    names = [r.name for r in parsed.relations]
    dup = next((x for x in names if names.count(x) > 1), None)
    if dup:
        raise ConfigError(f"{path}: relation {dup!r} is defined twice; relation names must be unique")
    return [_relation(r, path, n) for n, r in enumerate(parsed.relations)], parsed.model_dump()


def _select(relations: list[Relation], wanted: list[str] | None, path: Path) -> tuple[Relation, ...]:
    if wanted is None:
        return tuple(relations)
    by_name = {r.name: r for r in relations}
    for name in wanted:
        if name not in by_name:
            close = difflib.get_close_matches(name, by_name, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"params.relations: unknown relation {name!r}.{hint} Valid relations (from {path.name}): "
                f"{', '.join(by_name)}"
            )
    if len(set(wanted)) != len(wanted):
        raise ConfigError(f"params.relations: a relation is listed twice in {wanted}; list each once")
    return tuple(by_name[n] for n in wanted)


@dataclass(frozen=True, slots=True)
class State:
    params: CommonsenseParams
    tails: Template
    events: Template
    relations: tuple[Relation, ...]
    example_events: tuple[str, ...]  # distinct heads of every relation's examples, in file order
    relations_content: dict[str, Any]

    @property
    def version(self) -> str:
        return digest("cs1", [self.tails.source, self.events.source, self.relations_content], length=12)


def _find(value: str | None, default: str, resolve: Callable[[str], Path], field: str) -> Path:
    """A user file (resolved like other config paths), else one shipped in recipes/templates/."""
    if value is None:
        return TEMPLATES / default
    path = resolve(value)
    if path.is_file():
        return path
    if (TEMPLATES / value).is_file():
        return TEMPLATES / value
    raise ConfigError(f"params.{field}: file {value!r} not found (looked at {path} and in {TEMPLATES})")


def _load_template(value: str | None, default: str, resolve: Callable[[str], Path], field: str) -> Template:
    path = _find(value, default, resolve, field)
    try:
        return Template.load(path)
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(f"params.{field}: {path}, line {exc.lineno}: {exc.message}") from None


def prepare(params: CommonsenseParams, resolve: Callable[[str], Path]) -> State:
    tails = _load_template(params.tails_template, "commonsense_tails.j2", resolve, "tails_template")
    events = _load_template(params.events_template, "commonsense_events.j2", resolve, "events_template")
    rel_path = _find(params.relations_file, "commonsense_relations.yaml", resolve, "relations_file")
    relations, content = load_relations(rel_path)
    examples = tuple(dict.fromkeys(s["head"] for r in relations for s in r.shots))
    state = State(params, tails, events, _select(relations, params.relations, rel_path), examples, content)
    for tpl, field, render in (
        (tails, "tails_template", lambda: _tail_prompt(state, state.relations[0], _PROBE)),
        (events, "events_template", lambda: _event_prompt(state, _PROBE, 0)),
    ):
        try:  # a template that does not fit its variables fails here, before any seed is read
            render()
        except jinja2.TemplateError as exc:
            raise ConfigError(f"params.{field}: template {tpl.name} cannot render: {exc}") from None
    return state


# -- prompts ---------------------------------------------------------------------------------------
def _messages(state: State, prompt: str) -> tuple[dict[str, str], ...]:
    system = state.params.system
    return tuple(
        ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    )


def _tail_prompt(state: State, rel: Relation, head: str) -> str:
    return state.tails.render(
        relation=rel.name, description=rel.description, examples=list(rel.shots), head=head,
        query=rel.prompt.render(head=head),
    )  # fmt: skip


def _event_prompt(state: State, event: str, i: int) -> str:
    """Sample i shows the seed event, then a window of example events that shifts with i (variety)."""
    pool, k = state.example_events, min(state.params.event_examples, len(state.example_events))
    start = (i * k) % len(pool) if pool else 0
    shown = [pool[(start + j) % len(pool)] for j in range(k)]
    return state.events.render(event=event, examples=[event, *shown])


def _sampling(p: CommonsenseParams, temperature: float, prompt: str, i: int) -> Sampling:
    """The seed mixes the prompt in: with ``seed + i`` every prompt's sample i shares one noise stream, and
    a weak teacher then writes the same text for different events (seen with the embedded model)."""
    seed = sample_seed("cs-seed1", p.seed, prompt, i)
    return Sampling(temperature, p.top_p, p.max_tokens, stop=tuple(p.stop), seed=seed)


# -- parsing ---------------------------------------------------------------------------------------
_BULLET = re.compile(r"^\s*(?:[-*•·>]+\s*|\(?\d{1,2}[.):](?:\s+|$)|\(?[a-z]\)\s+)")
_LABEL = re.compile(
    r"^\s*(?:(?:answer|tail|output|phrase|completion|response|event|new event)\s*[:=-]|here(?:'s|’s| is)\b[^:]{0,60}:)\s*",
    re.I,
)
_QUOTES = "\"'`“”‘’«»"
_NONE = {"none", "nothing", "n/a", "na", "no", "null", "unknown", "not applicable", "no answer", "nan"}
_PERSON = re.compile(r"\bperson\s?([xyz])\b", re.I)
_NAMED = re.compile(r"Person[XYZ]\b")


def norm(text: str) -> str:
    """Comparison form: lowercase words, punctuation dropped, single spaces."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _first_content(text: str, clean: Callable[[str], str]) -> tuple[str, bool]:
    """The first line that still holds something once cleaned (a lead-in such as "Here is one:" or a bare
    echo of the prompt is skipped), and whether it is the completion's last line (not ended by a newline)."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    for n, line in enumerate(lines):
        cleaned = clean(line)
        if cleaned:
            return cleaned, n == len(lines) - 1
    return "", True


def _strip_prefix(line: str, prefixes: Iterable[str]) -> str:
    line = " ".join(line.split())
    for prefix in prefixes:
        p = " ".join(prefix.split())
        if p and line.lower().startswith(p.lower()) and line[len(p) : len(p) + 1] in ("", " ", ":", ",", "-"):
            return line[len(p) :].lstrip(" :,-–—")
    return line


def _clean(line: str) -> str:
    """Numbering, bullets, labels ("Answer:", "Here is a new event:"), quotes and trailing punctuation off;
    whitespace collapsed; "Person X" / "personx" spelled PersonX."""
    prev = None
    while prev != line:
        prev = line
        line = _LABEL.sub("", _BULLET.sub("", line)).strip().strip(_QUOTES).strip().rstrip(".;,:!").strip()
    return _PERSON.sub(lambda m: "Person" + m.group(1).upper(), " ".join(line.split()))


def _lower_start(text: str) -> str:
    """'Proud' → 'proud', 'To buy milk' → 'to buy milk'. Kept: PersonX/Y/Z, "I", acronyms, and a capital
    word followed by another one (a name such as 'New York')."""
    words = text.split(" ", 2)
    first = words[0]
    acronym = len(first) > 1 and first.isupper()
    if not first[:1].isupper() or acronym or _NAMED.match(first) or re.match(r"I(?:$|['’])", first):
        return text
    if len(words) > 1 and words[1][:1].isupper() and not _NAMED.match(words[1]):
        return text
    return first[0].lower() + text[1:]


def _check(candidate: str, last: bool, completion: Completion, max_words: int, what: str) -> str | None:
    if not candidate:
        return f"no {what} left after stripping numbering, labels, quotes and punctuation"
    if not re.search(r"[^\W_]", candidate):
        return f"no words in the {what}"
    if candidate.lower() in _NONE or norm(candidate) in _NONE:
        return f"{what} is {candidate!r}"
    if len(candidate.split()) > max_words:
        return f"{what} too long ({len(candidate.split())} words > {max_words})"
    if completion.finish_reason == "length" and last:
        return f"{what} cut off at max_tokens"
    return None


def parse_tail(completion: Completion, head: str, rel: Relation, max_words: int) -> tuple[str, str | None]:
    """(tail, reject): the first line with content, an echo of the prompt removed, cleaned; reject is None
    when the tail is usable. Later lines (a list's other items, chatter) are ignored."""
    if not completion.text.strip():
        return "", "empty completion"
    echoes = (rel.prompt.render(head=head), *rel.echoes)
    tail, last = _first_content(completion.text, lambda ln: _clean(_strip_prefix(_clean(ln), echoes)))
    tail = _lower_start(tail)
    reject = _check(tail, last, completion, max_words, "tail")
    if reject is None and norm(tail) == norm(head):
        reject = "tail repeats the head"
    return tail, reject


def parse_event(completion: Completion, max_words: int) -> tuple[str, str | None]:
    """(event, reject): one event per completion, its first line with content, cleaned like a tail
    ("Person X" → "PersonX") but with its case kept; it must be about PersonX."""
    if not completion.text.strip():
        return "", "empty completion"
    event, last = _first_content(completion.text, _clean)
    reject = _check(event, last, completion, max_words, "event")
    if reject is None and "PersonX" not in event:
        reject = "event does not mention PersonX"
    return event, reject


# -- the stages ------------------------------------------------------------------------------------


async def _events_stage(
    seed_event: str, state: State, generate: Generate
) -> tuple[list[Draft], list[str | None]]:
    """Drafts of the events stage and, per sample, the event to use as a head (None when rejected)."""
    p = state.params
    prompts = [_event_prompt(state, seed_event, i) for i in range(p.new_events)]
    results = await gather_all(
        generate(Request(_messages(state, pr), _sampling(p, p.event_temperature, pr, i), sample_index=i))
        for i, pr in enumerate(prompts)
    )
    seen = {norm(seed_event): "repeats the seed event"}
    seen.update((norm(e), "copies an example event") for e in state.example_events)
    drafts, heads = [], []
    for i, c in enumerate(results):
        event, reject = parse_event(c, p.max_event_words)
        if reject is None:
            reject = seen.get(norm(event))
            seen.setdefault(norm(event), f"repeats events sample {i}")
        heads.append(event if reject is None else None)
        payload = {"event": event or None, "seed_event": seed_event, "sample_index": i,
                   "completion": c.text, "finish_reason": c.finish_reason}  # fmt: skip
        drafts.append(Draft(EVENTS, i, payload, event, request_keys=(c.key,), reject=reject))
    return drafts, heads


async def process(seed: Seed, state: State, generate: Generate) -> list[Draft]:
    p = state.params
    seed_event = str(seed.data[p.event_field]).strip().rstrip(".").strip()
    if not seed_event:  # raised by the dry run in prepare, before anything is stored
        raise ConfigError(
            f"seed {seed.id!r}: field {p.event_field!r} holds no event text; fix or drop that row"
        )
    drafts: list[Draft] = []
    # (head slot, head, source, events sample index); slot 0 is the seed event, 1 + j the new event j,
    # so a tail's sample_index does not move when another new event is rejected.
    heads: list[tuple[int, str, str, int | None]] = [(0, seed_event, "seed", None)]
    if p.new_events:
        event_drafts, new = await _events_stage(seed_event, state, generate)
        drafts += event_drafts
        heads += [(1 + j, e, "generated", j) for j, e in enumerate(new) if e is not None]
    n_rel, n_s = len(state.relations), p.samples
    jobs = [
        (slot, head, src, hidx, r, rel, s)
        for slot, head, src, hidx in heads
        for r, rel in enumerate(state.relations)
        for s in range(n_s)
    ]
    prompts = {
        (slot, r): _tail_prompt(state, rel, head)
        for slot, head, *_ in heads
        for r, rel in enumerate(state.relations)
    }
    results = await gather_all(
        generate(
            Request(
                _messages(state, prompts[slot, r]),
                _sampling(p, p.tail_temperature, prompts[slot, r], s),
                sample_index=s,
                logprobs=p.logprobs,
            )
        )
        for slot, _, _, _, r, _, s in jobs
    )
    for (slot, head, src, hidx, r, rel, s), c in zip(jobs, results, strict=True):
        tail, reject = parse_tail(c, head, rel, p.max_tail_words)
        index = (slot * n_rel + r) * n_s + s
        payload = {"head": head, "relation": rel.name, "tail": tail or None, "sample_index": index, "sample": s,
                   "head_source": src, "head_sample_index": hidx, "completion": c.text,
                   "finish_reason": c.finish_reason}  # fmt: skip
        text = f"{rel.prompt.render(head=head)} {tail}." if tail else rel.prompt.render(head=head)
        drafts.append(Draft(TAILS, index, payload, text, request_keys=(c.key,), reject=reject))
    return drafts


def _triple(p: dict[str, Any]) -> dict[str, Any] | None:
    return {"head": p["head"], "relation": p["relation"], "tail": p["tail"]} if p["tail"] else None


SHAPES = {
    "triples": Shape(_triple, stage=TAILS),
    # COMET-style generation: "head relation [GEN]" -> tail.
    "prompt_completion": Shape(
        lambda p: (
            {"prompt": f"{p['head']} {p['relation']} [GEN]", "completion": p["tail"]} if p["tail"] else None
        ),
        stage=TAILS,
    ),
}


RECIPE = Recipe(
    slug="commonsense",
    summary="ATOMIC-style commonsense tails for (event, relation) pairs, optionally on new events "
    "(Symbolic Knowledge Distillation).",
    params=CommonsenseParams,
    prepare=prepare,
    process=process,
    required_fields=lambda p: [p.event_field],
    seed_format="one row per event: {id?, event} (a PersonX sentence; field name set by event_field)",
    record_format="tails: head, relation, tail, sample_index, sample, head_source (seed|generated), "
    "head_sample_index, completion, finish_reason; events: event, seed_event, sample_index, completion, "
    "finish_reason",
    stages=(EVENTS, TAILS),
    shapes=SHAPES,
)
