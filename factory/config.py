"""The run config: what users write in YAML, validated strictly (a typo is an error naming the field)."""

from __future__ import annotations

import difflib
import os
import re
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from factory.errors import ConfigError
from factory.focus import FocusConfig
from factory.keys import digest
from factory.yamlsafe import load_yaml

DEFAULT_STORE = "data/factory.duckdb"
ROLE = re.compile(r"[a-z][a-z0-9_]{0,39}")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PriceConfig(Strict):
    input: float = Field(..., ge=0, description="Dollars per million prompt tokens.")
    output: float = Field(..., ge=0, description="Dollars per million output tokens.")
    cached_input: float | None = Field(
        None,
        ge=0,
        description="Dollars per million prompt tokens the provider served from its prompt cache "
        "(default: the input price).",
    )
    batch_discount: float = Field(
        0.0, ge=0, le=1, description="Share of the price a batch answer is spared (0.5: half price)."
    )


class BatchConfig(Strict):
    """How ``teacher.mode: batch`` uses the provider's Batch API (OpenAI's limits are the defaults)."""

    max_requests_per_file: int = Field(
        50_000, ge=1, description="Most requests in one batch file (OpenAI: 50,000)."
    )
    max_bytes_per_file: int = Field(
        200 * 1024 * 1024, ge=1024, description="Most bytes in one batch file (OpenAI: 200 MB)."
    )
    collect_s: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="A batch file is sent once no new request has come for this long (or when it is full): "
        "the requests a recipe makes together go in one file.",
    )
    poll_interval_s: float = Field(
        30.0, gt=0, description="First wait between two looks at a batch's state; it grows by half each time."
    )
    poll_max_interval_s: float = Field(600.0, gt=0, description="Longest wait between two looks.")
    retry_errors: Literal["batch", "online"] = Field(
        "batch",
        description="A request that failed in a batch with a transient error (429, 5xx) is retried in the "
        "next batch file (batch), or at once with the online API at full price (online); up to max_retries.",
    )


class TeacherConfig(Strict):
    spec: str = Field(
        "embedded",
        description="Backend and model, e.g. 'openai:gpt-4o-mini', 'vllm:/models/qwen', 'embedded'.",
    )
    base_url: str | None = Field(
        None, description="Endpoint of an OpenAI-compatible server (or write 'openai:MODEL@URL')."
    )
    api_key_env: str | None = Field(
        None,
        description="Name of the environment variable holding the API key. The key itself never goes in a config.",
    )
    max_in_flight: int = Field(64, ge=1, le=65536, description="Requests in flight at once (API teachers).")
    max_retries: int = Field(
        8, ge=0, le=100, description="Retries of a transient failure (429, 5xx, timeout, reset)."
    )
    request_timeout_s: float = Field(
        120.0, gt=0, description="Give up on one attempt after this many seconds."
    )
    max_requests_per_minute: float | None = Field(
        None,
        gt=0,
        description="The provider's request limit: starts are spaced to stay under it (API teachers). "
        "Without it, a rate is learnt from the first 429s.",
    )
    max_tokens_per_minute: float | None = Field(
        None,
        gt=0,
        description="The provider's token limit: each start reserves its prompt estimate (body bytes / 4) "
        "plus max_tokens, corrected by the answer's usage (API teachers). Without it, a limit the provider "
        "sends in x-ratelimit-limit-tokens is used.",
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="Backend-specific options (engine args ...)."
    )
    price: PriceConfig | None = Field(
        None,
        description="What this teacher's answers cost, in dollars per million tokens; overrides the shipped "
        "list prices (factory/prices.json). Local engines cost $0 unless given one.",
    )
    tokenizer: str | None = Field(
        None,
        description="A local tokenizer (a folder with tokenizer.json, or the file) for counting the prompt "
        "tokens of an API model in `run --dry-run`; relative to the config file.",
    )
    mode: Literal["online", "batch"] = Field(
        "online",
        description="online: each request is sent as the recipe makes it. batch: requests go to the provider's "
        "Batch API in files (half price; answers within 24 h; a killed run resumes the batches it submitted). "
        "The openai backend only.",
    )
    batch: BatchConfig = Field(default_factory=BatchConfig, description="Settings of mode: batch.")

    @field_validator("spec")
    @classmethod
    def _known_backend(cls, v: str) -> str:
        from factory.teachers import check_spec

        check_spec(v)
        return v

    @model_validator(mode="after")
    def _batch_backend(self) -> TeacherConfig:
        if self.mode == "batch":
            from factory.teachers import parse_spec

            backend, _ = parse_spec(self.spec)
            if backend != "openai":
                raise ValueError(
                    f"mode: batch needs a provider's Batch API (the openai backend), and {self.spec!r} runs "
                    "its requests itself: remove `mode: batch`, or use an openai:MODEL teacher"
                )
        return self

    def backend_options(self) -> dict[str, Any]:
        from factory.teachers import parse_spec

        backend, _ = parse_spec(self.spec)
        opts = dict(self.options)
        if backend == "openai":
            opts.setdefault("max_in_flight", self.max_in_flight)
            opts.setdefault("max_retries", self.max_retries)
            opts.setdefault("request_timeout_s", self.request_timeout_s)
            if self.max_requests_per_minute:
                opts.setdefault("max_requests_per_minute", self.max_requests_per_minute)
            if self.max_tokens_per_minute:
                opts.setdefault("max_tokens_per_minute", self.max_tokens_per_minute)
            if self.base_url:
                opts.setdefault("base_url", self.base_url)
            if self.api_key_env:
                opts.setdefault("api_key_env", self.api_key_env)
            if self.mode == "batch":
                opts["mode"] = "batch"
                opts["batch"] = self.batch.model_dump()
        elif self.api_key_env or self.base_url:
            raise ConfigError(
                f"teacher: base_url and api_key_env apply to the openai backend only, not {backend!r}"
            )
        return opts


