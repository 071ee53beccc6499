"""`decontaminate`: drop records that share word n-grams with evaluation sets, so a student is not trained on
its test items (the 13-gram overlap of GPT-3 and its successors).

Both sides are normalised as `exact_dedup.normalise` does (NFKC, lower case, every run of non-alphanumerics
one space) and cut into word n-grams (`n`, 13 by default), hashed to 64 bits. A record scores the number of
its n-gram positions found in the evaluation set, over the fields checked (`fields`: `text` is the record's
text, other names are payload fields, checked where present; by default the text and the payload's `input`).
A text shorter than n words is one n-gram of itself, so it matches only an evaluation item that is that same
short text. The evidence names the evaluation file, the item (its `id` field, else its 0-based position) and
the n-gram, for the first overlap found; the reason names the file by its name (or its path from the folder
given, for files found in folders).

Evaluation files: jsonl, json (a list, or an object holding one list), csv, parquet, txt (one item a line), or
folders of them, relative to the run config's folder. The text of an item is `eval_field`, by default the
first of text / question / prompt its file has. A record is scored once per version, and the version holds a
digest of the evaluation files' contents: editing one scores every record again.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from pydantic import Field, field_validator

from factory.errors import ConfigError
from filters.base import Context, Filter, FilterParams, Row, Scored
from filters.exact_dedup import normalise
from filters.minhash_dedup import shingle_hashes

FORMATS = (".jsonl", ".json", ".csv", ".parquet", ".txt")
TEXT_FIELDS = ("text", "question", "prompt")


class DecontaminateParams(FilterParams):
    eval_files: list[str] = Field(
        description="Evaluation sets: jsonl, json, csv, parquet or txt files, or folders of them."
    )
    eval_field: str | None = Field(
        None, description="The field holding an item's text (default: the first of text, question, prompt)."
    )
    n: int = Field(13, ge=1, le=64, description="Words per n-gram.")
    fields: list[str] = Field(
        default_factory=lambda: ["text", "input"],
        description="What to check: 'text' (the record's text) and payload fields, where present.",
    )
    min_overlap: int = Field(
        1, ge=1, description="Drop a record with at least this many n-grams overlapping."
    )

    @field_validator("eval_files")
    @classmethod
    def _exist(cls, paths: list[str]) -> list[str]:
        if not paths:
            raise ValueError("give at least one evaluation file or folder")
        eval_files(paths)  # raises ConfigError naming the path
        return paths


def eval_files(paths: list[str]) -> list[tuple[Path, str]]:
    """Each evaluation file and the short name reasons give it: its name, or its path from a folder's parent."""
    out: list[tuple[Path, str]] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(x for x in p.rglob("*") if x.is_file() and x.suffix.lower() in FORMATS)
            if not found:
                raise ConfigError(f"decontaminate.eval_files: {p} holds no {', '.join(FORMATS)} files")
            out += [(x, str(x.relative_to(p.parent))) for x in found]
        elif p.is_file():
            if p.suffix.lower() not in FORMATS:
                raise ConfigError(f"decontaminate.eval_files: {p} is not one of {', '.join(FORMATS)}")
            out.append((p, p.name))
        else:
            raise ConfigError(
                f"decontaminate.eval_files: {p} not found; give evaluation files ({', '.join(FORMATS)}) "
                "or folders (in a run config, a relative path is read from the config's folder)"
            )
    return out


