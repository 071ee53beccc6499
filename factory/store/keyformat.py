"""The store's request-key format (factory.keys.KEY_FORMAT), kept in ``store_meta`` and moved forward on
open, never silently.

Opening a store written by an older format logs what changed and which cached answers will no longer be
served. Answers whose old key a new request could still produce, although they were made under other
settings, are moved to ``cache_retired`` (kept, never served): a stale answer is never served. A store
written by a newer format is refused for writing: this version would add keys the newer one reads
differently.

Format 1 → 2: ``extra_body`` of API teachers is keyed (when not empty), and local teachers are keyed by the
content digest of their files and their output-changing options. A plain API request keeps its key.
  * API answers sent with a non-empty ``extra_body`` were stored under the key of the same request
    without it. Each moves to ``cache_retired``; when its run had one invocation (so the run's stored
    config is what was sent) and one teacher of that name and endpoint, a copy goes back into the cache
    under its format 2 key, so it is not paid for again. Runs that sent no ``extra_body`` keep theirs.
    Limit: a store keeps only the latest config of a run, so answers of a run whose ``extra_body`` was
    removed before its last invocation cannot be found.
  * Answers of vllm, transformers and embedded teachers keep their rows; no new key equals their old
    keys, so they are not served again (local engines recompute them).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from factory.errors import StoreError
from factory.keys import KEY_FORMAT, canonical_json, request_key_raw

log = logging.getLogger(__name__)

LOCAL_BACKENDS = ("vllm", "transformers", "embedded")
OPENAI_URL = "https://api.openai.com/v1"  # the openai teacher's default endpoint
_MOVES = pa.schema([("key", pa.string()), ("new_key", pa.string())])
_COLUMNS = (
    "key, teacher, status, request, text, finish_reason, prompt_tokens, completion_tokens, latency_ms, "
    "error, run_id, created_at, logprobs"
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
    rekeyed, retired = _rekey_extra_body(con)
    if rekeyed:
        notes.append(
            f"{rekeyed} API answer(s) sent with extra_body now have the key of their request with it (their "
            "runs had one invocation, so their config says what was sent)."
        )
    if retired:
        notes.append(
            f"{retired} API answer(s) of runs that sent extra_body cannot be told apart from answers without "
            "it (the run had several invocations, or several teachers of that name): they are set aside in "
            "the table cache_retired and will not be served; those requests are asked again."
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


def _rekey_extra_body(con: duckdb.DuckDBPyConnection) -> tuple[int, int]:
    """Format 1 keyed an API answer sent with extra_body as the same request without it. Each such answer
    moves to cache_retired; when its run had one invocation (its stored config is what was sent) and one
    teacher of its name and endpoint, a copy goes back into the cache under its format 2 key. A row is
    re-keyed only when its old key, recomputed from the stored request and the identity reconstructed
    from the config, is the key it has: anything not understood is retired, never guessed."""
    invocations = dict(con.execute("SELECT run_id, count(*) FROM run_stats GROUP BY run_id").fetchall())
    moves: list[tuple[str, str | None]] = []  # (old key, new key or None: retired only)
    for (run_id, name), roles in _openai_roles(con).items():
        if all(old == new for old, new in roles):
            continue  # no extra_body: the keys did not change
        single = int(invocations.get(run_id, 0)) <= 1
        rows = con.execute(
            "SELECT key, request FROM cache WHERE run_id = ? AND teacher = ?", [run_id, name]
        ).fetchall()
        for key, request in rows:
            body = str(request).encode()
            matched = [(old, new) for old, new in roles if request_key_raw(old, body) == key]
            if matched and all(old == new for old, new in matched):
                continue  # made by a teacher without extra_body: its key stays right
            news = {new for _, new in matched}
            if single and len(news) == 1:
                moves.append((key, request_key_raw(news.pop(), body)))
            else:
                moves.append((key, None))
    if not moves:
        return 0, 0
    table = pa.table({"key": [m[0] for m in moves], "new_key": [m[1] for m in moves]}, schema=_MOVES)
    con.register("_key_moves", table)
    try:
        con.execute(
            f"INSERT INTO cache_retired ({_COLUMNS}, retired_reason, retired_at) "  # column names only
            f"SELECT {_COLUMNS}, ?, now() FROM cache SEMI JOIN _key_moves m ON cache.key = m.key",
            ["key format 2: sent with extra_body, which the format 1 key did not hold"],
        ).fetchall()
        new_columns = _COLUMNS.replace("key, ", "m.new_key AS key, ", 1)
        con.execute(
            f"CREATE TEMP TABLE _rekeyed AS SELECT {new_columns} FROM cache "
            "JOIN _key_moves m ON cache.key = m.key WHERE m.new_key IS NOT NULL"
        ).fetchall()
        con.execute("DELETE FROM cache WHERE key IN (SELECT key FROM _key_moves)").fetchall()
        con.execute(
            f"INSERT INTO cache ({_COLUMNS}) SELECT DISTINCT ON (key) * FROM _rekeyed r "
            "WHERE NOT EXISTS (SELECT 1 FROM cache c WHERE c.key = r.key)"
        ).fetchall()
        con.execute("DROP TABLE _rekeyed").fetchall()
    finally:
        con.unregister("_key_moves")
    rekeyed = sum(1 for _, new in moves if new is not None)
    return rekeyed, len(moves) - rekeyed


def _openai_roles(con: duckdb.DuckDBPyConnection) -> dict[tuple[str, str], list[tuple[bytes, bytes]]]:
    """Per (run id, teacher name) of the openai teachers in each run's stored config: the canonical JSON of
    each one's identity under format 1 and under format 2 (equal when it sent no extra_body)."""
    out: dict[tuple[str, str], list[tuple[bytes, bytes]]] = {}
    for run_id, blob in con.execute("SELECT id, config FROM runs").fetchall():
        try:
            config: Any = orjson.loads(blob)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(config, dict):
            continue
        others = config.get("teachers")
        for role in [config.get("teacher"), *(others.values() if isinstance(others, dict) else ())]:
            found = openai_identities(role)
            if found is not None:
                name, old, new = found
                out.setdefault((str(run_id), name), []).append((canonical_json(old), canonical_json(new)))
    return out


def openai_identities(role: Any) -> tuple[str, dict[str, Any], dict[str, Any]] | None:
    """(teacher name, format 1 identity, format 2 identity) of a stored openai teacher config, built as
    the openai teacher builds them (tests check they agree); None for any other teacher."""
    if not isinstance(role, dict):
        return None
    backend, _, spec_model = str(role.get("spec") or "").strip().partition(":")
    if backend.strip() != "openai":
        return None
    options = role.get("options")
    if not isinstance(options, dict):
        options = {}
    model, _, url = spec_model.strip().partition("@")
    base_url = str(options.get("base_url") or role.get("base_url") or url or OPENAI_URL).rstrip("/")
    old = {"backend": "openai", "model": model, "base_url": base_url}
    extra = options.get("extra_body")
    new = {**old, "extra_body": extra} if isinstance(extra, dict) and extra else old
    return f"openai:{model}", old, new