class BudgetConfig(Strict):
    max_requests: int | None = Field(
        None, ge=0, description="Stop after this many teacher calls (cache hits are free)."
    )
    max_output_tokens: int | None = Field(
        None, ge=0, description="Stop before the output tokens paid for exceed this."
    )
    max_usd: float | None = Field(
        None,
        ge=0,
        description="Stop before the dollars spent (at list prices, or teacher.price) exceed this; requests "
        "in flight count at their most (max_tokens of output).",
    )


class RunnerConfig(Strict):
    commit_interval_s: float = Field(1.0, gt=0, le=60, description="Commit to the store at least this often.")
    max_seeds_in_flight: int | None = Field(
        None,
        ge=1,
        description="Seeds processed at once (default: a local engine's capacity, which it reports; else "
        "max_in_flight, at least 16).",
    )
    drain_s: float = Field(
        30.0,
        ge=0,
        le=86400,
        description="On Ctrl+C (or SIGTERM, or a stopped cluster shard), wait this long for the requests in "
        "flight and keep their answers; those still unanswered then are abandoned and sent (and paid for) "
        "again on resume. A second Ctrl+C abandons them at once.",
    )


class ExecutorConfig(Strict):
    kind: Literal["local", "ray"] = Field(
        "local", description="local: this process; ray: shards on a Ray cluster (`--executor ray`)."
    )
    address: str | None = Field(
        None, description="Ray cluster: 'auto', 'ray://HOST:10001', or none to start a local one."
    )
    workers: int | None = Field(
        None,
        ge=1,
        description="Shard workers at once (default: the cluster's CPUs, or its GPUs for a local engine).",
    )
    shard_seeds: int = Field(1000, ge=1, description="Seeds per shard.")
    shard_dir: str | None = Field(
        None,
        description="Where workers write their shards: a folder every node sees, or an fsspec/pyarrow URL "
        "(s3://...). Default: next to the store.",
    )
    keep_shards: bool = Field(False, description="Keep the shard files after a finished run.")


class CurationConfig(Strict):
    recipe_filters: bool = Field(
        True,
        description="Run the filters the recipe adds by default before the listed ones: `agreement` for "
        "rationales and program_rationales with a gold field, so samples whose answer disagrees with gold "
        "are not curated. false: only the filters listed under `filters` (the card then warns that targets "
        "may be wrong). A filter listed under `filters` runs as listed instead.",
    )


class ExportConfig(Strict):
    out: str | None = Field(None, description="Folder written by `factory export` when --out is not given.")
    format: Literal["hf", "parquet", "jsonl"] = Field("hf", description="hf | parquet | jsonl")
    splits: dict[str, float] = Field(
        default_factory=lambda: {"train": 1.0}, description="Split name → share."
    )
    shape: str = Field(
        "records",
        description="records | messages | a shape the recipe offers: prompt_completion | text_label | triples | "
        "step_by_step | preference | reasoning_columns (the recipe's training formats; `--as` on the command line). The shapes that teach an answer "
        "(messages, prompt_completion, step_by_step) take only records whose answer is trusted; preference "
        "pairs a trusted rationale with a wrong one of the same question.",
    )
    pairs_per_question: int = Field(
        4, ge=1, le=1024, description="preference: the most (chosen, rejected) pairs made from one question."
    )
    split_by: Literal["seed", "record"] = Field(
        "seed", description="Hash the seed id (all records of a seed in one split) or the record id."
    )
    stage: str | None = Field(None, description="Records of one stage (default: the recipe's last), or all.")
    max_shard_mb: float = Field(256.0, gt=0, description="Largest parquet shard of an hf export, in MB.")

    @field_validator("splits")
    @classmethod
    def _shares(cls, v: dict[str, float]) -> dict[str, float]:
        if not v or any(x < 0 for x in v.values()) or abs(sum(v.values()) - 1.0) > 1e-6:
            raise ValueError(
                f"shares must be non-negative and sum to 1 (e.g. {{train: 0.9, test: 0.1}}), got {v}"
            )
        bad = [name for name in v if not name.replace("_", "").isalnum()]
        if bad:
            raise ValueError(f"split names must be letters, digits or _, got {bad}")
        return v


