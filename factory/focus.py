"""Focus rounds: a run whose seeds are weighted by how a student did on them in an earlier evaluation.

``focus: {from_eval: PATH}`` in a run config reads the per-input results `factory eval` wrote (one JSON row per
evaluated input, with its ``seed_id`` and ``correct``). Seeds the student failed get ``failed_samples``
samples, seeds it solved ``solved_samples`` (0: left out), seeds the evaluation did not score
``unscored_samples``. A focused round's requests are new ones: their sample indices are shifted past every
earlier round's (``round * ROUND_STRIDE``) and their sampling seeds derive from the round, so the teacher
writes fresh rationales rather than the cache answering with round one's; the same round re-run is the same
requests, all served by the cache. Each record carries ``focus`` in its payload: the round, the eval file and
its digest, and whether its seed was failed, solved or unscored. With ``rewrite: true`` the teacher first
rewrites each failed question (other words, the same numbers and answer), and the samples answer that.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

from factory.errors import ConfigError

if TYPE_CHECKING:  # the config imports this module: the recipes' base is imported only to run a round
    from factory.seeds import Seed
    from factory.types import Request
    from recipes.base import Draft, Generate, Recipe

# Sample indices of round r start at (r - 1) * ROUND_STRIDE; the samples per seed stay below it.
ROUND_STRIDE = 1000
OUTCOMES = ("failed", "solved", "unscored")


class FocusConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    from_eval: str = Field(
        ...,
        description="Per-input results of `factory eval` (the JSONL it writes, eval_inputs.jsonl), relative to "
        "the config file: the seeds the student failed are sampled again.",
    )
    failed_samples: int = Field(
        4, ge=1, lt=ROUND_STRIDE, description="Samples per seed the student failed (the recipe's `k`)."
    )
    solved_samples: int = Field(
        0, ge=0, lt=ROUND_STRIDE, description="Samples per seed the student solved (0: left out)."
    )
    unscored_samples: int = Field(
        0,
        ge=0,
        lt=ROUND_STRIDE,
        description="Samples per seed the evaluation did not score (e.g. a training seed; 0: left out).",
    )
    rewrite: bool = Field(
        False,
        description="Before sampling a failed seed, the teacher rewrites its question (other words, every number "
        "and the answer kept); the samples answer the rewritten question, checked against the seed's gold.",
    )
    round: int | None = Field(
        None,
        ge=2,
        le=1000,
        description="This round's number (default: one more than the round the evaluated records came from).",
    )


@dataclass(frozen=True, slots=True)
class FocusFacts:
    """What one focused round chose, from its eval file."""

    round: int
    eval_path: str
    eval_digest: str
    outcome: dict[str, str]  # seed id -> "failed" | "solved"
    samples: dict[str, int]  # outcome -> samples per seed
    rewrite: bool = False

    @property
    def failed(self) -> int:
        return sum(1 for v in self.outcome.values() if v == "failed")

    @property
    def solved(self) -> int:
        return sum(1 for v in self.outcome.values() if v == "solved")

    def tag(self, outcome: str) -> dict[str, Any]:
        return {"round": self.round, "eval": self.eval_path, "eval_digest": self.eval_digest,
                "outcome": outcome, "eval_failed": self.failed, "eval_solved": self.solved}  # fmt: skip


def read_eval(path: Path) -> tuple[dict[str, str], int, str]:
    """(seed id -> failed/solved, the round the evaluated records came from, the file's digest). A seed is
    failed when the student got any of its inputs wrong."""
    if not path.is_file():
        raise ConfigError(
            f"focus.from_eval: file {path} not found; give the per-input results `factory eval` writes "
            "(eval_inputs.jsonl in the model folder, or --per-input PATH)"
        )
    raw = path.read_bytes()
    outcome: dict[str, str] = {}
    rounds = [1]
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise ConfigError(
                f"focus.from_eval: {path} line {n} is not JSON; give the JSONL `factory eval` writes"
            ) from None
        if not isinstance(row, dict) or not row.get("seed_id") or not isinstance(row.get("correct"), bool):
            raise ConfigError(
                f"focus.from_eval: {path} line {n} has no seed_id and correct (true/false); evaluate an "
                "export written without --slim, so its rows keep their seed ids"
            )
        seed = str(row["seed_id"])
        if not row["correct"] or outcome.get(seed) == "failed":
            outcome[seed] = "failed"
        else:
            outcome[seed] = "solved"
        if isinstance(row.get("round"), int):
            rounds.append(row["round"])
    if not outcome:
        raise ConfigError(f"focus.from_eval: {path} holds no evaluated input; evaluate a student first")
    return outcome, max(rounds), hashlib.sha256(raw).hexdigest()[:16]


def facts_of(cfg: FocusConfig, resolve: Callable[[str], Path]) -> FocusFacts:
    path = resolve(cfg.from_eval)
    outcome, evaluated_round, file_digest = read_eval(path)
    samples = {"failed": cfg.failed_samples, "solved": cfg.solved_samples, "unscored": cfg.unscored_samples}
    return FocusFacts(cfg.round or evaluated_round + 1, str(path), file_digest, outcome, samples, cfg.rewrite)


@dataclass(frozen=True, slots=True)
class FocusState:
    """The state a focused recipe gets: the recipe's own state per outcome (its ``k`` set to that outcome's
    samples), and the facts."""

    inner: dict[str, Any]
    facts: FocusFacts
    base_version: str

    @property
    def version(self) -> str:
        return self.base_version


def focused(recipe: Recipe, params: Any, resolve: Callable[[str], Path], cfg: FocusConfig,
            base_version: str) -> tuple[Recipe, FocusState]:  # fmt: skip
    """The recipe, wrapped to sample each seed by its outcome in the eval, and the state it runs on."""
    from recipes.base import sample_seed

    if "k" not in type(params).model_fields or recipe.bind is not None:
        raise ConfigError(
            f"focus: the {recipe.slug} recipe has no samples-per-question parameter `k`, so its seeds cannot be "
            "sampled more or less; use focus with rationales, program_rationales or reasoning, or remove focus"
        )
    field = getattr(params, "input_field", None)
    if cfg.rewrite and not field:
        raise ConfigError(
            f"focus.rewrite: the {recipe.slug} recipe names no question field (`input_field`) to rewrite; "
            "remove rewrite: true"
        )
    facts = facts_of(cfg, resolve)
    inner = {o: recipe.prepare(params.model_copy(update={"k": n}), resolve)
             for o, n in facts.samples.items() if n > 0}  # fmt: skip
    state = FocusState(inner, facts, base_version)

    async def process(seed: Seed, st: FocusState, generate: Generate) -> list[Draft]:
        outcome = st.facts.outcome.get(seed.id, "unscored")
        if outcome not in st.inner:
            return []
        offset = (st.facts.round - 1) * ROUND_STRIDE

        def shifted(req: Request, *, teacher: str = "default") -> Any:
            seed_value = sample_seed("focus1", req.sampling.seed, st.facts.round, req.sample_index)
            new = dataclasses.replace(req, sample_index=req.sample_index + offset,
                                      sampling=dataclasses.replace(req.sampling, seed=seed_value))  # fmt: skip
            return generate(new, teacher=teacher)

        tag = st.facts.tag(outcome)
        keys: tuple[str, ...] = ()
        if st.facts.rewrite and outcome == "failed":
            seed, tag, keys = await _rewritten(seed, str(field), st.facts.round, offset, generate, tag)
        drafts = await recipe.process(seed, st.inner[outcome], shifted)
        return [dataclasses.replace(d, sample_index=d.sample_index + offset, payload={**d.payload, "focus": tag},
                                    request_keys=(*keys, *d.request_keys)) for d in drafts]  # fmt: skip

    return dataclasses.replace(recipe, process=process), state


REWRITE_SYSTEM = (
    "You rewrite word problems. Write the problem again in other words, a little harder to read: keep every "
    "number and keep the answer the same. Reply with the rewritten problem only."
)


async def _rewritten(seed: Seed, field: str, round_no: int, offset: int, generate: Generate,
                     tag: dict[str, Any]) -> tuple[Seed, dict[str, Any], tuple[str, ...]]:  # fmt: skip
    """The seed with its question rewritten by the teacher (the original when the answer is empty), the
    focus tag naming the original, and the rewrite request's key (lineage of every sample that follows)."""
    from factory.seeds import Seed
    from factory.types import Request, Sampling
    from recipes.base import sample_seed

    question = str(seed.data[field])
    req = Request(
        messages=({"role": "system", "content": REWRITE_SYSTEM}, {"role": "user", "content": question}),
        sampling=Sampling(
            temperature=0.7, max_tokens=256, seed=sample_seed("focus-rewrite1", question, round_no)
        ),
        sample_index=offset,
    )
    done = await generate(req)
    text = done.text.strip().split("\n\n", 1)[0].strip()
    if not text:
        return seed, tag, (done.key,)
    return Seed(seed.id, {**seed.data, field: text}), {**tag, "rewritten_from": question}, (done.key,)


__all__ = ["ROUND_STRIDE", "FocusConfig", "FocusFacts", "FocusState", "facts_of", "focused", "read_eval"]
