"""``factory new recipe NAME`` / ``factory new filter NAME``: a plugin package to start from, whose test
passes as written.

The package registers its object by entry point (``pip install -e NAME`` makes it a recipe or filter named
NAME for every config), and until it is installed a config can name it by reference (``NAME:RECIPE``). Its
test runs the object through the engine against the scripted teacher, so it needs no server and no model.
"""

from __future__ import annotations

import keyword
import re
from pathlib import Path

from factory import __version__
from factory.errors import ConfigError

NAME = re.compile(r"[a-z][a-z0-9_]{0,49}")

PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
version = "0.1.0"
description = "A distill-factory {kind}: {name}"
requires-python = ">=3.10"
dependencies = ["distill-factory>={version}"]

[project.entry-points."distill_factory.{kind}s"]
{name} = "{name}:{obj}"

[tool.setuptools]
packages = ["{name}"]
"""

README = """\
# {name}

A {kind} for distill-factory.

    pip install -e .          # then `factory {kind}s` lists `{name}`
    python -m pytest tests    # the test runs it through the engine on the scripted teacher

Until it is installed, a config names it by reference: `{ref}` (with this folder on `PYTHONPATH`), or
`path/to/{name}/{name}/__init__.py:{obj}`.
"""

RECIPE = '''\
"""{name}: one prompt per seed; the parsed completion is the record."""

from __future__ import annotations

from typing import Any

from recipes.functions import recipe


def prompt(row: dict[str, Any]) -> str:
    """The prompt for one seed row: a string (one user message) or a list of chat messages."""
    return f"Rewrite this sentence more simply: {{row['text']}}"


def parse(row: dict[str, Any], text: str) -> dict[str, Any] | None:
    """The record made from one completion; None rejects it (kept in the store, with the reason)."""
    text = text.strip()
    if not text:
        return None
    return {{"source": row["text"], "text": text}}


RECIPE = recipe("{name}", prompt, parse, required=["text"])
'''

FILTER = '''\
"""{name}: keep records whose text has at least ``min_chars`` characters."""

from __future__ import annotations

from pydantic import Field

from filters.base import Context, Filter, FilterParams, Row, Scored


class Params(FilterParams):
    min_chars: int = Field(20, ge=0, description="Shortest text kept, in characters.")


async def score(rows: list[Row], params: Params, ctx: Context) -> list[Scored]:
    """One score per record: what ``decide`` compares with the thresholds (stored in the ledger)."""
    return [Scored(r.id, score=float(len(r.text))) for r in rows]


def decide(s: Scored, params: Params) -> tuple[bool, str | None]:
    """Keep or drop one scored record, and why it is dropped."""
    keep = s.score is not None and s.score >= params.min_chars
    return keep, None if keep else f"shorter than {{params.min_chars}} characters"


FILTER = Filter(
    slug="{name}",
    summary="Keep records of at least min_chars characters.",
    params=Params,
    code_version="1",  # change it when score() computes something else
    score=score,
    decide=decide,
    thresholds=("min_chars",),  # params that only move the cut: changing them re-uses the stored scores
)
'''

TEST_COMMON = '''\
from __future__ import annotations

import json
from pathlib import Path

from factory import api

TEXTS = ["The committee postponed the decision indefinitely.", "Precipitation is anticipated this evening."]


def _config(tmp: Path, **fields: object) -> Path:
    """A run config over TEXTS (JSON is YAML too)."""
    seeds = tmp / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({{"id": f"s{{i}}", "text": t}}) + "\\n" for i, t in enumerate(TEXTS)))
    cfg = tmp / "run.json"
    cfg.write_text(json.dumps({{"name": "check", "seeds": str(seeds), "store": str(tmp / "store.duckdb"), **fields}}))
    return cfg
'''

RECIPE_TEST = (
    TEST_COMMON
    + """

def test_prompt_and_parse():
    from {name} import parse, prompt

    assert "committee" in prompt({{"text": TEXTS[0]}})
    assert parse({{"text": TEXTS[0]}}, "  ") is None
    assert parse({{"text": TEXTS[0]}}, " It waits. ") == {{"source": TEXTS[0], "text": "It waits."}}


def test_runs_through_the_engine(tmp_path):
    teacher = {{"spec": "scripted:t", "options": {{"default": "Simpler."}}}}
    cfg = _config(tmp_path, recipe="{name}:RECIPE", teacher=teacher)
    first = api.run(cfg)
    assert first.status == "done" and first.progress.records == len(TEXTS)
    again = api.run(cfg)  # the same run again: resumed, nothing asked twice
    assert again.run_id == first.run_id and again.progress.requests_sent == 0
"""
)

FILTER_TEST = (
    TEST_COMMON
    + """

def test_scores_and_decisions():
    import asyncio

    from filters.base import Context, Row
    from {name} import FILTER

    params = FILTER.params(min_chars=10)
    rows = [Row("a", "s", "s0", 0, "short", {{}}), Row("b", "s", "s1", 0, "long enough text", {{}})]
    scored = asyncio.run(FILTER.score(rows, params, Context(run_id="r", recipe="prompt")))
    assert [FILTER.decide(s, params) for s in scored] == [(False, "shorter than 10 characters"), (True, None)]


def test_runs_after_generation(tmp_path):
    teacher = {{"spec": "scripted:t", "options": {{"answers": {{TEXTS[0]: "Ok."}}, "default": "A longer answer."}}}}
    cfg = _config(tmp_path, recipe="prompt", teacher=teacher, filters=[{{"{name}:FILTER": {{"min_chars": 5}}}}])
    res = api.run(cfg)
    assert res.status == "done" and res.progress.records == len(TEXTS)
    assert res.curation is not None and res.curation.scored["{name}"] == len(TEXTS)
    step = res.curation.funnel["filters"][0]
    assert (step["kept"], step["dropped"]) == (1, 1) and res.curation.funnel["curated"] == 1
    assert step["top_reasons"][0]["reason"] == "shorter than 5 characters"
"""
)

KINDS = {"recipe": ("RECIPE", RECIPE, RECIPE_TEST), "filter": ("FILTER", FILTER, FILTER_TEST)}


def scaffold(kind: str, name: str, where: Path) -> Path:
    """Write the package ``where/name`` and return its folder; bad input is a ConfigError naming it."""
    if not NAME.fullmatch(name) or keyword.iskeyword(name):
        raise ConfigError(
            f"NAME {name!r}: use a snake_case Python name (lower-case letters, digits, _; starting with a "
            "letter), e.g. simplify or my_dedup"
        )
    if where.exists() and not where.is_dir():
        raise ConfigError(f"--dir {where}: it is a file; give a folder to create the package in")
    root = where / name
    if root.exists():
        raise ConfigError(f"{root} already exists; choose another NAME, or another folder with --dir")
    obj, module, test = KINDS[kind]
    values = {"name": name, "kind": kind, "obj": obj, "dist": name.replace("_", "-"),
              "version": __version__, "ref": f"{name}:{obj}"}  # fmt: skip
    files = {
        "pyproject.toml": PYPROJECT.format(**values),
        "README.md": README.format(**values),
        f"{name}/__init__.py": module.format(**values),
        f"tests/test_{name}.py": test.format(**values),
        "tests/conftest.py": "import sys\nfrom pathlib import Path\n\n"
        "sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the package, installed or not\n",
    }
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root
