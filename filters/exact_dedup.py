"""`exact_dedup`: drop records whose normalised text was seen before: earlier in this run (in record
order), in the store's other runs, or in files given by path (earlier exports: jsonl or parquet with a
`text` column). Normalising lower-cases, folds Unicode (NFKC) and collapses whitespace and punctuation."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from pathlib import Path

import orjson
from pydantic import Field

from factory.errors import ConfigError
from filters.base import Context, Filter, FilterParams, Row, Scored

_PUNCT = re.compile(r"[\W_]+", re.UNICODE)


def normalise(text: str) -> str:
    return _PUNCT.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def text_hash(text: str) -> str:
    return hashlib.blake2b(normalise(text).encode(), digest_size=12).hexdigest()


class ExactDedupParams(FilterParams):
    across_runs: bool = Field(
        True, description="Also drop texts that records of the store's earlier runs hold."
    )
    against: list[str] = Field(
        default_factory=list,
        description="Earlier exports (jsonl / parquet files or folders with a text column).",
    )


def _files(paths: list[str]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(x for x in p.rglob("*") if x.suffix in (".jsonl", ".parquet"))
        elif p.is_file():
            out.append(p)
        else:
            raise ConfigError(f"exact_dedup.against: {p} not found; give export files or folders")
    return out


def _texts(path: Path) -> list[str]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if "text" not in table.column_names:
            raise ConfigError(f"exact_dedup.against: {path} has no 'text' column")
        return [t or "" for t in table.column("text").to_pylist()]
    return [orjson.loads(line).get("text") or "" for line in path.read_bytes().splitlines() if line.strip()]


async def score(rows: list[Row], params: ExactDedupParams, ctx: Context) -> list[Scored]:
    seen: dict[str, str] = {}
    for path in _files(params.against):
        for t in _texts(path):
            seen.setdefault(text_hash(t), f"export {path.name}")
    if params.across_runs:
        for where, t in ctx.earlier_texts():
            seen.setdefault(text_hash(t), where)
    out = []
    for r in rows:
        h = text_hash(r.text)
        first = seen.get(h)
        if first is None:
            seen[h] = r.id
            out.append(Scored(r.id, 0.0, {"hash": h}))
        else:
            out.append(Scored(r.id, 1.0, {"hash": h, "duplicate_of": first}))
    return out


def decide(s: Scored, params: ExactDedupParams) -> tuple[bool, str | None]:
    if s.score:
        return False, "exact duplicate"
    return True, None


FILTER = Filter(
    slug="exact_dedup",
    summary="Drop exact duplicates (normalised text) within the run, across runs and earlier exports.",
    params=ExactDedupParams,
    code_version="x1",
    score=score,
    decide=decide,
    set_level=True,
    path_params=("against",),
)
