"""What every part of the store shares: the tables' columns and Arrow schemas, the batch a commit
writes, the SQL helpers and the base class of the store's parts (its connection and queries)."""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from factory.store.journal import COUNTERS, MONEY

log = logging.getLogger(__name__)

CACHE_COLUMNS = (
    "key", "teacher", "status", "request", "text", "finish_reason",
    "prompt_tokens", "completion_tokens", "latency_ms", "error", "run_id", "logprobs", "reasoning",
    "cached_prompt_tokens", "cost_usd",
)  # fmt: skip
# Columns a cache row of an older version may lack at its end (a journal line or a shard written before
# they were added): they are NULL for it.
CACHE_LATER_COLUMNS = ("logprobs", "reasoning", "cached_prompt_tokens", "cost_usd")
RECORD_COLUMNS = (
    "id", "run_id", "recipe", "stage", "seed_id", "sample_index", "text", "payload",
    "parent_ids", "request_keys", "teacher", "template_version",
)  # fmt: skip

CACHE_SCHEMA = pa.schema(
    [
        ("key", pa.string()), ("teacher", pa.string()), ("status", pa.string()), ("request", pa.string()),
        ("text", pa.string()), ("finish_reason", pa.string()), ("prompt_tokens", pa.int32()),
        ("completion_tokens", pa.int32()), ("latency_ms", pa.float64()), ("error", pa.string()),
        ("run_id", pa.string()), ("logprobs", pa.binary()), ("reasoning", pa.string()),
        ("cached_prompt_tokens", pa.int32()), ("cost_usd", pa.float64()),
    ]
)  # fmt: skip
RECORD_SCHEMA = pa.schema(
    [
        ("id", pa.string()), ("run_id", pa.string()), ("recipe", pa.string()), ("stage", pa.string()),
        ("seed_id", pa.string()), ("sample_index", pa.int32()), ("text", pa.string()), ("payload", pa.string()),
        ("parent_ids", pa.list_(pa.string())), ("request_keys", pa.list_(pa.string())),
        ("teacher", pa.string()), ("template_version", pa.string()),
    ]
)  # fmt: skip


INGEST_CHECKPOINT = "256MB"  # write-ahead log between checkpoints while ingesting
RUN_CHECKPOINT = "32MB"  # write-ahead log between checkpoints during a run
# DuckDB's memory during a run: a page cache that does not grow with the run, plus room for key indexes
# (ART), which DuckDB loads whole to insert into them and keeps until the next checkpoint. The tables a run
# grows (cache, seeds_done, records, verdicts) have none: an index of cache.key took about 70 bytes a
# cached answer and seeds_done's as much a finished seed (benchmarks/bench_key_index.py), memory that
# grew with the store (migrations.m011_no_key_indexes). What is left are the small tables' keys (runs,
# invocations, filter passes, forgotten keys); the room given follows what DuckDB reports they take
# (see Writes.commit), never more than half the machine's memory.
RUN_PAGE_CACHE = 64 * 2**20
INDEX_MARGIN = 1.25  # room over the indexes' largest size seen
INDEX_HEADROOM = 16 * 2**20
RUN_MEMORY_SHARE = 0.5  # the limit is never raised over this share of the machine's memory


def run_memory_limit(index_bytes: int = 0) -> int:
    """Bytes of DuckDB memory for a run into a store whose key indexes have been seen to take
    ``index_bytes``: the page cache, and room for the indexes."""
    want = RUN_PAGE_CACHE + INDEX_HEADROOM + int(INDEX_MARGIN * max(0, index_bytes))
    try:
        box = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not a POSIX box: no ceiling from it
        return want
    return max(RUN_PAGE_CACHE, min(want, int(box * RUN_MEMORY_SHARE)))


CacheRow = tuple[Any, ...]  # values in CACHE_COLUMNS order (logprobs: the packed blob, factory.logprobs)
RecordRow = tuple[Any, ...]  # values in RECORD_COLUMNS order


