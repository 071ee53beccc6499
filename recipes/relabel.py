"""`relabel`: label unlabeled texts by a vote of teachers, after CensorChat-style LLM annotation (several
LLM annotators, majority vote, hard cases to a stronger model) and UniversalNER-style targeted distillation
(a strong teacher labels in-domain text against a fixed schema, and a student learns from its labels).

One record per text (stage ``label``). Each voter (a teacher role; a role listed twice votes twice, with
its own sample index and sampling seed) gets the label schema and the text and answers a label name. An
answer is parsed to a label (exact match ignoring case, spaces, ``_`` and ``-``; else the one label name
the answer contains, not counting schema lines copied from the prompt; else invalid). The label with the most valid votes wins.

A text is *escalated* to the ``escalate_to`` role (the same prompt, at ``escalation_temperature``) when
the leading labels tie, when no vote is valid, or when the winner's share of the valid votes is below
``escalate_below``. The escalation teacher's valid label is the record's label; an invalid one leaves a
low-agreement winner in place and leaves a tie or a no-vote text undecided. With ``critique`` on, an
escalated text whose escalation answer is not one of the voters' leading labels (the winner, or the tied
labels; an unparseable answer counts as not one of them) gets a second turn: the conversation so far
plus "re-read ...", and that final answer decides (the first answer when the final one does not parse).
Texts without a valid vote have no majority to disagree with and get no critique turn. A text left
without a label is kept with ``label: null`` and a reject reason ("tie between ...", "no valid vote").
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import orjson
import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from factory.config import ROLE
from factory.errors import ConfigError
from factory.keys import digest
from factory.seeds import Seed
from factory.types import Completion, Request, Sampling
from factory.yamlsafe import load_yaml
from recipes.base import (
    Draft,
    Generate,
    Params,
    Recipe,
    Shape,
    Template,
    gather_all,
    sample_seed,
    template_path,
)

STAGE = "label"


def _role(value: str) -> str:
    if not ROLE.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a teacher role name: use 'default' or a snake_case key of `teachers:`"
        )
    return value


Role = Annotated[str, AfterValidator(_role)]


class RelabelParams(Params):
    labels: str = Field(
        ...,
        description="Label schema file, relative to the config: a YAML or JSON list of "
        "{name, description, examples?} (at least two labels).",
    )
    voters: list[Role] = Field(
        default_factory=lambda: ["default"],
        min_length=1,
        max_length=64,
        description="Teacher roles that vote, one vote each; a role may appear more than once (its own "
        "sample index and seed each time, useful with one teacher at temperature > 0).",
    )
    voter_temperature: float = Field(0.7, ge=0, le=2, description="Sampling temperature of the votes.")
    escalate_to: Role | None = Field(
        None,
        description="Teacher role that decides ties, texts without a valid vote and low agreement; "
        "null: such texts stay unlabeled (rejected with the reason).",
    )
    escalate_below: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Also escalate when the winner's share of the valid votes is below "
        "this (1.0: every non-unanimous text); null: only ties and texts without a valid vote. Needs escalate_to.",
    )
    escalation_temperature: float = Field(
        0.0, ge=0, le=2, description="Sampling temperature of the escalation (and critique) turns."
    )
    critique: bool = Field(
        False,
        description="Give the escalation teacher a second turn ('re-read ...') when its label is not "
        "one of the voters' leading labels; its final answer decides. Needs escalate_to.",
    )
    critique_prompt: str = Field(
        "Re-read the text and your answer; reply with the final label only.",
        min_length=1,
        description="User message of the critique turn.",
    )
    json_schema: bool = Field(
        False,
        description="Also send a JSON schema {label: enum of the names} (enforced by openai and vllm "
        "teachers, ignored by others); the parser reads either form.",
    )
    max_tokens: int = Field(16, ge=1, le=4096, description="Output token cap per answer.")
    seed: int = Field(
        0,
        description="Base sampling seed. Turn i of a text (votes 0..n-1, then escalation and critique) "
        "samples with a seed derived from (seed, text id, i): distinct per vote and per text.",
    )
    system: str | None = Field(
        "You are a careful annotator. Answer with exactly one label name from the list and nothing else.",
        description="System message (null for none).",
    )
    template: str | None = Field(
        None, description="Prompt template file (Jinja over `text` and `labels`); default: relabel_label.j2."
    )
    text_field: str = Field("text", description="Seed field holding the text to label.")


# -- the labels file -------------------------------------------------------------------------------------
class _LabelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    name: str = Field(min_length=1)
    description: str = Field(min_length=1)
    examples: list[str] = Field(default_factory=list)


_LABELS = TypeAdapter(list[_LabelSpec])
_SEP = re.compile(r"[\s_\-]+")
_PREFIX = re.compile(r"^(?:the\s+)?(?:final\s+)?(?:label|answer|category)(?:\s+is)?\s*[:=\-]?\s*", re.I)
_TRIM = "\"'`*.,;:!?()[] \t\n"
FORMAT = "a list of {name, description, examples?} (see data/seeds/support_labels.yaml)"


def _norm(s: str) -> str:
    """Label names compare without case, spaces, '_' and '-'."""
    return _SEP.sub("", s.casefold())


@dataclass(frozen=True, slots=True)
class Label:
    name: str
    description: str
    examples: tuple[str, ...]
    pattern: re.Pattern[str]  # the name inside a longer answer, parts joined by any of ' ', '_', '-'
    echo: re.Pattern[str]  # the name followed by the start of its description: the prompt's schema line

    @classmethod
    def of(cls, spec: _LabelSpec) -> Label:
        parts = [re.escape(x) for x in _SEP.split(spec.name) if x]
        name = r"(?<![^\W_])" + r"[\s_\-]*".join(parts) + r"(?![^\W_])"
        first = spec.description.split()[0].strip(_TRIM) or spec.description.split()[0]
        echo = re.compile(name + r"\s*:\s*" + re.escape(first), re.IGNORECASE)
        return cls(spec.name, spec.description, tuple(spec.examples), re.compile(name, re.IGNORECASE), echo)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "examples": list(self.examples)}


def load_labels(path: Path) -> tuple[Label, ...]:
    if not path.is_file():
        raise ConfigError(f"params.labels: file {path} not found; give {FORMAT}")
    try:
        text = path.read_text(encoding="utf-8")
        data = (
            orjson.loads(text)
            if path.suffix.lower() == ".json"
            else load_yaml(text, f"params.labels: {path}")
        )
    except (UnicodeDecodeError, orjson.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"params.labels: {path} cannot be read: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, list) or len(data) < 2:
        what = "an empty list" if data in ([], None) else f"a {type(data).__name__}"
        if isinstance(data, list) and data:
            what = "one label"
        raise ConfigError(f"params.labels: {path} holds {what}; it must be {FORMAT}, at least two labels")
    try:
        specs = _LABELS.validate_python(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        n, field = [*err["loc"], "", ""][:2]
        entry = data[n] if isinstance(n, int) and n < len(data) else None
        name = f" ({entry.get('name')!r})" if isinstance(entry, dict) and entry.get("name") else ""
        where = f"labels[{n}]{name}" + (f", field {field!r}" if field != "" else "")
        raise ConfigError(f"params.labels: {path}: {where}: {err['msg']}; each label is {FORMAT}") from None
    seen: dict[str, str] = {}
    for s in specs:
        key = _norm(s.name)
        if not key:
            raise ConfigError(f"params.labels: {path}: label name {s.name!r} has no letters or digits")
        if key in seen:
            raise ConfigError(
                f"params.labels: {path}: duplicate label {s.name!r} (same as {seen[key]!r}: names compare "
                "without case, spaces, '_' and '-'); rename or merge them"
            )
        seen[key] = s.name
    return tuple(Label.of(s) for s in specs)


# -- parsing and voting ------------------------------------------------------------------------------------


def parse_label(answer: str, labels: Sequence[Label]) -> str | None:
    """The label an answer names: exact (ignoring case, spaces, '_', '-', a "Label:" prefix, quotes and
    punctuation; also {"label": ...} JSON), else the one label name the answer contains outside copied
    schema lines ("billing: Charges, ..."), else None."""
    text = answer.strip()
    if text.startswith("{"):
        try:
            obj = orjson.loads(text)
        except orjson.JSONDecodeError:
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("label"), str):
            text = obj["label"].strip()
    by_norm = {_norm(x.name): x.name for x in labels}
    core = _PREFIX.sub("", text.strip(_TRIM), count=1).strip(_TRIM)
    for cand in (text, core):
        if _norm(cand) in by_norm:
            return by_norm[_norm(cand)]
    for x in labels:  # a schema line the model copied from the prompt is not an answer
        text = x.echo.sub(" ", text)
    spans = [(m.start(), m.end(), x.name) for x in labels for m in x.pattern.finditer(text)]
    # a name inside a longer one ("account" in "account_access") is not a mention of its own
    found = {
        name
        for s, e, name in spans
        if not any(s2 <= s and e <= e2 and e2 - s2 > e - s for s2, e2, _ in spans)
    }
    return found.pop() if len(found) == 1 else None


def leaders(counts: Counter[str], labels: Sequence[Label]) -> list[str]:
    """The labels with the most votes, in schema order (one: a winner; more: a tie; none: no valid vote)."""
    if not counts:
        return []
    top = max(counts.values())
    return [x.name for x in labels if counts[x.name] == top]


# -- the recipe --------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class State:
    params: RelabelParams
    template: Template
    labels: tuple[Label, ...]
    schema: dict[str, Any] | None

    @property
    def version(self) -> str:
        return digest("relabel1", [self.template.source, [x.as_dict() for x in self.labels]], length=12)


def prepare(params: RelabelParams, resolve: Callable[[str], Path]) -> State:
    for flag, on in (("critique", params.critique), ("escalate_below", params.escalate_below is not None)):
        if on and params.escalate_to is None:
            raise ConfigError(
                f"params.{flag} needs params.escalate_to (the teacher role that decides); set it or drop {flag}"
            )
    template = Template.load(template_path(params.template, "relabel_label.j2", resolve))
    labels = load_labels(resolve(params.labels))
    schema = None
    if params.json_schema:
        schema = {
            "type": "object",
            "properties": {"label": {"type": "string", "enum": [x.name for x in labels]}},
            "required": ["label"],
            "additionalProperties": False,
        }
    return State(params, template, labels, schema)


def sampling_seed(base: int, seed_id: str, index: int) -> int:
    """Turn ``index`` of one text. Not ``base + index``: the same seeds on every text make a small model's
    samples alike across texts (its k-th vote starts the same way everywhere), so votes would correlate."""
    return sample_seed("relabel-seed", base, seed_id, index)


def _request(
    state: State, seed: Seed, messages: Sequence[dict[str, str]], index: int, temperature: float
) -> Request:
    p = state.params
    sampling = Sampling(temperature, max_tokens=p.max_tokens, seed=sampling_seed(p.seed, seed.id, index))
    return Request(tuple(messages), sampling, sample_index=index, json_schema=state.schema)


def _turn(role: str, c: Completion, labels: Sequence[Label]) -> dict[str, Any]:
    return {"role": role, "answer": c.text, "label": parse_label(c.text, labels)}


async def process(seed: Seed, state: State, generate: Generate) -> list[Draft]:
    p, labels = state.params, state.labels
    text = str(seed.data[p.text_field])
    prompt = state.template.render(text=text, labels=[x.as_dict() for x in labels])
    base = ([{"role": "system", "content": p.system}] if p.system else []) + [
        {"role": "user", "content": prompt}
    ]
    # Wait for every vote before failing, so each answer that did arrive is stored for the re-run.
    calls = [
        generate(_request(state, seed, base, i, p.voter_temperature), teacher=r)
        for i, r in enumerate(p.voters)
    ]
    answers = await gather_all(calls)
    keys = [c.key for c in answers]
    votes = [_turn(role, c, labels) for role, c in zip(p.voters, answers, strict=True)]
    counts = Counter(v["label"] for v in votes if v["label"] is not None)
    valid = sum(counts.values())
    top = leaders(counts, labels)
    majority = top[0] if len(top) == 1 else None
    reason = None
    if not top:
        reason = "no valid vote"
    elif majority is None:
        reason = "tie between " + ", ".join(top)
    elif p.escalate_below is not None and counts[majority] / valid < p.escalate_below:
        reason = f"agreement {counts[majority] / valid:.2f} below escalate_below {p.escalate_below}"
    label, decided_by = majority, ("vote" if majority else None)
    escalation = critique = None
    if reason is not None and p.escalate_to is not None:
        n = len(p.voters)
        first = await generate(
            _request(state, seed, base, n, p.escalation_temperature), teacher=p.escalate_to
        )
        keys.append(first.key)
        escalation = _turn(p.escalate_to, first, labels)
        final, decided_by = escalation["label"], "escalation"
        if p.critique and top and final not in top:
            turn = [
                *base,
                {"role": "assistant", "content": first.text},
                {"role": "user", "content": p.critique_prompt},
            ]
            second = await generate(
                _request(state, seed, turn, n + 1, p.escalation_temperature), teacher=p.escalate_to
            )
            keys.append(second.key)
            critique = _turn(p.escalate_to, second, labels)
            if critique["label"] is not None:
                final, decided_by = critique["label"], "critique"
        if final is not None:
            label = final
        else:
            decided_by = "vote" if majority else None
    reject = None
    if label is None:
        reject = reason if escalation is None else f"{reason}; the escalation teacher gave no valid label"
    confidence = counts[label] / valid if label is not None and valid else 0.0
    payload = {
        "text": text, "label": label, "votes": votes, "vote_counts": {x.name: counts[x.name] for x in labels if counts[x.name]},
        "valid_votes": valid, "majority": majority, "confidence": confidence, "escalated": escalation is not None,
        "escalation_reason": reason, "escalation": escalation, "critique_used": critique is not None,
        "critique": critique, "decided_by": decided_by,
    }  # fmt: skip
    return [
        Draft(stage=STAGE, sample_index=0, payload=payload, text=text, request_keys=tuple(keys), reject=reject,
              score=confidence)
    ]  # fmt: skip


def _roles(p: RelabelParams) -> list[str]:
    named = [*p.voters, *([p.escalate_to] if p.escalate_to else [])]
    return [r for r in dict.fromkeys(named) if r != "default"]


SHAPES = {
    "text_label": Shape(lambda p: {"text": p["text"], "label": p["label"]} if p["label"] else None,
                        label="label"),
}  # fmt: skip


RECIPE = Recipe(
    slug="relabel",
    summary="Label unlabeled texts against a label schema by a vote of teachers; ties escalate to a stronger "
    "one, disagreements get a re-read.",
    params=RelabelParams,
    prepare=prepare,
    process=process,
    required_fields=lambda p: [p.text_field],
    seed_format="one row per text: {id?, text} (field name set by text_field); labels file: "
    "[{name, description, examples?}]",
    record_format="text, label (null when undecided), votes [{role, answer, label}], vote_counts, valid_votes, "
    "majority, confidence, escalated, escalation_reason, escalation {role, answer, label}, "
    "critique_used, critique {role, answer, label}, decided_by (vote|escalation|critique|null)",
    stages=(STAGE,),
    teacher_roles=_roles,
    shapes=SHAPES,
)
