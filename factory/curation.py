"""Filter passes: run a run's filter list over its records and append the verdicts to the ledger.

Filters run in the order given, each over the records the ones before it kept (so a judge is not paid for
duplicates). A row filter's scores are looked up in the ledger first and computed only for records it has
not scored at this version; a set filter (dedup, diversity) scores the whole set again, from persisted
artefacts. Decisions are always re-derived, so a new threshold changes the curated set without computing
anything.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml

from factory.config import validate_params
from factory.errors import ConfigError
from factory.runner import Plan, Runner
from factory.store import Store
from factory.teachers.base import Teacher
from factory.yamlsafe import load_yaml
from filters import get_filter
from filters.base import Answer, Context, Filter, FilterParams, Row, Scored

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Step:
    filter: Filter
    params: FilterParams
    version: str = ""  # computed once: a fingerprint may read files

    def __post_init__(self) -> None:
        if not self.version:
            object.__setattr__(self, "version", self.filter.version(self.params))

    def describe(self) -> dict[str, Any]:
        return {
            "filter": self.filter.slug,
            "version": self.version,
            "params": self.params.model_dump(mode="json"),
        }


def recipe_filters(config: Any) -> list[str]:
    """The filters a run gets from its recipe (``Recipe.default_filters``), unless its config says
    ``curation: {recipe_filters: false}``. ``config`` is a RunConfig or a stored config (a dict); a stored
    config whose recipe or params no longer validate gets none."""
    from recipes import get_recipe

    data = config.model_dump(mode="json") if hasattr(config, "model_dump") else dict(config or {})
    if not (data.get("curation") or {}).get("recipe_filters", True):
        return []
    try:
        recipe = get_recipe(str(data.get("recipe")))
        params = recipe.params.model_validate(data.get("params") or {})
    except Exception:  # an uninstalled recipe, params of an older version: prepare reports those
        return []
    return list(recipe.default_filters(params))


def parse_steps(
    items: list[Any],
    overrides: list[str] | None = None,
    where: str = "filters",
    resolve: Callable[[str], Path] | None = None,
    implied: list[str] | None = None,
) -> list[Step]:
    """A filter list as written in YAML (each item a slug, or a one-key mapping slug → params), with
    ``--set slug.param=value`` overrides applied. ``resolve`` turns relative path params into paths (against
    the config's folder); the items are updated in place with the resolved paths, so a stored config keeps
    meaning the same files. ``implied`` (the recipe's default filters) run first, with default params, each
    unless the list names it itself."""
    listed = {str(next(iter(x))) if isinstance(x, dict) and x else str(x) for x in items or []}
    raw: list[tuple[str, dict[str, Any]]] = [(s, {}) for s in implied or [] if s not in listed]
    first = len(raw)
    for i, item in enumerate(items or []):
        if isinstance(item, str):
            raw.append((item, {}))
        elif isinstance(item, dict) and len(item) == 1:
            ((slug, params),) = item.items()
            if params is not None and not isinstance(params, dict):
                raise ConfigError(f"{where}[{i}]: the params of {slug!r} must be a mapping, not {params!r}")
            raw.append((str(slug), dict(params or {})))
        else:
            raise ConfigError(f"{where}[{i}]: write a filter as `- slug` or `- slug: {{param: value}}`")
    slugs = [s for s, _ in raw]
    for dup in {s for s in slugs if slugs.count(s) > 1}:
        raise ConfigError(f"{where}: filter {dup!r} is listed twice; list each filter once")
    for ov in overrides or []:
        key, eq, value = ov.partition("=")
        slug, dot, param = key.partition(".")
        if not eq or not dot:
            raise ConfigError(f"--set {ov!r}: write it as FILTER.PARAM=VALUE, e.g. --set critic.min_score=8")
        if slug not in slugs:
            raise ConfigError(
                f"--set {ov!r}: filter {slug!r} is not in this run's filters ({', '.join(slugs) or 'none'})"
            )
        flag = f"--set {(ov if len(ov) <= 80 else ov[:60] + '...')!r}"  # a long value is not echoed whole
        try:
            raw[slugs.index(slug)][1][param] = load_yaml(value, flag)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{flag}: the value is not valid YAML ({str(exc).splitlines()[0]})") from None
    steps = []
    for j, (slug, params) in enumerate(raw):
        i = j - first  # the item's index in ``items``; negative: implied by the recipe
        at = f"{where}[{i}]" if i >= 0 else "the recipe's default filters (curation.recipe_filters)"
        flt = get_filter(slug, where=at)
        if resolve is not None and i >= 0:
            for name in flt.path_params:
                given = params.get(name)
                if isinstance(given, str):
                    params[name] = str(resolve(given).resolve())
                elif isinstance(given, list):
                    params[name] = [str(resolve(v).resolve()) if isinstance(v, str) else v for v in given]
            if items and isinstance(items[i], dict):
                items[i] = {slug: params}
        where_i = f"{at} {slug}" if i >= 0 else f"{at}: {slug}"
        steps.append(
            Step(
                flt,
                validate_params(flt.params, params, prefix=where_i, owner=f"filter {slug!r}", noun="param"),
            )
        )
    return steps


def _judge_runner(store: Store, run_id: str, judge: str, teachers: dict[str, Teacher]) -> Runner:
    from factory import stored_recipe

    recipe = stored_recipe.load(
        store, run_id, needs=f"filter {judge}, which asks a teacher,",
        instead="apply the filters from that session (factory.run again with them in the config's filters)",
    )  # fmt: skip
    plan = Plan(run_id=run_id, recipe=recipe, state=None, seeds=[])
    return Runner(store, teachers, plan, store.open_invocation(run_id, "filtering"))


@dataclass(slots=True)
class PassResult:
    pass_id: int
    funnel: dict[str, Any]
    scored: dict[str, int]  # filter → records scored in this pass (0: all from the ledger)


def record_rows(store: Store, run_id: str) -> list[Row]:
    """The run's records as filters read them."""
    table = store.records_table(run_id)
    cols = table.to_pydict()
    facts = store.answer_facts(run_id)

    def answers(keys: list[str] | None) -> tuple[Answer, ...]:
        return tuple(Answer(k, *facts.get(k, (None, 0))) for k in keys or ())

    return [
        Row(i, st, sd, si, tx or "", orjson.loads(pl), answers(ks))
        for i, st, sd, si, tx, pl, ks in zip(
            cols["id"], cols["stage"], cols["seed_id"], cols["sample_index"], cols["text"], cols["payload"],
            cols["request_keys"], strict=True,
        )
    ]  # fmt: skip


def filters_dir(store: Store) -> Path:
    """Where filters persist what they derive (signatures, embeddings): a folder beside the store."""
    return store.path.with_name(store.path.name + ".filters")


def precompute(steps: list[Step], rows: list[Row], folder: Path) -> list[str]:
    """Run the ``precompute`` hook of every step that has one on ``rows``, writing into ``folder`` (laid out
    as the filter cache); returns the slugs of the filters that did. A filter met twice with the same params
    (none is listed twice) would find its own work done."""
    done = []
    for step in steps:
        hook = step.filter.precompute
        if hook is not None and rows:
            hook(rows, step.params, folder)
            done.append(step.filter.slug)
    return done


def is_artefact(name: str) -> bool:
    """Whether a file a precompute hook left is finished work (not a temporary file)."""
    return not name.endswith(".tmp")


async def apply_filters(
    store: Store,
    run_id: str,
    steps: list[Step],
    *,
    teachers: dict[str, Teacher] | None = None,
    force: bool = False,
) -> PassResult:
    """Append a filter pass, unless the latest one applied the same filters to the same records.
    ``teachers`` (by role) serve filters that ask a teacher; their calls go through the request cache."""
    specs = [s.describe() for s in steps]
    if not force and store.pass_is_current(run_id, specs):
        funnel = store.funnel(run_id)
        return PassResult(funnel["pass"], funnel, {})
    summary = store.run_summary(run_id)
    ctx = Context(run_id=run_id, recipe=summary["recipe"], earlier_texts=lambda: store.earlier_texts(run_id),
                  cache_dir=filters_dir(store), reasoning=store.reasoning_of)  # fmt: skip
    async with contextlib.AsyncExitStack() as stack:
        return await _pass(store, run_id, steps, specs, ctx, stack, teachers or {})


async def _pass(
    store: Store,
    run_id: str,
    steps: list[Step],
    specs: list[dict[str, Any]],
    ctx: Context,
    stack: contextlib.AsyncExitStack,
    teachers: dict[str, Teacher],
) -> PassResult:
    runner: Runner | None = None
    rejected = store.parse_rejected(run_id)
    alive = [r for r in record_rows(store, run_id) if r.id not in rejected]
    verdicts: list[tuple[Any, ...]] = []
    scored_counts: dict[str, int] = {}
    for step in steps:
        flt, version = step.filter, step.version
        scores: dict[str, Scored] = {}
        todo = alive
        if not flt.set_level:
            for rid, (score, detail) in store.stored_scores(run_id, flt.slug, version).items():
                d = orjson.loads(detail) if detail else None
                scores[rid] = Scored(rid, score, d, (d or {}).get("fail"))
            todo = [r for r in alive if r.id not in scores]
        if todo and flt.uses_teacher and runner is None:
            if "default" not in teachers:
                raise ConfigError(f"filter {flt.slug} asks a teacher, and none was given for this run")
            runner = _judge_runner(store, run_id, flt.slug, teachers)
            stack.callback(runner.finish_session, "done")  # after the session's last commit (LIFO)
            await stack.enter_async_context(runner.session())
            ctx.generate = runner.generate
        fresh = await flt.score(todo, step.params, ctx) if todo else []
        scored_counts[flt.slug] = len(fresh)
        for sc in fresh:
            scores[sc.record_id] = sc
        kept = []
        for r in alive:
            s = scores.get(r.id)
            if s is None:
                raise RuntimeError(f"filter {flt.slug} returned no score for record {r.id}")
            keep, reason = (False, s.fail) if s.fail else step.filter.decide(s, step.params)
            detail = dict(s.detail or {})
            if s.fail:
                detail["fail"] = s.fail
            verdicts.append((r.id, flt.slug, version, keep, s.score, reason,
                             orjson.dumps(detail).decode() if detail else None))  # fmt: skip
            if keep:
                kept.append(r)
        log.info("filter %s: %d in, %d kept (%d scored now)", flt.slug, len(alive), len(kept), len(fresh))
        alive = kept
    pass_id = store.write_pass(run_id, specs, verdicts)
    return PassResult(pass_id, store.funnel(run_id), scored_counts)