@dataclass(slots=True)
class Batch:
    """Rows to commit in one transaction, as tuples in column order: the cheapest shape to build one at a
    time and to turn into Arrow columns at once."""

    cache: list[CacheRow] = field(default_factory=list)
    records: list[RecordRow] = field(default_factory=list)
    seeds_done: list[tuple[str, str, int]] = field(default_factory=list)
    failures: list[tuple[str, str, str | None, str, str, int]] = field(default_factory=list)
    verdicts: list[tuple[str, str, str, str, bool, float | None, str | None]] = field(default_factory=list)
    stats: dict[str, Any] | None = None  # absolute counters of the current invocation
    replace: list[str] = field(default_factory=list)  # keys whose cached rejection the new row replaces

    def __len__(self) -> int:
        return (
            len(self.cache)
            + len(self.records)
            + len(self.seeds_done)
            + len(self.failures)
            + len(self.verdicts)
        )


def arrow_table(cur: duckdb.DuckDBPyConnection) -> pa.Table:
    """The current result as an Arrow table (DuckDB 2 renamed fetch_arrow_table to to_arrow_table)."""
    fetch = getattr(cur, "to_arrow_table", None) or cur.fetch_arrow_table  # type: ignore[attr-defined]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "extra copy" notice; results here are small
        return fetch()


def execute(con: duckdb.DuckDBPyConnection, sql: str, params: Any = None) -> list[Any]:
    """Execute and consume the result (DuckDB 2 refuses new work while a result is unfinished)."""
    return con.execute(sql, params).fetchall() if params is not None else con.execute(sql).fetchall()


def warm_arrow() -> None:
    """pyarrow imports pandas on its first conversion of Python lists (~0.5 s here); pay it on open,
    not in the middle of the first commit."""
    pa.array(["warm"])


def full_cache_rows(rows: list[CacheRow]) -> list[CacheRow]:
    """Cache rows with the columns an older row lacks (CACHE_LATER_COLUMNS) filled with None."""
    n = len(CACHE_COLUMNS)
    if all(len(r) == n for r in rows):
        return rows
    return [r if len(r) == n else (*r, *([None] * (n - len(r)))) for r in rows]


def table_of(rows: list[tuple[Any, ...]], schema: pa.Schema) -> pa.Table:
    columns = zip(*rows, strict=True)
    return pa.Table.from_arrays(
        [pa.array(c, f.type) for c, f in zip(columns, schema, strict=True)], schema=schema
    )


def insert_frame(
    con: duckdb.DuckDBPyConnection, name: str, frame: pa.Table, insert: str, select: str | None = None
) -> None:
    """``insert`` fed from the Arrow ``frame`` registered as ``name``: by ``select`` when given (one that
    skips rows already stored), else every row of it."""
    con.register(name, frame)
    execute(con, insert + (select or f"SELECT * FROM {name}"))
    con.unregister(name)


def merged_counters(committed: dict[str, Any], journaled: dict[str, Any]) -> dict[str, Any]:
    """One invocation's counters: each the larger of the committed and the journaled value."""
    out: dict[str, Any] = {k: max(int(committed.get(k) or 0), int(journaled.get(k) or 0)) for k in COUNTERS}
    failures = {k: int(n) for k, n in orjson.loads(committed.get("failures") or "{}").items()}
    for k, n in (journaled.get("failures") or {}).items():
        failures[k] = max(failures.get(k, 0), int(n))
    for k in MONEY:
        out[k] = max(committed.get(k) or 0, journaled.get(k) or 0)
    out["failures"] = failures
    out["failure_examples"] = {
        **orjson.loads(committed.get("failure_examples") or "{}"),
        **(journaled.get("failure_examples") or {}),
    }
    return out


class StoreBase:
    """The connection and the query helpers every part of the store uses."""

    con: duckdb.DuckDBPyConnection
    path: Path
    read_only: bool

    def _rows(self, sql: str, params: list[Any] | None = None) -> list[Any]:
        return execute(self.con, sql, params if params is not None else [])

    def _scalar(self, sql: str, params: list[Any] | None = None) -> Any:
        rows = self._rows(sql, params)
        return rows[0][0] if rows else None

    def _dicts(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        cur = self.con.execute(sql, params if params is not None else [])
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    _LIVE = (
        "run_id = ? AND NOT keep AND (pass_id IS NULL OR pass_id = "
        "(SELECT max(pass_id) FROM filter_passes WHERE run_id = verdicts.run_id))"
    )

    _DROPPED = f"SELECT DISTINCT record_id FROM verdicts WHERE {_LIVE}"