class RunConfig(Strict):
    name: str = Field(..., min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                      description="Run name; re-running the same config resumes the run.")  # fmt: skip
    recipe: str = Field(
        ...,
        description="Recipe name (`factory recipes` lists them), or a recipe of your own: "
        "`package.module:OBJECT` or `path/to/file.py:OBJECT` (relative to the config file).",
    )
    seeds: str = Field(
        ...,
        description="Seed file (.jsonl, .json, .csv, .parquet), relative to the config file; or a folder (a "
        "dataset saved with save_to_disk, or Parquet shards), or hf:DATASET_ID[:SPLIT] from the local Hugging "
        "Face cache (nothing is downloaded).",
    )
    params: dict[str, Any] = Field(default_factory=dict, description="The recipe's parameters.")
    teacher: TeacherConfig = Field(default_factory=lambda: TeacherConfig())
    teachers: dict[str, TeacherConfig] = Field(
        default_factory=dict,
        description="More teachers by role name, for recipes that use several (e.g. relabel voters); "
        "`teacher` is the role 'default'.",
    )
    filters: list[Any] = Field(
        default_factory=list,
        description="Filters applied in order after generation: `- slug` or `- slug: {param: value}` "
        "(`factory filters` lists them).",
    )
    curation: CurationConfig = Field(
        default_factory=lambda: CurationConfig(),
        description="Default curation: `curation: {recipe_filters: false}` opts out of the recipe's own filters.",
    )
    store: str | None = Field(None, description=f"DuckDB store path (default ./{DEFAULT_STORE}).")
    budget: BudgetConfig = Field(default_factory=lambda: BudgetConfig())
    runner: RunnerConfig = Field(default_factory=lambda: RunnerConfig())
    executor: ExecutorConfig = Field(default_factory=lambda: ExecutorConfig())
    export: ExportConfig = Field(default_factory=lambda: ExportConfig())
    license: str | None = Field(None, description="License of the produced dataset (used by export cards).")
    focus: FocusConfig | None = Field(
        None,
        description="A focused round: `{from_eval: PATH, failed_samples: N, solved_samples: N}` samples the seeds "
        "a student failed in `factory eval`'s per-input results again (see factory/focus.py).",
    )
    source_datasets: list[str] = Field(
        default_factory=list,
        description="Datasets the seeds came from, as Hub ids (e.g. 'openai/gsm8k'); written to the card's "
        "`source_datasets`.",
    )

    @field_validator("teacher", mode="before")
    @classmethod
    def _spec_string(cls, v: Any) -> Any:
        return {"spec": v} if isinstance(v, str) else v

    @field_validator("teachers", mode="before")
    @classmethod
    def _role_specs(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        for role in v:
            if not isinstance(role, str) or not ROLE.fullmatch(role) or role == "default":
                raise ConfigError(
                    f"role {role!r}: use a snake_case name other than 'default' (that one is `teacher`)"
                )
        return {k: ({"spec": x} if isinstance(x, str) else x) for k, x in v.items()}

    def roles(self) -> dict[str, TeacherConfig]:
        """Every teacher by role; `teacher` is 'default'."""
        return {"default": self.teacher, **self.teachers}

    # Set by load_config: the folder relative input paths resolve against.
    _base_dir: Path = Path(".")

    def path(self, value: str) -> Path:
        p = Path(os.path.expanduser(value))
        return p if p.is_absolute() else self._base_dir / p

    def store_path(self, override: str | None = None) -> Path:
        if override:
            return Path(override)
        if self.store:
            return self.path(self.store)
        return Path(os.environ.get("FACTORY_STORE", DEFAULT_STORE))

    def fingerprint(self) -> dict[str, Any]:
        """What defines the run's output. Budgets, runner knobs and export settings do not."""
        out: dict[str, Any] = {"recipe": self.recipe, "params": self.params, "teacher": self.teacher.spec}
        if self.focus is not None:
            out["focus"] = self.focus.model_dump(mode="json")
        if self.teachers:
            out["teachers"] = {k: t.spec for k, t in sorted(self.teachers.items())}
        return out


def validate_params(
    model: type[BaseModel], data: dict[str, Any], *, prefix: str, owner: str, noun: str
) -> Any:
    """A recipe's or filter's params, validated strictly: one ConfigError that names the field (an unknown
    one lists the known ones)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        if err["type"] == "extra_forbidden":
            known = ", ".join(model.model_fields)
            close = difflib.get_close_matches(loc, model.model_fields, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"{prefix}: unknown {noun} {loc!r} for {owner}.{hint} Its {noun}s are: {known}"
            ) from None
        raise ConfigError(f"{prefix}.{loc}: {err['msg']}") from None


def _field_path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(x) for x in loc) or "(top level)"


def _known_fields(loc: tuple[Any, ...]) -> list[str]:
    """The field names allowed where ``loc`` points (for "did you mean"), or [] when unknown."""
    tp: Any = RunConfig
    for part in loc[:-1]:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            fld = tp.model_fields.get(str(part))
            if fld is None:
                return []
            tp = fld.annotation
            models = [a for a in typing.get_args(tp) if isinstance(a, type) and issubclass(a, BaseModel)]
            if models:  # an optional block (``focus: FocusConfig | None``)
                tp = models[0]
        elif typing.get_origin(tp) is dict:
            tp = typing.get_args(tp)[1]
        else:
            return []
    return list(tp.model_fields) if isinstance(tp, type) and issubclass(tp, BaseModel) else []


def parse_config(data: Any, *, source: str, base_dir: Path) -> RunConfig:
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: the config must be a YAML mapping (key: value lines), not {type(data).__name__}"
        )
    try:
        cfg = RunConfig.model_validate(data)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = _field_path(err["loc"])
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(err["loc"][-1]), _known_fields(err["loc"]), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"{source}: unknown field {loc!r}.{hint} Remove it or check its spelling"
            ) from None
        msg = err["msg"]
        ctx_err = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_err, ConfigError):
            msg = str(ctx_err)
        more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        raise ConfigError(f"{source}: field {loc!r}: {msg}{more}") from None
    cfg._base_dir = base_dir
    _absolute_references(cfg, base_dir)
    return cfg


def _absolute_references(cfg: RunConfig, base_dir: Path) -> None:
    """Plugins named by a relative file path (``my_recipe.py:RECIPE``) resolve against the config's folder
    once, here: the stored config then names the same file for every later command, wherever it runs."""
    from factory import plugins
    from factory.teachers import absolute_spec

    cfg.recipe = plugins.absolute_reference(cfg.recipe, base_dir)
    if cfg.focus is not None:
        cfg.focus.from_eval = str(cfg.path(cfg.focus.from_eval).resolve())
    for t in cfg.roles().values():
        t.spec = absolute_spec(t.spec, base_dir)
    for i, item in enumerate(cfg.filters):
        if isinstance(item, str):
            cfg.filters[i] = plugins.absolute_reference(item, base_dir)
        elif isinstance(item, dict) and len(item) == 1:
            ((name, params),) = item.items()
            cfg.filters[i] = {plugins.absolute_reference(str(name), base_dir): params}


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key written twice in one mapping (YAML would keep the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                again = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: construct_mapping reports it
                continue
            if again:
                raise yaml.constructor.ConstructorError(
                    None, None, f"found duplicate key {key!r}", key_node.start_mark
                )
        return super().construct_mapping(node, deep)


def load_config(path: str | os.PathLike[str]) -> RunConfig:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} not found: pass the path of a run YAML (see recipes/examples/)")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not valid UTF-8 (byte {exc.start}); save the file as UTF-8") from None
    try:
        data = load_yaml(text, str(p), loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{p}: malformed YAML{where}: {problem}") from None
    return parse_config(data, source=str(p), base_dir=p.resolve().parent)


def run_id_for(
    cfg: RunConfig,
    seeds_digest: str,
    resolved_params: dict[str, Any],
    template_version: str,
    focus: dict[str, Any] | None = None,
) -> str:
    """Same name + recipe + params (defaults included) + templates + teacher + seeds → same run id, so
    re-running resumes. A recipe whose defaults or templates changed starts a new run (its requests that are
    unchanged still come from the cache)."""
    parts: list[Any] = [cfg.recipe, cfg.teacher.spec, resolved_params, template_version, seeds_digest]
    if cfg.teachers:
        parts.append({k: t.spec for k, t in sorted(cfg.teachers.items())})
    if focus is not None:  # a focused round (its eval file's digest, not its path) is a run of its own
        parts.append(focus)
    return f"{cfg.name}-{digest('run2', parts, length=10)}"