def _rows(path: Path) -> list[Any]:
    """The items of one file: dicts (or strings for txt and plain JSON lists of strings)."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return path.read_text(encoding="utf-8").splitlines()
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return list(pq.read_table(path).to_pylist())
    try:
        if suffix == ".jsonl":
            return [orjson.loads(x) if x.strip() else "" for x in path.read_bytes().splitlines()]
        data = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"decontaminate.eval_files: {path} is not valid JSON ({exc})") from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise ConfigError(
                f"decontaminate.eval_files: {path} must hold a list of items (or one list in an object)"
            )
        data = lists[0]
    if not isinstance(data, list):
        raise ConfigError(f"decontaminate.eval_files: {path} must hold a list of items")
    return data


def load_items(path: Path, field: str | None) -> list[tuple[str, str]]:
    """(item id, text) for each item of an evaluation file."""
    rows = _rows(path)
    dicts = [r for r in rows if isinstance(r, dict)]
    name = field
    if dicts and name is None:
        name = next((f for f in TEXT_FIELDS if any(f in d for d in dicts[:100])), None)
        if name is None:
            raise ConfigError(
                f"decontaminate.eval_field: {path} has none of the fields {', '.join(TEXT_FIELDS)}; "
                f"set eval_field to the one holding the text (its fields: {', '.join(list(dicts[0])[:12])})"
            )
    elif dicts and not any(name in d for d in dicts):
        raise ConfigError(f"decontaminate.eval_field: {path} has no field {name!r}")
    items = []
    for k, r in enumerate(rows):
        if isinstance(r, dict):
            text, ident = r.get(name or ""), r.get("id", k)
        else:
            text, ident = r, k
        if text not in (None, ""):
            items.append((str(ident), text if isinstance(text, str) else str(text)))
    return items


class EvalSet:
    """The sorted 64-bit n-gram hashes of every evaluation item, each with the first item that holds it."""

    def __init__(self, files: list[tuple[Path, str]], field: str | None, n: int):
        self.names: list[tuple[str, str, str]] = []  # (path, short name, item id)
        texts: list[str] = []
        for path, label in files:
            for ident, text in load_items(path, field):
                self.names.append((str(path), label, ident))
                texts.append(text)
        self.empty = np.uint64(shingle_hashes([""], "word", n)[0][0])  # an empty text: never an overlap
        g, off = shingle_hashes(texts, "word", n)
        owner = np.repeat(np.arange(len(texts)), np.diff(off))
        keep = g != self.empty
        g, owner = g[keep], owner[keep]
        order = np.argsort(g, kind="stable")
        g, owner = g[order], owner[order]
        first = np.concatenate([[True], g[1:] != g[:-1]]) if g.size else np.zeros(0, dtype=bool)
        self.keys, self.owner = g[first], owner[first]

    def find(self, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each hash: found or not, and the index of the first item holding it (-1 if none)."""
        if not self.keys.size:
            return np.zeros(g.size, dtype=bool), np.full(g.size, -1)
        at = np.minimum(np.searchsorted(self.keys, g), self.keys.size - 1)
        hit = (self.keys[at] == g) & (g != self.empty)
        return hit, np.where(hit, self.owner[at], -1)


def _pieces(rows: list[Row], fields: list[str]) -> tuple[list[str], list[int], list[str]]:
    texts, owner, names = [], [], []
    for k, r in enumerate(rows):
        for f in fields:
            v = r.text if f == "text" else r.payload.get(f)
            if v in (None, "", [], {}):
                continue
            texts.append(v if isinstance(v, str) else orjson.dumps(v).decode())
            owner.append(k)
            names.append(f)
    return texts, owner, names


async def score(rows: list[Row], params: DecontaminateParams, ctx: Context) -> list[Scored]:
    evals = EvalSet(eval_files(params.eval_files), params.eval_field, params.n)
    texts, owner, field_of = _pieces(rows, params.fields)
    g, off = shingle_hashes(texts, "word", params.n)
    hit, item = evals.find(g)
    counts = np.zeros(len(rows), dtype=np.int64)
    if texts:
        np.add.at(counts, owner, np.add.reduceat(hit.astype(np.int64), off[:-1]))
    hits = np.flatnonzero(hit)
    first = np.searchsorted(hits, off[:-1])  # each piece's first overlap, if inside the piece
    detail: dict[int, dict[str, Any]] = {}
    for p, k in enumerate(owner):
        if k in detail or first[p] >= hits.size or hits[first[p]] >= off[p + 1]:
            continue
        h = int(hits[first[p]])
        words = normalise(texts[p]).split()
        start = h - int(off[p])
        file, label, ident = evals.names[int(item[h])]
        detail[k] = {"overlaps": int(counts[k]), "eval_file": file, "eval_name": label, "eval_item": ident,
                     "field": field_of[p],
                     "ngram": " ".join(words[start : start + params.n])}  # fmt: skip
    return [Scored(r.id, float(counts[k]), detail.get(k)) for k, r in enumerate(rows)]


def fingerprint(params: DecontaminateParams) -> list[tuple[str, str]]:
    """What scores depend on besides the params: each evaluation file's content."""
    try:
        files = eval_files(params.eval_files)
    except ConfigError:
        return []
    return [(str(f), hashlib.blake2b(f.read_bytes(), digest_size=8).hexdigest()) for f, _ in files]


def decide(s: Scored, params: DecontaminateParams) -> tuple[bool, str | None]:
    if (s.score or 0) >= params.min_overlap and s.detail:
        return False, f"overlaps eval item {s.detail['eval_item']} of {s.detail['eval_name']}"
    return True, None


FILTER = Filter(
    slug="decontaminate",
    summary="Drop records sharing word n-grams (13) with evaluation sets; names the eval item.",
    params=DecontaminateParams,
    code_version="d1",
    score=score,
    decide=decide,
    thresholds=("min_overlap",),
    path_params=("eval_files",),
    fingerprint=fingerprint,
)
