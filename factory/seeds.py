"""Seed files: JSONL, JSON (a list of objects), CSV or Parquet, checked before anything is stored."""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from factory.errors import ConfigError
from factory.keys import digest

SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".parquet")


@dataclass(frozen=True, slots=True)
class Seed:
    """One seed row. ``id`` is the row's ``id`` field when present, else a hash of its content."""

    id: str
    data: dict[str, Any]


def _decode(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"seed file {path}: invalid UTF-8 at line {line} (byte {exc.start}); re-save the file as UTF-8"
        ) from None


def _read_rows(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:  # before reading: a .gz or .xlsx file is not "invalid UTF-8"
        raise ConfigError(
            f"seed file {path}: unsupported extension {suffix!r}; use one of {', '.join(SUFFIXES)}"
        )
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as exc:
            raise ConfigError(f"seed file {path}: cannot read Parquet: {exc}") from None
    text = _decode(path, path.read_bytes())
    if suffix in (".jsonl", ".ndjson"):
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise ConfigError(
                    f"seed file {path}, line {n}: not valid JSON ({exc}); one JSON object per line"
                ) from None
            if not isinstance(row, dict):
                raise ConfigError(
                    f"seed file {path}, line {n}: expected a JSON object, got {type(row).__name__}"
                )
            rows.append(row)
        return rows
    if suffix == ".json":
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"seed file {path}: not valid JSON ({exc})") from None
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise ConfigError(f"seed file {path}: expected a JSON list of objects")
        return data
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        out = []
        limit = csv.field_size_limit(2**31 - 1)  # a long document in one field is a seed, not an error
        try:
            for r in reader:
                if None in r:  # more values than header columns
                    raise ConfigError(
                        f"seed file {path}, line {reader.line_num}: more values than the "
                        f"{len(reader.fieldnames or [])} header columns; quote values that hold commas"
                    )
                out.append(dict(r))
        except csv.Error as exc:
            raise ConfigError(f"seed file {path}, line {reader.line_num}: not valid CSV ({exc})") from None
        finally:
            csv.field_size_limit(limit)
        return out
    raise ConfigError(f"seed file {path}: unsupported extension {suffix!r}; use one of {', '.join(SUFFIXES)}")


def load_seeds(path: Path, required: Sequence[str] = ()) -> list[Seed]:
    if not path.exists():
        raise ConfigError(
            f"seed file {path} not found: check the 'seeds' field of the config (paths are relative to the config file)"
        )
    if not path.is_file():
        raise ConfigError(f"seed file {path} is not a file")
    rows = _read_rows(path)
    if not rows:
        raise ConfigError(f"seed file {path} holds no rows: add at least one seed")
    seeds: list[Seed] = []
    seen: dict[str, int] = {}
    for n, row in enumerate(rows, 1):
        missing = [f for f in required if row.get(f) in (None, "")]
        if missing:
            raise ConfigError(
                f"seed file {path}, row {n}: missing required field(s) {', '.join(repr(m) for m in missing)}; "
                f"every row needs {', '.join(repr(r) for r in required)}"
            )
        try:
            orjson.dumps(row, option=orjson.OPT_SORT_KEYS)
        except TypeError as exc:
            raise ConfigError(
                f"seed file {path}, row {n}: {exc}; seed values must be text, numbers, booleans, lists or "
                "mappings"
            ) from None
        sid = str(row["id"]) if row.get("id") not in (None, "") else digest("seed1", row, length=16)
        if sid in seen:
            raise ConfigError(
                f"seed file {path}, row {n}: id {sid!r} repeats row {seen[sid]}; seed ids must be unique"
            )
        seen[sid] = n
        seeds.append(Seed(sid, row))
    return seeds


def seeds_digest(seeds: Sequence[Seed]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for s in seeds:
        h.update(s.id.encode() + b"\x00" + orjson.dumps(s.data, option=orjson.OPT_SORT_KEYS) + b"\n")
    return h.hexdigest()
