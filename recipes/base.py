"""What every recipe is: a params model plus async functions. A recipe never touches the store,
the cache or a teacher object: it gets ``generate(request) -> Completion`` injected and returns drafts."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import jinja2
import jinja2.sandbox
from pydantic import BaseModel, ConfigDict, Field

from factory.keys import digest
from factory.seeds import Seed
from factory.types import Completion, Request


class Generate(Protocol):
    """What a recipe gets to call a teacher: one request in, its completion out, paid for at most once.
    ``teacher`` names a role from the run config (``teacher`` is "default", more under ``teachers:``)."""

    def __call__(self, request: Request, /, *, teacher: str = "default") -> Awaitable[Completion]: ...


async def gather_all(aws: Iterable[Awaitable[T]]) -> list[T]:
    """Await every one at once; then raise the first error. A seed fails only after all its requests have
    finished, so each answer that did arrive is stored (and not paid for again on the re-run)."""
    outcomes = await asyncio.gather(*aws, return_exceptions=True)
    for o in outcomes:
        if isinstance(o, BaseException):
            raise o
    return [o for o in outcomes if not isinstance(o, BaseException)]


def sample_seed(tag: str, *parts: Any) -> int:
    """A sampling seed derived from the base seed and what identifies one sample (its prompt or seed id and
    its index). Not ``base + i``: then every prompt's i-th sample shares one noise stream, and a weak teacher
    writes near-identical text for different prompts."""
    return int(digest(tag, list(parts), length=8), 16) % 2**31


def _no_roles(params: Any) -> list[str]:
    return []


def _no_row(payload: dict[str, Any]) -> dict[str, Any] | None:
    return None


Rec = tuple[str, dict[str, Any]]  # (record id, payload)


def pair_up(positives: list[Rec], negatives: list[Rec], cap: int) -> list[tuple[Rec, Rec]]:
    """Deterministic (positive, negative) pairs of one question: the i-th pair takes the i-th of each list
    (in the order given: record-id order), cycling the shorter, as many pairs as the longer list has, at most
    ``cap``. Each record is used, and none twice until every one of its side has been."""
    if not positives or not negatives:
        return []
    n = min(max(len(positives), len(negatives)), cap)
    return [(positives[i % len(positives)], negatives[i % len(negatives)]) for i in range(n)]


TEMPLATES = Path(__file__).parent / "templates"
T = TypeVar("T")


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


def logprobs_field() -> Any:
    """The ``logprobs: K`` param of a recipe whose answers are training targets (soft labels)."""
    return Field(
        None,
        ge=1,
        le=20,
        description="Top-k logprobs per generated token of each target answer (soft labels for distillation): "
        "kept with the answer in the cache and exported as teacher_token_ids, teacher_top_ids and "
        "teacher_top_logprobs. Needs a teacher that returns them (openai, vllm).",
    )


@dataclass(slots=True)
class Draft:
    """A record before the runner gives it an id and lineage.

    ``reject`` is the recipe's own verdict (e.g. "no answer found"): the record is kept in the store and
    the ledger says why it is not curated.
    """

    stage: str
    sample_index: int
    payload: dict[str, Any]
    text: str
    request_keys: tuple[str, ...] = ()
    parent_ids: tuple[str, ...] = ()
    reject: str | None = None
    score: float | None = None


@dataclass(frozen=True, slots=True)
class Shape:
    """One training format a recipe's records can be exported as (``factory export --as NAME``).

    ``row`` maps a record's payload to the exported columns, or to None when the record cannot be shown
    that way (an undecided label): the export counts such records and says so. ``stage`` names the
    records it is built from (default: the recipe's last stage). ``label`` is the column holding a class
    label, exported as a ClassLabel feature."""

    row: Callable[[dict[str, Any]], dict[str, Any] | None] = _no_row
    stage: str | None = None
    label: str | None = None
    # The shape teaches an answer (a target the student learns to say): only records the recipe trusts
    # (``Recipe.distrust`` says None) are exported; the others are counted, with the reason, and set aside.
    trusted_only: bool = False
    # A shape built from all the records of one question at once (preference pairs): gets the trusted
    # records and the distrusted ones of a seed, each as (record id, payload) in record-id order, and the
    # most rows to make; returns (row, ids of the records it came from) pairs. ``row`` is then unused.
    group: Callable[[list[Rec], list[Rec], int], list[tuple[dict[str, Any], tuple[str, ...]]]] | None = None
    # The rows carry the teacher's logprobs (``logprobs: K``) as soft-label columns. False for a shape whose
    # target is not the teacher's answer token for token (a conversation rebuilt from parsed JSON).
    soft_labels: bool = True


@dataclass(frozen=True, slots=True)
class Importer:
    """How rows that already hold a teacher's answers become this recipe's records (``factory import``).

    ``fields`` maps each record field an imported row can fill to the column read by default (None: read
    only when ``--map FIELD=COLUMN`` names one); ``required`` are the fields every file must have a column
    for. ``row`` turns one row's values (by field; absent or null fields are missing) into a draft whose
    ``reject`` says what is wrong with the row. Rows of one question may vote like generated samples do:
    ``vote`` gives the value a draft votes for (None: no vote), and ``settle`` fills a draft's vote fields
    from the tally of its question's rows. ``filters`` is the curation an import gets unless one is given.
    ``lists`` are the fields whose values may be lists (e.g. answer choices); the others must be text or
    numbers."""

    fields: Callable[[Any], dict[str, str | None]]
    required: tuple[str, ...]
    row: Callable[[dict[str, Any], Any], Draft]
    vote: Callable[[Draft], Any] | None = None
    settle: Callable[[Draft, Any, int], None] | None = None
    filters: tuple[str, ...] = ()
    lists: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Recipe:
    slug: str
    summary: str
    params: type[Params]
    prepare: Callable[[Any, Callable[[str], Path]], Any]
    process: Callable[[Seed, Any, Generate], Awaitable[list[Draft]]]
    required_fields: Callable[[Any], list[str]]
    seed_format: str = ""
    record_format: str = ""
    stages: tuple[str, ...] = field(default=("main",))
    # Optional: sees the whole seed set once, before any seed is processed (a label set, class embeddings),
    # and returns the state ``process`` gets. Raise ConfigError for a seed set the recipe cannot use.
    bind: Callable[[Any, list[Seed]], Any] | None = None
    # Teacher roles the params name besides "default" (each must be configured under ``teachers:``).
    teacher_roles: Callable[[Any], list[str]] = _no_roles
    # Training formats besides the records themselves: prompt_completion (which also gives `messages`),
    # text_label, triples, step_by_step.
    shapes: dict[str, Shape] = field(default_factory=dict)
    # Records from rows that already hold a teacher's answers (`factory import`); None: cannot import.
    importer: Importer | None = None
    # Filters the recipe's runs get unless the config says `curation: {recipe_filters: false}` (slugs, run
    # first with their default params; a filter the config lists itself runs as listed instead).
    default_filters: Callable[[Any], list[str]] = _no_roles
    # Why a record's answer is not to be taught (e.g. "disagree with gold"), None when it is trusted. Shapes
    # with ``trusted_only`` export only trusted records; a ``group`` shape pairs trusted with distrusted ones.
    distrust: Callable[[dict[str, Any]], str | None] | None = None


class Template:
    """A prompt template file rendered in a sandbox. Seed values are data: ``{{ }}`` inside them stays text."""

    _env = jinja2.sandbox.SandboxedEnvironment(
        undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False
    )

    def __init__(self, source: str, name: str):
        self.name = name
        self.source = source
        self.version = digest("tpl1", source, length=12)
        try:
            self._tpl = self._env.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            exc.name = exc.name or name  # so that whoever reports it can name the template
            raise
        # A template of plain {{ name }} fields only renders without Jinja (see _plain_format).
        plain = _plain_format(source)
        self._format: str | None = plain[0] if plain else None
        self._fields: list[str] = plain[1] if plain else []
        # A plain dict: Jinja turns the globals into a set on every render, and a ChainMap is slow at that.
        self._tpl.globals = {"range": range}

    @classmethod
    def load(cls, path: Path) -> Template:
        from factory.errors import ConfigError

        try:
            source = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"template file {path}: not valid UTF-8 (byte {exc.start}); save it as UTF-8"
            ) from None
        except OSError as exc:
            raise ConfigError(f"template file {path}: cannot read it: {exc.strerror or exc}") from None
        return cls(source, path.name)

    def render(self, **values: Any) -> str:
        if self._format is not None:  # only {{ name }} fields: the same text as Jinja's
            try:
                return self._format.format(*[values[f] for f in self._fields]).strip()
            except KeyError as exc:
                raise jinja2.UndefinedError(f"{exc.args[0]!r} is undefined") from None
        ctx = self._tpl.new_context(values)
        try:
            return self._env.concat(self._tpl.root_render_func(ctx)).strip()
        except Exception:
            self._env.handle_exception()
            raise


_FIELD = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def _plain_format(source: str) -> tuple[str, list[str]] | None:
    """A template that only substitutes plain names as a format string ("{0}" per field, literal braces
    doubled) and its field names: str.format joins the pieces in C, twice as fast as Jinja's compiled
    template, with the same text (format(value, "") is str(value)). None when the template uses any other
    Jinja syntax (statements, filters, attributes, comments), which then goes through Jinja."""
    texts, fields, pos = [], [], 0
    for m in _FIELD.finditer(source):
        texts.append(source[pos : m.start()])
        fields.append(m.group(1))
        pos = m.end()
    texts.append(source[pos:])
    if any(mark in t for t in texts for mark in ("{{", "{%", "{#", "}}", "%}", "#}")):
        return None
    escaped = [t.replace("{", "{{").replace("}", "}}") for t in texts]
    return "".join(t + f"{{{i}}}" for i, t in enumerate(escaped[:-1])) + escaped[-1], fields


def template_path(value: str | None, default: str, resolve: Callable[[str], Path]) -> Path:
    """A user template (resolved like other config paths) or one shipped in recipes/templates/."""
    from factory.errors import ConfigError

    if value is None:
        return TEMPLATES / default
    p = resolve(value)
    if not p.is_file():
        shipped = TEMPLATES / value
        if shipped.is_file():
            return shipped
        raise ConfigError(f"params: template file {value!r} not found (looked at {p} and {shipped})")
    return p
