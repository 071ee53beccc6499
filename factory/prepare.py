"""Turning a config into a runnable plan, for both executors (this process, and the shards of a Ray
cluster): validate the config and everything it names (``prepare``), render the first-stage requests without
calling a teacher (``first_stage_requests``), build the teachers (``make_teachers``) and the runner's plan
(``plan_for``). Nothing here touches a store."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import orjson

from factory import plugins
from factory.config import RunConfig, load_config, run_id_for, validate_params
from factory.errors import ConfigError
from factory.loops import run_sync
from factory.plan import Budget, Plan
from factory.pricing import price_for, unknown_price_message
from factory.runner import seeds_in_flight
from factory.seed_sources import seed_path
from factory.seeds import Seed, Seeds, check_seeds, first_seeds
from factory.teachers import build_teacher
from factory.teachers.base import Teacher
from factory.types import Completion, Request
from recipes import get_recipe
from recipes.base import Recipe

log = logging.getLogger(__name__)


class _DryRunStop(Exception):
    pass


@dataclass(slots=True)
class Prepared:
    """Everything a run needs, validated, before the store is touched."""

    config: RunConfig
    recipe: Recipe
    params: Any
    state: Any
    seeds: Seeds  # a checked seed file, streamed (or, on a cluster worker, its shard's seeds)
    run_id: str
    store_path: Path
    filters: list[Any] = field(default_factory=list)  # curation steps, validated
    seeds_digest: str = ""  # of the whole seed file (the run id covers it)

    @property
    def template_version(self) -> str:
        return str(getattr(self.state, "version", ""))


def prepare(
    config: str | Path | RunConfig,
    *,
    store: str | None = None,
    seeds_of: tuple[Seeds, str] | None = None,
) -> Prepared:
    """Validate a config and everything it names, before any store is touched. The seed file is read
    through once, every row checked; its rows are not kept (the run streams them again). ``seeds_of`` (seeds
    and the digest of the whole seed file) stands in for reading the seed file, for a cluster worker that
    gets its seeds a shard at a time; a recipe that binds its state to all the seeds reads the file anyway."""
    cfg = config if isinstance(config, RunConfig) else load_config(config)
    recipe = get_recipe(cfg.recipe)
    params = validate_params(
        recipe.params, cfg.params, prefix="params", owner=f"recipe {recipe.slug!r}", noun="field"
    )
    shapes = ["records", *recipe.shapes, *(["messages"] if "prompt_completion" in recipe.shapes else [])]
    if cfg.export.shape not in shapes:
        raise ConfigError(
            f"export.shape {cfg.export.shape!r}: the {recipe.slug} recipe's records do not come in that shape; "
            f"it offers {', '.join(shapes)}"
        )
    try:
        state = recipe.prepare(params, cfg.path)
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(
            f"params: template {exc.name}: Jinja syntax error at line {exc.lineno}: "
            f"{(exc.message or '').rstrip('.')}; fix the template"
        ) from None
    roles = cfg.roles()
    for role in recipe.teacher_roles(params):
        if role not in roles:
            raise ConfigError(
                f"params: recipe {recipe.slug!r} asks for teacher role {role!r}, which the config does not "
                f"define; add it under `teachers:` (e.g. `teachers: {{{role}: openai:MODEL@URL}}`). "
                f"Defined roles: {', '.join(roles)}"
            )
    if cfg.budget.max_usd is not None:
        for role, tc in roles.items():
            if price_for(tc) is None:
                where = "teacher" if role == "default" else f"teachers.{role}"
                raise ConfigError(unknown_price_message(tc.spec, where))
    seeds: Seeds
    if seeds_of is not None and recipe.bind is None:
        seeds, digest_of_seeds = seeds_of
    else:
        source = seed_path(cfg.seeds, cfg.path, cfg.store_path(store))  # a folder or hf:ID: written out once
        seeds = check_seeds(source, recipe.required_fields(params))
        digest_of_seeds = seeds.digest
    if recipe.bind is not None:  # the one place that holds every seed at once: the recipe asks for them all
        try:
            state = recipe.bind(state, list(seeds))
        except ConfigError as exc:
            raise ConfigError(f"{cfg.seeds}: {exc}") from None
    # a recipe of the user's own: a change of its code is a new run (built-ins have versioned templates)
    version = str(getattr(state, "version", "")) + plugins.code_version(recipe.process)
    resolved = params.model_dump(mode="json")
    if resolved.get("logprobs", 0) is None:  # unset: the run ids of runs from before the param stay
        del resolved["logprobs"]
    focus_id = None
    if cfg.focus is not None:
        from factory.focus import focused

        recipe, state = focused(recipe, params, cfg.path, cfg.focus, version)
        f = state.facts
        focus_id = {**cfg.focus.model_dump(mode="json", exclude={"from_eval"}), "round": f.round,
                    "eval_digest": f.eval_digest}  # fmt: skip
    run_id = run_id_for(cfg, digest_of_seeds, resolved, version, focus_id)
    from factory.curation import parse_steps

    implied = [] if not cfg.curation.recipe_filters else list(recipe.default_filters(params))
    steps = parse_steps(cfg.filters, resolve=cfg.path, implied=implied)
    for i, step in enumerate(steps):
        judge = getattr(step.params, "teacher", None) if step.filter.uses_teacher else None
        if judge is not None and judge not in roles:
            raise ConfigError(
                f"filters[{i}] {step.filter.slug}: teacher role {judge!r} is not defined; add it under `teachers:` "
                f"(defined roles: {', '.join(roles)})"
            )
    prep = Prepared(cfg, recipe, params, state, seeds, run_id, cfg.store_path(store), steps, digest_of_seeds)
    first_stage_requests(
        prep, first_seeds(seeds, CHECK_RENDER_SEEDS)
    )  # template errors surface before any store write
    return prep


CHECK_RENDER_SEEDS = 10_000


def first_stage_requests(prep: Prepared, seeds: Iterable[Seed]) -> list[tuple[str, Request]]:
    """Render the first-stage prompts of these seeds, with the teacher role each goes to (no teacher is
    called)."""
    import jinja2

    requests: list[tuple[str, Request]] = []

    async def record(req: Request, *, teacher: str = "default") -> Completion:
        requests.append((teacher, req))
        raise _DryRunStop

    async def go() -> None:
        for seed in seeds:
            try:
                await prep.recipe.process(seed, prep.state, record)
            except _DryRunStop:
                pass
            except jinja2.TemplateError as exc:
                raise ConfigError(
                    f"{prep.config.seeds}: seed {seed.id!r} does not fit the prompt template: {exc}. "
                    "Add the field to the seeds or change params.template."
                ) from None

    run_sync(go())
    return requests


def make_teachers(prep: Prepared | RunConfig, given: dict[str, Teacher] | None = None) -> dict[str, Teacher]:
    """One teacher per role; roles configured alike share one instance (one engine, one connection pool)."""
    cfg = prep.config if isinstance(prep, Prepared) else prep
    out = dict(given or {})
    alike: dict[str, Teacher] = {}
    for role, tc in cfg.roles().items():
        if role in out:
            continue
        opts = tc.backend_options()
        sig = orjson.dumps([tc.spec, opts], default=repr, option=orjson.OPT_SORT_KEYS).decode()
        if sig not in alike:
            alike[sig] = build_teacher(tc.spec, opts)
        out[role] = alike[sig]
    return out


def plan_for(
    prep: Prepared,
    teachers: dict[str, Teacher],
    *,
    seeds: Seeds | None = None,
    budget: Budget | None = None,
    retry_failed: bool = False,
) -> Plan:
    """The runner's plan of a prepared run: what both executors hand their runners (a cluster worker its
    shard's ``seeds`` and its share of the ``budget``)."""
    cfg = prep.config
    _check_logprobs(prep, teachers)
    return Plan(
        run_id=prep.run_id, recipe=prep.recipe, state=prep.state,
        seeds=prep.seeds if seeds is None else seeds,
        budget=budget or Budget(cfg.budget.max_requests, cfg.budget.max_output_tokens, cfg.budget.max_usd),
        commit_interval_s=cfg.runner.commit_interval_s,
        max_seeds_in_flight=seeds_in_flight(cfg.runner.max_seeds_in_flight, teachers["default"], cfg.teacher.max_in_flight),
        template_version=prep.template_version, retry_rejected=retry_failed, drain_s=cfg.runner.drain_s,
        prices={role: price_for(tc) for role, tc in cfg.roles().items()},
    )  # fmt: skip


def _check_logprobs(prep: Prepared, teachers: dict[str, Teacher]) -> None:
    """``params.logprobs`` needs a teacher that returns logprobs: said before any request is sent."""
    if getattr(prep.params, "logprobs", None) is None:
        return
    role = getattr(prep.params, "teacher", "default")
    teacher = teachers.get(role if isinstance(role, str) else "default") or teachers["default"]
    if not teacher.supports_logprobs:
        raise ConfigError(
            f"params.logprobs: the {teacher.backend} teacher ({teacher.name}) does not return logprobs; use an "
            "openai or vllm teacher for soft labels, or drop params.logprobs"
        )
