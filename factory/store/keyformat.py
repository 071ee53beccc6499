"""The store's request-key format (factory.keys.KEY_FORMAT), kept in ``store_meta`` and moved forward on
open, never silently.

Opening a store written by an older format logs what changed and which cached answers will no longer be
served. Answers whose old key a new request could still produce, although they were made under other
settings, are moved to ``cache_retired`` (kept, never served): a stale answer is never served. A store
written by a newer format is refused for writing: this version would add keys the newer one reads
differently.

Format 1 → 2: ``extra_body`` of API teachers is keyed (when not empty), and local teachers are keyed by the
content digest of their files and their output-changing options. A plain API request keeps its key.
  * API answers of runs whose config sent a non-empty ``extra_body`` to that teacher were stored under the
    key of the same request without it: they are retired, so a plain request is asked again.
  * Answers of vllm, transformers and embedded teachers keep their rows; no new key equals their old
    keys, so they are not served again (local engines recompute them).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import duckdb
import orjson

from factory.errors import StoreError
from factory.keys import KEY_FORMAT

log = logging.getLogger(__name__)

LOCAL_BACKENDS = ("vllm", "transformers", "embedded")
_COLUMNS = (
    "key, teacher, status, request, text, finish_reason, prompt_tokens, completion_tokens, latency_ms, "
    "error, run_id, created_at"
)


def stored_format(con: duckdb.DuckDBPyConnection) -> int:
    row = con.execute("SELECT value FROM store_meta WHERE name = 'key_format'").fetchone()
    return int(row[0]) if row else KEY_FORMAT


def upgrade(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Bring the store's key format to KEY_FORMAT (a no-op when it is there); one transaction."""
    found = stored_format(con)
    if found == KEY_FORMAT:
        return
    if found > KEY_FORMAT:
        raise StoreError(
            f"the store {path} holds request keys of format {found}, newer than this version of "
            f"distill-factory writes ({KEY_FORMAT}): upgrade distill-factory to run with this store "
            "(reading it with status, export or view still works)"
        )
    con.execute("BEGIN TRANSACTION").fetchall()
    try:
        notes = _v1_to_v2(con)
        con.execute("UPDATE store_meta SET value = ? WHERE name = 'key_format'", [str(KEY_FORMAT)]).fetchall()
        con.execute("COMMIT").fetchall()
    except Exception:
        con.execute("ROLLBACK").fetchall()
        raise
    if notes:
        log.warning(
            "store %s: request keys moved from format %d to %d (extra_body is keyed; local models are keyed "
            "by the digest of their files and their dtype, max_model_len and engine arguments). %s",
            path,
            found,
            KEY_FORMAT,
            " ".join(notes),
        )


def _v1_to_v2(con: duckdb.DuckDBPyConnection) -> list[str]:
    notes: list[str] = []
    retired = 0
    for run_id, teacher in _extra_body_teachers(con):
        n = con.execute(
            "SELECT count(*) FROM cache WHERE run_id = ? AND teacher = ?", [run_id, teacher]
        ).fetchone()
        if not n or not n[0]:
            continue
        con.execute(
            f"INSERT INTO cache_retired ({_COLUMNS}, retired_reason, retired_at) "  # column names only
            f"SELECT {_COLUMNS}, ?, now() FROM cache WHERE run_id = ? AND teacher = ?",
            ["key format 2: sent with extra_body, which the format 1 key did not hold", run_id, teacher],
        ).fetchall()
        con.execute("DELETE FROM cache WHERE run_id = ? AND teacher = ?", [run_id, teacher]).fetchall()
        retired += int(n[0])
    if retired:
        notes.append(
            f"{retired} API answer(s) sent with extra_body were stored under the key of the same request "
            "without it: they are set aside in the table cache_retired and will not be served; those "
            "requests are asked again."
        )
    local = con.execute(
        "SELECT count(*) FROM cache WHERE " + " OR ".join("teacher LIKE ?" for _ in LOCAL_BACKENDS),
        [f"{b}:%" for b in LOCAL_BACKENDS],
    ).fetchone()
    if local and local[0]:
        notes.append(
            f"{int(local[0])} cached answer(s) of local teachers (vllm, transformers, embedded) were made "
            "under the old identity and will not be served again; they stay in the store."
        )
    if notes:
        notes.append("Plain API requests keep their keys and their cached answers.")
    return notes


def _extra_body_teachers(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str]]:
    """(run id, teacher name) of each openai teacher a run's stored config sent a non-empty extra_body."""
    out = []
    for run_id, blob in con.execute("SELECT id, config FROM runs").fetchall():
        try:
            config: Any = orjson.loads(blob)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(config, dict):
            continue
        others = config.get("teachers")
        roles = [config.get("teacher"), *(others.values() if isinstance(others, dict) else ())]
        for role in roles:
            if not isinstance(role, dict):
                continue
            spec = str(role.get("spec") or "")
            options = role.get("options")
            backend, _, model = spec.partition(":")
            if backend.strip() == "openai" and isinstance(options, dict) and options.get("extra_body"):
                name = f"openai:{model.strip().partition('@')[0]}"
                out.append((str(run_id), name))
    return sorted(set(out))
